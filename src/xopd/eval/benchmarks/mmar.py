"""MMAR (``BoJack/MMAR``, CC BY-NC 4.0): loader and the official token-match scorer.

Layout as published: ``MMAR-meta.json`` (a JSON list; the GitHub repo has the same rows as
``MMAR-meta.jsonl``) with rows ``{"id", "audio_path": "./audio/<id>.wav", "question", "choices",
"answer" (the choice text), "modality", "category", "sub-category", ...}``, and the wav files under
``audio/`` next to it (extract the audio archive there).

MMAR is audio-only: the question is about sounds, music or speech that only the audio carries, so
there is no T view and the text teacher cannot answer it. It is the paper's forgetting probe:
reported from S, never part of the Avg. Drop.

Prompt: the audio plus the question and the choices, one per line, after "Select one option from
the provided choices." (the MMAU-style instruction MMAR's evaluation descends from; MMAR does not
publish a prompt). Answers are free text, as the scorer expects.

Scoring (github.com/ddlBoJack/MMAR ``code/evaluation.py`` ``string_match``): word tokens
(``\\b\\w+\\b``, lower-cased) of the prediction must include every token of the answer and none of
the tokens that only wrong choices have (a choice whose token set equals the answer's adds none);
an empty prediction is wrong. Accuracy % overall, per modality and per category.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.eval.benchmarks.base import ScoreContext, Subset, parse_spec
from xopd.eval.benchmarks.io import audio_ref, read_json_rows, require_columns

__all__ = ["MODALITIES", "load", "score", "string_match"]

MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech")  # fmt: skip
INSTRUCTION = "Select one option from the provided choices."


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", (text or "").lower()))


def string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """evaluation.py ``string_match`` (see module docstring)."""
    pred, ans = _tokens(prediction), _tokens(answer)
    if not pred:
        return False
    wrong: set[str] = set()
    for choice in choices:
        toks = _tokens(choice)
        if toks != ans:
            wrong |= toks - ans
    return ans.issubset(pred) and pred.isdisjoint(wrong)


def score(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext) -> dict[str, Any]:
    hits = [string_match(e.answer or "", r, e.meta["choices"]) for e, r in zip(examples, responses, strict=True)]

    def by(key: str) -> dict[str, float]:
        groups: dict[str, list[bool]] = {}
        for e, h in zip(examples, hits):
            groups.setdefault(str(e.meta.get(key)), []).append(h)
        return {k: 100.0 * sum(v) / len(v) for k, v in sorted(groups.items())}

    return {"score": 100.0 * sum(hits) / max(len(hits), 1), "scored": len(hits), "unscored": 0,
            "details": {"per_modality": by("modality"), "per_category": by("category")}}  # fmt: skip


def _meta_file(root: Path) -> Path:
    if root.is_file():
        return root
    for name in ("MMAR-meta.json", "MMAR-meta.jsonl"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no MMAR-meta.json here; point --data at the folder with MMAR-meta.json and audio/")


def load(root: Path, spec: str, limit: int | None = None) -> list[Subset]:
    """One subset; ``spec`` may name modalities to keep (``"speech,mix-sound-speech"``)."""
    keep = parse_spec(spec, MODALITIES, "mmar")
    meta = _meta_file(root)
    rows = read_json_rows(meta)
    fields = ("id", "audio_path", "question", "choices", "answer", "modality", "category")
    require_columns(rows, fields, str(meta), "is this MMAR's metadata?")
    if keep:
        rows = [r for r in rows if r["modality"] in keep]
    rows = rows[:limit] if limit is not None else rows
    examples = []
    for row in rows:
        choices = [str(c) for c in row["choices"]]
        instruction = "\n".join([row["question"], INSTRUCTION, *choices])
        _, path = audio_ref(row["audio_path"], meta.parent, f"{meta} id {row['id']!r}")
        examples.append(Example(
            id=str(row["id"]), text=row["question"], audio=path, answer=str(row["answer"]),
            meta={"instruction": instruction, "choices": choices, "modality": row["modality"],
                  "category": row["category"], "sub-category": row.get("sub-category")},
        ))  # fmt: skip
    return [Subset(benchmark="mmar", name="mmar", examples=examples, unit="accuracy % (audio-only)",
                   scorer="MMAR string_match (official token rule)", score=score, views=("S",),
                   metric="audio_only", source=str(meta))]  # fmt: skip
