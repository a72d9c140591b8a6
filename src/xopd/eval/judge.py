"""Scoring one response: answer extraction / exact match, WER, or an LLM judge over HTTP.

Which scorer a manifest row gets (``score_row``):

* ``task == "asr"``: WER of the response against ``answer`` (or ``text``), numbers spelled out
  on both sides (:func:`xopd.data.textnorm.normalize_for_wer`); lower is better, so ASR rows are a
  separate, WER-valued benchmark and are not part of Avg. Drop.
* a ``rubric`` field, or ``task == "open"``: the judge (any OpenAI-compatible chat-completions
  endpoint) returns a 0-10 grade, scored as grade / 10. Without a judge such rows are *unscored*
  and counted as such in the report — never silently given 0 or 1.
* otherwise, with an ``answer``: rows with ``"match": "contains"`` score 1 when the answer appears
  as whole words in the response (:func:`contains_answer`); the mini world's tasks use :func:`xopd.world.scoring.score_item`;
  any other task uses :func:`extract_and_match`: the text after the last "The answer is" (or the
  whole response), compared after light normalisation; numeric answers are compared numerically
  with the last number in the response (digits or number words), the usual answer-extraction rule
  for word problems ("... so she has 12 apples." scores for answer "12").

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
from xopd.world.scoring import extract_answer, normalize_answer, score_item

__all__ = [
    "Judge",
    "JudgeError",
    "contains_answer",
    "extract_and_match",
    "last_number",
    "row_metric",
    "score_row",
]

WORLD_TASKS = ("reasoning", "instruct", "audio_only")

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
    for m in re.finditer(r"[a-z]+(?: [a-z]+)?", lowered):
        for cand in (m.group(), m.group().split(" ")[0]):
            if cand in words and (best is None or m.end() > best[0]):
                best = (m.end(), float(words[cand]))
                break
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


def row_metric(task: str | None, meta: dict[str, Any] | None) -> str:
    """``"wer"`` (ASR), ``"judge"`` (rubric or open-ended) or ``"accuracy"``."""
    if task == "asr":
        return "wer"
    if task == "open" or (meta or {}).get("rubric"):
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

    def grade(
        self, question: str, response: str, rubric: str | None = None, reference: str | None = None
    ) -> float:
        """Score in [0, 1]: the judge's 0-10 grade / 10."""
        parts = [f"Question:\n{question}"]
        if rubric:
            parts.append(f"Rubric:\n{rubric}")
        if reference:
            parts.append(f"Reference answer:\n{reference}")
        parts.append(f"Response:\n{response}")
        payload = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": "\n\n".join(parts)},
            ],
        }
        out = self._post(payload)
        try:
            content = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"judge {self.url}: response has no choices[0].message.content: {str(out)[:200]}"
            ) from None
        return parse_grade(content, self.url)


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


def score_row(example, response: str, judge: Judge | None = None) -> float | None:
    """Score of one answerable row in [0, 1], or None if it cannot be scored (see module docstring).

    ASR rows are not scored here (corpus WER is computed over the benchmark).
    """
    metric = row_metric(example.task, example.meta)
    if metric == "wer":
        return None
    if metric == "judge":
        if judge is None:
            return None
        question = example.text
        instruction = (example.meta or {}).get("instruction")
        if instruction:
            question = f"{question}\n{instruction}"
        return judge.grade(
            question, response, (example.meta or {}).get("rubric"), example.answer or example.reference
        )
    if example.answer is None:
        return None
    if (example.meta or {}).get("match") == "contains":
        return contains_answer(response, example.answer)
    if example.task in WORLD_TASKS:
        return score_item(example.task, response, example.answer)
    return extract_and_match(response, example.answer)
