"""Verifiable scoring for mini-world items: answer extraction, exact checks and WER.

The teacher's reasoning style ends every chain of thought in the fixed phrase ``The answer is N.``
so a response is scored by pulling out what follows the *last* occurrence of that phrase. Short
tasks (instruct, audio_only) may answer bare ("cat cat cat") or with the phrase; both count. The
normalisation is deliberately light (case, surrounding whitespace, trailing period, spacing around
commas): a model that says something else is wrong, not "almost right".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer

__all__ = ["ANSWER_PHRASE", "extract_answer", "normalize_answer", "normalize_text", "score_item", "wer"]

ANSWER_PHRASE = "The answer is"
_PHRASE_RE = re.compile(r"the answer is\b", re.IGNORECASE)


def extract_answer(response: str) -> str | None:
    """Text after the last ``The answer is`` up to the end of that sentence/line, or None.

    ``"5 plus 3 is 8. The answer is 8."`` -> ``"8"``; ``"The answer is cat cat."`` -> ``"cat cat"``;
    no phrase, or nothing after it -> None.
    """
    matches = list(_PHRASE_RE.finditer(response or ""))
    if not matches:
        return None
    rest = response[matches[-1].end() :].split("\n", 1)[0]
    rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]  # end of sentence; keeps "3.5"-style numbers
    rest = rest.strip().rstrip(".!").strip().strip(":").strip()
    return rest or None


def normalize_answer(s: str) -> str:
    """Lower-case, collapse whitespace, ``a ,b`` -> ``a, b``, drop trailing ``.``/``!``."""
    s = re.sub(r"\s+", " ", (s or "").strip().lower())
    s = re.sub(r"\s*,\s*", ", ", s)
    return s.rstrip(".!? ").strip()


def normalize_text(s: str) -> str:
    """ASR normalisation: lower-case, punctuation to spaces (apostrophes kept), one space between words."""
    s = re.sub(r"[^\w\s']", " ", (s or "").lower())
    return re.sub(r"\s+", " ", s).strip()


def score_item(task: str, response: str, answer: str) -> float:
    """Score one response against the verifiable answer, in [0, 1].

    * ``reasoning``: 1.0 iff the extracted answer equals ``answer`` (the phrase is required);
    * ``instruct`` / ``audio_only``: 1.0 iff the extracted answer, or the whole response when it
      has no phrase, equals ``answer`` after :func:`normalize_answer`;
    * ``asr``: ``max(0, 1 - WER)`` of the response against ``answer``.
    """
    if task == "reasoning":
        got = extract_answer(response)
        return float(got is not None and normalize_answer(got) == normalize_answer(answer))
    if task in ("instruct", "audio_only"):
        got = extract_answer(response)
        cand = got if got is not None else (response or "")
        return float(normalize_answer(cand) == normalize_answer(answer))
    if task == "asr":
        return max(0.0, 1.0 - wer([answer], [response]))
    raise ValueError(f"unknown task {task!r}; expected reasoning, instruct, audio_only or asr")


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate (total edits / total reference words) after :func:`normalize_text`.

    Empty-safe, where jiwer is not: an empty reference contributes its hypothesis words as
    insertions; with no reference words at all the result is 0.0 if every hypothesis is empty,
    else 1.0. An empty list scores 0.0.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"wer: {len(refs)} references but {len(hyps)} hypotheses")
    r_norm = [normalize_text(r) for r in refs]
    h_norm = [normalize_text(h) for h in hyps]
    n_ref = sum(len(r.split()) for r in r_norm)
    errors = sum(len(h.split()) for r, h in zip(r_norm, h_norm) if not r)
    pairs = [(r, h) for r, h in zip(r_norm, h_norm) if r]
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        errors += out.substitutions + out.deletions + out.insertions
    if n_ref == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / n_ref
