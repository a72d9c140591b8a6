"""Scoring one response: answer extraction / exact match, WER, or an LLM judge over HTTP.

Which scorer a manifest row gets (``score_row``): the row's ``"scorer"`` field, else the eval
command's ``--scorer``, else ``auto``. Scorers (:data:`SCORERS`):

* ``exact``: the text after the last "The answer is" (or the whole response) equals ``answer``
  after light normalisation (case, spacing, trailing period);
* ``last_number``: numeric answers, compared with the number after the last "The answer is", else
  the *last number* in the response (digits or number words), the GSM8K-style extraction
  ("14 + 22 = 36" and "... so she has 36 apples." both score for answer "36");
* ``contains``: ``answer`` appears as whole words in the response (:func:`contains_answer`; also
  what ``"match": "contains"`` rows get);
* ``choice``: multiple choice; the letter the response picks (xopd's letter extractor,
  :mod:`.benchmarks.voicebench_default`: an answer statement, a leading or marked letter, else
  exactly one of ``choices`` named) equals the answer letter;
* ``judge``: the judge (any OpenAI-compatible chat-completions endpoint) returns a 0-10 grade,
  scored as grade / 10; rows with a ``rubric`` field or ``task == "open"`` get it under ``auto``.
  Without a judge such rows are *unscored* and counted as such in the report, never given 0 or 1;
* ``world``: the mini world's own checks (:func:`xopd.metrics.score_item`; ``reasoning``
  requires the "The answer is N" phrase its teacher is trained to say).

``auto`` picks ``judge`` for rubric/open rows, ``contains`` for ``"match": "contains"`` rows,
``last_number`` for numeric answers, ``choice`` for a single-letter answer of a row with
``choices``, else ``exact``. ``task == "asr"`` rows are scored by WER of the response against
``answer`` (or ``text``), numbers spelled out on both sides; lower is better, so ASR rows are a
separate, WER-valued benchmark and are not part of Avg. Drop.

The judge talks HTTP with :mod:`urllib` (no SDK dependency), retries transient failures, and
raises :class:`JudgeError` with the URL and the server's message on anything else.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from xopd.errors import XopdError
from xopd.metrics import extract_answer, normalize_answer, score_item

__all__ = [
    "SCORERS",
    "Judge",
    "JudgeError",
    "choice_match",
    "contains_answer",
    "resolve_scorer",
    "extract_and_match",
    "last_number",
    "row_metric",
    "score_row",
]

WORLD_TASKS = ("reasoning", "instruct", "audio_only")
SCORERS = ("auto", "exact", "last_number", "contains", "choice", "judge", "world")

JUDGE_SYSTEM = (
    "You are a strict grader. Read the question, the grading rubric and the response, then grade how "
    "well the response satisfies the rubric on a scale from 0 (useless or wrong) to 10 (fully correct "
    "and complete). Reply with the grade on the last line as 'SCORE: N'."
)


class JudgeError(XopdError):
    """The judge endpoint could not be reached or did not return a grade."""


_WORD_NUM: dict[str, int] = {}


def _word_numbers() -> dict[str, int]:
    if not _WORD_NUM:
        from xopd.data.textnorm import number_to_words

        for n in range(0, 100):
            _WORD_NUM[number_to_words(n)] = n
        for n in range(100, 1001, 100):
            _WORD_NUM[number_to_words(n)] = n
    return _WORD_NUM


_NUM_TOKEN = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in ``text``: digits (``1,200``, ``-3.5``) or number words up to 99."""
    text = text or ""
    best: tuple[int, float] | None = None
    for m in _NUM_TOKEN.finditer(text):
        try:
            best = (m.end(), float(m.group().replace(",", "").rstrip(".")))
        except ValueError:
            continue
    words = _word_numbers()
    lowered = re.sub(r"[-_]", " ", text.lower())
    toks = list(re.finditer(r"[a-z]+", lowered))
    i = 0
    while i < len(toks):  # "thirty six" is one number: try two words before one
        pair = f"{toks[i].group()} {toks[i + 1].group()}" if i + 1 < len(toks) else None
        if pair in words:
            end, value, i = toks[i + 1].end(), words[pair], i + 2
        elif toks[i].group() in words:
            end, value, i = toks[i].end(), words[toks[i].group()], i + 1
        else:
            i += 1
            continue
        if best is None or end > best[0]:
            best = (end, float(value))
    return None if best is None else best[1]


def _as_number(s: str) -> float | None:
    s = (s or "").strip().rstrip(".").replace(",", "")
    try:
        return float(s)
    except ValueError:
        words = _word_numbers()
        return float(words[s.lower()]) if s.lower() in words else None


def extract_and_match(response: str, answer: str) -> float:
    """1.0 if ``response`` gives ``answer`` (see module docstring), else 0.0."""
    target = _as_number(answer)
    got = extract_answer(response)
    if target is not None:
        value = _as_number(got) if got is not None else None
        if value is None:
            value = last_number(got if got is not None else response)
        return float(value is not None and abs(value - target) < 1e-9)
    cand = got if got is not None else (response or "")
    return float(normalize_answer(cand) == normalize_answer(answer))


def contains_answer(response: str, answer: str) -> float:
    """1.0 if ``answer`` appears as whole words in ``response`` (case, punctuation and number
    spelling normalised: "7" matches "seven"). For short-answer QA where a model answers in a
    sentence ("The capital of France is Paris."); rows opt in with ``"match": "contains"``."""
    from xopd.data.textnorm import normalize_for_wer

    target = normalize_for_wer(answer)
    return float(bool(target) and f" {target} " in f" {normalize_for_wer(response)} ")


def choice_match(response: str, answer: str, choices: list[str] | None = None) -> float:
    """1.0 if a multiple-choice response picks ``answer`` (a letter), read by xopd's letter
    extractor (answer statements, a leading or marked letter, else exactly one of ``choices``
    named; :func:`xopd.eval.benchmarks.voicebench_default.mcq_letter`)."""
    from xopd.eval.benchmarks.voicebench_default import mcq_letter

    target = (answer or "").strip().strip("()").upper()
    letters = "ABCDEFGHIJ"[: max(len(choices or []), 4)]
    return float(mcq_letter(response, choices, letters=letters) == target)


def resolve_scorer(example, default: str = "auto") -> str:
    """The scorer of one manifest row (see module docstring); ``"none"`` when it has no answer."""
    meta = example.meta or {}
    name = meta.get("scorer") or default
    if name not in SCORERS:
        raise XopdError(f"row {example.id!r}: scorer {name!r} unknown; choose from {', '.join(SCORERS)}")
    if name != "auto":
        return name
    if example.task == "open" or meta.get("rubric"):
        return "judge"
    if example.answer is None:
        return "none"
    if meta.get("match") == "contains":
        return "contains"
    if _as_number(example.answer) is not None:
        return "last_number"
    if meta.get("choices") and re.fullmatch(r"\(?[A-Ja-j]\)?", example.answer.strip()):
        return "choice"
    return "exact"


def row_metric(task: str | None, meta: dict[str, Any] | None) -> str:
    """``"wer"`` (ASR), ``"judge"`` (rubric, open-ended or ``"scorer": "judge"``) or ``"accuracy"``."""
    if task == "asr":
        return "wer"
    if task == "open" or (meta or {}).get("rubric") or (meta or {}).get("scorer") == "judge":
        return "judge"
    return "accuracy"


@dataclass
class Judge:
    """An OpenAI-compatible chat-completions endpoint used as a grader.

    ``url``: the base (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
    ``api_key``: sent as a Bearer token when set (default: the ``XOPD_JUDGE_API_KEY`` variable).
    """

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 2
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-url {self.url!r}: must start with http:// or https://")
        if not self.url.rstrip("/").endswith("/chat/completions"):
            self.url = self.url.rstrip("/") + "/chat/completions"
        if self.api_key is None:
            self.api_key = os.environ.get("XOPD_JUDGE_API_KEY")

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (user-chosen URL)
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", "replace")[:200]
                if e.code < 500 and e.code != 429:
                    raise JudgeError(f"judge {self.url} answered HTTP {e.code}: {body}") from None
                last = JudgeError(f"judge {self.url} answered HTTP {e.code}: {body}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = JudgeError(f"cannot reach judge {self.url}: {getattr(e, 'reason', e)}")
            except json.JSONDecodeError:
                raise JudgeError(f"judge {self.url} did not return JSON") from None
            if attempt < self.retries:
                time.sleep(0.5 * 2**attempt)
        assert last is not None
        raise last

    def complete(
        self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_tokens: int | None = None,
    ) -> list[str]:  # fmt: skip
        """The judge's replies (one per returned choice) to a chat, with the given sampling settings.

        Benchmarks send their official judge prompts and settings through this; servers that ignore
        ``n`` return one choice, and the caller scores what comes back.
        """
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if n != 1:
            payload["n"] = n
        if top_p != 1.0:
            payload["top_p"] = top_p
        out = self._post(payload)
        try:
            replies = [c["message"]["content"] or "" for c in out["choices"]]
        except (KeyError, IndexError, TypeError):
            replies = []
        if not replies:
            raise JudgeError(f"judge {self.url}: response has no choices[].message.content: {str(out)[:200]}")
        return [r.strip() for r in replies]

    def grade(
        self, question: str, response: str, rubric: str | None = None, reference: str | None = None
    ) -> float:
        """Score in [0, 1]: the judge's 0-10 grade / 10."""
        return grade_with(self, question, response, rubric, reference)


def grade_with(judge, question: str, response: str, rubric: str | None = None, reference: str | None = None) -> float:
    """A manifest row's 0-10 rubric grade / 10 from any judge with ``complete`` (HTTP or local)."""
    parts = [f"Question:\n{question}"]
    if rubric:
        parts.append(f"Rubric:\n{rubric}")
    if reference:
        parts.append(f"Reference answer:\n{reference}")
    parts.append(f"Response:\n{response}")
    messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]
    return parse_grade(judge.complete(messages, temperature=0)[0], getattr(judge, "url", None) or "judge")


def parse_grade(content: str, where: str = "judge") -> float:
    """``SCORE: N`` (last one wins; N in 0-10) -> N / 10. Falls back to a lone number."""
    found = re.findall(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", content or "", flags=re.IGNORECASE)
    if not found:
        found = re.findall(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$", content or "", flags=re.MULTILINE)
    if not found:
        raise JudgeError(f"{where}: no 'SCORE: N' in the judge's reply: {(content or '')[:120]!r}")
    value = float(found[-1])
    if not 0.0 <= value <= 10.0:
        raise JudgeError(f"{where}: grade {value} outside 0-10")
    return value / 10.0


def score_row(example, response: str, judge: Judge | None = None, scorer: str = "auto") -> float | None:
    """Score of one answerable row in [0, 1], or None if it cannot be scored (see module docstring).

    ``scorer``: the default for rows without their own ``"scorer"`` field (the ``--scorer`` flag).
    ASR rows are not scored here (corpus WER is computed over the benchmark).
    """
    if example.task == "asr":
        return None
    name = resolve_scorer(example, scorer)
    if name == "judge":
        if judge is None:
            return None
        question = example.text
        instruction = (example.meta or {}).get("instruction")
        if instruction:
            question = f"{question}\n{instruction}"
        return judge.grade(
            question, response, (example.meta or {}).get("rubric"), example.answer or example.reference
        )
    if example.answer is None or name == "none":
        return None
    if name == "contains":
        return contains_answer(response, example.answer)
    if name == "choice":
        return choice_match(response, example.answer, (example.meta or {}).get("choices"))
    if name == "world":
        if example.task not in WORLD_TASKS:
            raise XopdError(f"row {example.id!r}: scorer 'world' needs a mini-world task {WORLD_TASKS}")
        return score_item(example.task, response, example.answer)
    if name == "last_number":
        target = _as_number(example.answer)
        if target is None:
            raise XopdError(f"row {example.id!r}: scorer 'last_number' needs a numeric answer, got {example.answer!r}")
        return extract_and_match(response, example.answer)
    # exact: the numeric branch of extract_and_match is last_number's; exact compares text only
    got = extract_answer(response)
    return float(normalize_answer(got if got is not None else (response or "")) == normalize_answer(example.answer))
