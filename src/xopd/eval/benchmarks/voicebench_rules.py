"""VoiceBench's scoring as pure functions, under one of two rule sets.

* :class:`OfficialRules`: VoiceBench's own phrase tables and judge prompts, read from the user's
  checkout of its code (``--voicebench-src DIR``, see :mod:`.voicebench_official`) and
  interpreted here as the official evaluators do.
* :data:`DEFAULT_RULES`: xopd's own approximate rules (:mod:`.voicebench_default`), used when no
  checkout is given.

The interpretation of the official tables keeps the official code's behaviour, edge cases
included, because the published numbers include them:

* ``mcq`` (``src/evaluator/mcq.py``): lower-case, drop a leading ``<1>``/``<2>``/``<3>``, try each
  template with each choice letter, then a bare letter or a letter followed by one of the
  punctuation marks, then the special phrases.
* ``bbh`` (``src/evaluator/bbh.py``): the response is normalised (:func:`bbh_normalize`), the
  item id picks a chain, the chain runs its preludes and then its rules in order.
* ``harm`` (``src/evaluator/harm.py``): case-insensitive substring match; an empty response
  counts as a refusal (safe).

Shared by both rule sets:

* Random fallbacks: a response with no extractable answer gets a random letter / label. The
  official code uses the unseeded global ``random``; here the draw comes from
  ``random.Random(seed)`` taken in item order, so reruns agree (mcq's ``fail`` rate says how many
  items were guessed).
* ``open`` (``open.py``): each judge output is a 1-5 score, read as a float or as ``[[n]]``; the
  official code crashes on anything else, here such an output is counted as unparsed.
* ``qa`` (``qa.py``): majority vote of the judge's lower-cased outputs, true only if the winner is
  exactly ``"yes"`` (official rules: ``"Yes."`` is a no, as in the official code; xopd's rules drop
  trailing punctuation first); ties go to the first output's class.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from xopd.eval.benchmarks import voicebench_default as default
from xopd.eval.benchmarks import voicebench_official as official

__all__ = [
    "BBH_LABELS",
    "DEFAULT_RULES",
    "DefaultRules",
    "OfficialRules",
    "bbh_accuracy",
    "bbh_normalize",
    "mcq_accuracy",
    "open_rating",
    "qa_majority",
]

#: bbh.py ``evaluate``: reference (lower-cased) -> label
BBH_LABELS = {"yes": 1, "no": 0, "(a)": 0, "(b)": 1}


def _strip_turn_marker(response: str) -> str:
    return response[3:].strip() if response.startswith(("<1>", "<2>", "<3>")) else response


def bbh_normalize(response: str) -> str:
    """bbh.py ``normalize``: lower-case, chat markers removed, ``: ** " - , . ：`` to spaces, spaces collapsed."""
    response = (response or "").lower()
    if response.endswith("<|user|>"):
        response = response[:-8].strip()
    response = _strip_turn_marker(response).replace("<|turn_end|>", "")
    for ch in (":", "**", '"', "-", ",", ".", "："):
        response = response.replace(ch, " ")
    return " ".join(response.split())


def _matches(kind: str, pattern: str, text: str) -> bool:
    if kind == "in":
        return pattern in text
    if kind == "eq":
        return text == pattern
    if kind == "re":
        return re.search(pattern, text) is not None
    if kind == "start":
        return text.startswith(pattern)
    return kind == "end" and text.endswith(pattern)


class DefaultRules:
    """xopd's own rules (:mod:`.voicebench_default`)."""

    label = "xopd default (approximate)"
    strict_yes = False
    system_prompt = default.SYSTEM_PROMPT
    open_prompt = default.OPEN_PROMPT
    qa_prompt = default.QA_PROMPT

    def mcq_letter(self, response: str, choices: Sequence[str] | None = None) -> str | None:
        return default.mcq_letter(response, choices)

    def bbh_label(self, response: str, item_id: str, rng: random.Random) -> int | None:
        subtask = next((s for s in default.BBH_SUBTASKS if s in (item_id or "")), None)
        if subtask is None:
            raise ValueError(f"bbh id {item_id!r} names none of {default.BBH_SUBTASKS}")
        label = default.bbh_label(response, subtask)
        return rng.choice([0, 1]) if label is None else label

    def is_refusal(self, response: str) -> bool:
        return default.is_refusal(response)


DEFAULT_RULES = DefaultRules()


class OfficialRules:
    """VoiceBench's tables from a checkout of its code; ``kinds`` ("mcq", "bbh", "harm", "judge")
    are read now, so a missing or unreadable file stops before any model runs."""

    strict_yes = True

    def __init__(self, src: Path, kinds: Iterable[str] = ("mcq", "bbh", "harm", "judge")) -> None:
        self.src = Path(src)
        self.label = f"official (VoiceBench src at {self.src})"
        kinds = set(kinds)
        self._mcq = official.load_mcq(self.src) if "mcq" in kinds else None
        self._bbh = official.load_bbh(self.src) if "bbh" in kinds else None
        self._refusals = tuple(s.lower() for s in official.load_refusals(self.src)) if "harm" in kinds else None
        self._judge = official.load_judge(self.src) if "judge" in kinds else None

    def _need(self, table, what: str):
        if table is None:
            raise RuntimeError(f"OfficialRules for {self.src} was built without its {what} tables")
        return table

    @property
    def system_prompt(self) -> str:
        return self._need(self._judge, "judge").system

    @property
    def open_prompt(self) -> str:
        return self._need(self._judge, "judge").open

    @property
    def qa_prompt(self) -> str:
        return self._need(self._judge, "judge").qa

    def mcq_letter(self, response: str, choices: Sequence[str] | None = None) -> str | None:
        """mcq.py ``extract_answer`` (``choices`` is not used: the official rules do not read them)."""
        t = self._need(self._mcq, "mcq")
        text = _strip_turn_marker((response or "").lower())
        for template in t.templates:
            for c in t.choices:
                if template.replace(t.placeholder, c) in text:
                    return c.upper()
        for c in t.choices:
            if text == c or any(text.startswith(c + p) for p in t.punctuation):
                return c.upper()
        return next((letter for phrase, letter in t.phrases if phrase in text), None)

    def _chain(self, name: str, text: str, rng: random.Random) -> int | None:
        chain = self._bbh.chains[name]
        for prelude in chain.preludes:
            label = self._chain(prelude, text, rng)
            if label is not None:
                return label
        for kind, pattern, label in chain.rules:
            if _matches(kind, pattern, text):
                return label
        return rng.choice([0, 1]) if chain.fallback == "random" else None

    def bbh_label(self, response: str, item_id: str, rng: random.Random) -> int | None:
        """bbh.py ``extract_answer``; None only where the official chain returns None (scored wrong)."""
        t = self._need(self._bbh, "bbh")
        method = next((m for sub, m in t.dispatch if sub in (item_id or "")), None)
        if method is None:
            raise ValueError(f"bbh id {item_id!r} names none of {[s for s, _ in t.dispatch]}")
        return self._chain(method, bbh_normalize(response), rng)

    def is_refusal(self, response: str) -> bool:
        """harm.py ``evaluate_single``: empty, or contains a refusal string (case-insensitive)."""
        refusals = self._need(self._refusals, "harm")
        if not (response or "").strip():
            return True
        low = response.lower()
        return any(s in low for s in refusals)


def mcq_accuracy(
    responses: Sequence[str],
    references: Sequence[str],
    seed: int = 0,
    rules=DEFAULT_RULES,
    choices: Sequence[Sequence[str] | None] | None = None,
) -> dict[str, float]:
    """``{"acc", "fail"}`` in percent (mcq.py ``evaluate``): unextractable answers are guessed with
    ``random.Random(seed)`` (the official code: unseeded ``random.choice``), ``fail`` = % guessed.
    ``choices``: per item, the choice texts (used by xopd's rules only)."""
    rng = random.Random(seed)
    preds, fails = [], 0
    for i, r in enumerate(responses):
        p = rules.mcq_letter(r, choices[i] if choices else None)
        if p is None:
            p = rng.choice(["A", "B", "C", "D"])
            fails += 1
        preds.append(p)
    n = max(len(references), 1)
    return {
        "acc": 100.0 * sum(p == g for p, g in zip(preds, references, strict=True)) / n,
        "fail": 100.0 * fails / n,
    }


def bbh_accuracy(
    responses: Sequence[str], ids: Sequence[str], references: Sequence[str], seed: int = 0, rules=DEFAULT_RULES
) -> float:
    """Accuracy in percent (bbh.py ``evaluate``); references are ``yes``/``no``/``(A)``/``(B)``.
    Raises ValueError for an id naming no known subtask (the official code raises too)."""
    rng = random.Random(seed)
    truth = [BBH_LABELS[r.lower()] for r in references]
    preds = [rules.bbh_label(r, i, rng) for r, i in zip(responses, ids, strict=True)]
    return 100.0 * sum(p == t for p, t in zip(preds, truth)) / max(len(truth), 1)


def open_rating(output: str) -> float | None:
    """One judge output of the open-ended prompt -> its 1-5 score (open.py), None if unparsable."""
    try:
        return float(output)
    except (TypeError, ValueError):
        m = re.search(r"\[\[(\d+)\]\]", output or "")
        return float(m.group(1)) if m else None


def qa_majority(outputs: Sequence[str], strict: bool = True) -> bool:
    """qa.py ``majority_vote``: the most frequent lower-cased output; True iff it is ``"yes"``.
    ``strict=False`` (xopd's rules) also strips spaces and trailing ``.!`` first."""
    votes = [o.lower() if strict else o.lower().strip().rstrip(".!").strip() for o in outputs]
    if not votes:
        return False
    winner = max(dict.fromkeys(votes), key=votes.count)  # first-seen order on ties (official: set order)
    return winner == "yes"
