"""Audio MultiChallenge (``ScaleAI/audiomc``, MIT): multi-turn loader and the rubric judge.

Layout as published: parquet (``data/test-*.parquet``) or a ``save_to_disk`` folder, one row per
conversation: ``id``, ``axis``, ``user_turn_{1..8}_audio`` (audio structs, 48 kHz), ``user_turn_{k}
_transcript``, ``assistant_turn_{1..7}_transcript`` (reference replies) and ``rubric``. A
conversation ends with its last user turn K; turns 1..K-1 and the reference replies 1..K-1 are the
history, and the model writes reply K: from the audio of every user turn (S) or from their
transcripts (T, what the text teacher sees).

Scoring (dataset card, "Evals"): an LLM judge (o4-mini in the paper) reads the conversation with
the model's reply as the last assistant turn and one rubric item, with a grader prompt adapted
from HealthBench (Arora et al., 2025), and answers JSON ``{"explanation", "criteria_met"}``. A
conversation passes when every rubric item is met; the score is the pass rate %. xopd's
:data:`GRADER_PROMPT` is its own wording of such a grader (all requirements of the item must
hold; examples after "such as" are illustrative; JSON out) with the card's JSON contract; it is
not the official grader text, so judged numbers are close to, not identical with, the paper's.
``rubric`` is read as a JSON list (of strings
or of objects with a ``criterion``/``rubric``/``description`` field) or else one item per non-empty
line; items whose judge reply has no ``criteria_met`` are counted as unparsed and the
conversation is then left unscored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.eval.benchmarks.base import ScoreContext, Subset, judge_skip, parse_spec
from xopd.eval.benchmarks.io import audio_ref, read_rows, read_split, require_columns

__all__ = ["GRADER_PROMPT", "criteria_met", "load", "parse_rubric", "score"]

MAX_TURNS = 8

#: xopd's own wording of a rubric-item grader with the card's JSON contract (``explanation``,
#: ``criteria_met``); the official grader text is not shipped (see the module docstring).
GRADER_PROMPT = """You grade one reply of an assistant against one rubric item. Read the conversation below; \
only its final assistant turn is graded.

# Conversation
«conversation_history»

# Rubric item
«rubric_item»

# How to grade
- The reply meets the item only if it satisfies everything the item asks for; if the item lists \
several requirements, each of them must hold.
- Where the item gives examples ("such as", "for example", "including"), the reply need not \
mention those examples: other instances that fit the requirement count as well.
- Judge the final assistant turn in the light of the whole conversation.

# Output
Reply with a JSON object with two fields: "explanation", a short string saying why the reply does \
or does not meet the item, and "criteria_met", true or false. Output the JSON object only (a \
markdown code block is fine), with no other text."""


def parse_rubric(rubric: Any) -> list[str]:
    """Rubric items of one conversation (see module docstring)."""
    value = rubric
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln).strip() for ln in value.splitlines()]
            return [ln for ln in lines if ln]
    if isinstance(value, dict):
        value = value.get("items") or value.get("rubric") or [value]
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    items = []
    for v in value or []:
        if isinstance(v, dict):
            v = v.get("criterion") or v.get("rubric") or v.get("description") or v.get("text") or json.dumps(v)
        if str(v).strip():
            items.append(str(v).strip())
    return items


def criteria_met(reply: str) -> bool | None:
    """``criteria_met`` of a judge reply (JSON, optionally in a markdown fence), None if absent."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", (reply or "").strip())
    try:
        value = json.loads(text).get("criteria_met")
    except (json.JSONDecodeError, AttributeError):
        m = re.search(r'"criteria_met"\s*:\s*(true|false)', text, flags=re.IGNORECASE)
        value = None if m is None else m.group(1).lower() == "true"
    return value if isinstance(value, bool) else None


def _conversation(example: Example, response: str) -> str:
    turns = [(t["role"], t.get("text") or "") for t in example.meta["history"]]
    turns += [("user", example.text), ("assistant", response)]
    return "\n\n".join(f"{role}: {text}" for role, text in turns)


def score(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext) -> dict[str, Any]:
    """Pass rate % (all rubric items met); per-axis pass rates and the item-level rate in ``details``."""
    skip = judge_skip(ctx, len(examples))
    if skip:
        return skip
    per_axis: dict[str, list[bool]] = {}
    items_met = items_total = unparsed = 0
    for ex, resp in zip(examples, responses, strict=True):
        convo, verdicts = _conversation(ex, resp), []
        for item in ex.meta["rubric_items"]:
            prompt = GRADER_PROMPT.replace("«conversation_history»", convo).replace("«rubric_item»", item)
            verdicts.append(criteria_met(ctx.judge.complete([{"role": "user", "content": prompt}])[0]))
        if any(v is None for v in verdicts):
            unparsed += 1
            continue
        items_met += sum(verdicts)
        items_total += len(verdicts)
        per_axis.setdefault(str(ex.meta.get("axis")), []).append(all(verdicts))
    flat = [p for ps in per_axis.values() for p in ps]
    return {
        "score": 100.0 * sum(flat) / len(flat) if flat else None,
        "scored": len(flat),
        "unscored": unparsed,
        "details": {"per_axis": {a: 100.0 * sum(v) / len(v) for a, v in sorted(per_axis.items())},
                    "rubric_items_met_percent": 100.0 * items_met / items_total if items_total else None},
    }  # fmt: skip


def _example(row: dict, i: int, base: Path, where: str) -> Example:
    last = max((k for k in range(1, MAX_TURNS + 1) if row.get(f"user_turn_{k}_audio") or row.get(f"user_turn_{k}_transcript")),
               default=0)  # fmt: skip
    if last == 0:
        raise DataError(f"{where} row {i}: no user_turn_1_audio / user_turn_1_transcript; is this Audio MultiChallenge?")
    history: list[dict] = []
    for k in range(1, last + 1):
        data, path = audio_ref(row.get(f"user_turn_{k}_audio"), base, f"{where} row {i} user_turn_{k}_audio")
        turn = {"role": "user", "text": row.get(f"user_turn_{k}_transcript") or "", "audio_bytes": data, "audio": path}
        if k == last:
            items = parse_rubric(row["rubric"])
            if not items:
                raise DataError(f"{where} row {i}: empty rubric")
            return Example(id=str(row.get("id", i)), text=turn["text"] or "(spoken turn)", audio=path, audio_bytes=data,
                           meta={"history": history, "axis": row.get("axis"), "rubric_items": items})  # fmt: skip
        history += [turn, {"role": "assistant", "text": row.get(f"assistant_turn_{k}_transcript") or ""}]
    raise AssertionError("unreachable")


def load(root: Path, spec: str, limit: int | None = None) -> list[Subset]:
    """One subset (``spec`` may name axes to keep, matched against the ``axis`` field)."""
    got = read_split(root, None, "test", None)
    rows, where = got if got is not None else read_rows(root, None)
    require_columns(rows, ("user_turn_1_audio", "user_turn_1_transcript", "rubric"), where,
                    "is this Audio MultiChallenge (ScaleAI/audiomc)?")  # fmt: skip
    if spec:
        keep = parse_spec(spec, sorted({str(r.get("axis")) for r in rows}), "audio_multichallenge")
        rows = [r for r in rows if str(r.get("axis")) in (keep or [])]
    rows = rows[:limit] if limit is not None else rows
    base = root if root.is_dir() else root.parent
    examples = [_example(r, i, base, where) for i, r in enumerate(rows)]
    return [Subset(benchmark="audio_multichallenge", name="audio_multichallenge", examples=examples,
                   unit="pass rate %", scorer="Audio MultiChallenge: rubric judge (xopd grader wording), pass = all items met",
                   score=score, source=where)]  # fmt: skip
