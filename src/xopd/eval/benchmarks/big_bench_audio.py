"""BIG Bench Audio (``ArtificialAnalysis/big_bench_audio``, MIT): loader and the LLM-judge scoring.

Layout as published: an audiofolder, ``metadata.jsonl`` rows ``{"category", "official_answer",
"file_name": "data/question_0.mp3", "id"}`` with ``file_name`` relative to the metadata file; or
parquet / ``save_to_disk`` copies with an ``audio`` column. 1000 questions in 4 categories
(formal_fallacies, navigate, object_counting, web_of_lies). MP3 is decoded by libsndfile
(soundfile's bundled build reads MP3).

Views: S is the audio alone. T needs the question's text: the published set has none, so T runs
only when the copy carries a ``transcript`` (or ``text``/``question``) field; without it the
benchmark is S-only and left out of the Avg. Drop, with that reason in the report.

Scoring (Artificial Analysis, "Evaluating Audio Reasoning with Big Bench Audio", Hugging Face blog,
2024-12-20): an LLM judge reads the question, the official answer and the candidate answer with
the published evaluator prompt and replies CORRECT or INCORRECT; the score is % correct. A reply
containing INCORRECT is incorrect, else one containing CORRECT is correct, else it is counted as
unparsed (left out). Artificial Analysis's own judge code is not public: this parse is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.eval.benchmarks.base import ScoreContext, Subset, judge_skip, parse_spec
from xopd.eval.benchmarks.io import audio_ref, read_json_rows, read_rows, read_split, require_columns

__all__ = ["JUDGE_PROMPT", "judge_verdict", "load", "score"]

CATEGORIES = ("formal_fallacies", "navigate", "object_counting", "web_of_lies")
TEXT_FIELDS = ("transcript", "text", "question")

#: The blog's "LLM Evaluator Prompt", verbatim ("\n\n" in the question line is two newlines).
JUDGE_PROMPT = """Assess whether the following CANDIDATE ANSWER is CORRECT or INCORRECT.
For the CANDIDATE ANSWER to be correct, it must be consistent with the OFFICIAL ANSWER.
If the CANDIDATE ANSWER contradicts itself, assess the first proposed answer.
If the CANDIDATE ANSWER provides a final answer and working, assess the final answer only.
If the CANDIDATE ANSWER includes irrelevant information, assess only the relevant information.
If the CANDIDATE ANSWER includes a numeric value it is ok if it is spelled e.g. 7 or seven
It is ok if the CANDIDATE ANSWER involves a misspelling of a person's name e.g. Leda or Lida, Autry or Audrie.
  
The question, for reference only: START QUESTION {question} 

END QUESTION

The OFFICIAL ANSWER:{official_answer}

BEGIN CANDIDATE ANSWER TO ASSESS

{candidate_answer}

END CANDIDATE ANSWER TO ASSESS

Reply only with CORRECT or INCORRECT."""  # noqa: W291, W293 (verbatim)


def judge_verdict(reply: str) -> bool | None:
    """CORRECT -> True, INCORRECT -> False, neither -> None (checked in that order: INCORRECT first)."""
    up = (reply or "").upper()
    if "INCORRECT" in up:
        return False
    if "CORRECT" in up:
        return True
    return None


def score(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext) -> dict[str, Any]:
    """% judged CORRECT over the items whose verdict parsed; per-category accuracy in ``details``."""
    skip = judge_skip(ctx, len(examples))
    if skip:
        return skip
    per: dict[str, list[bool]] = {}
    unparsed = 0
    for ex, resp in zip(examples, responses, strict=True):
        prompt = (
            JUDGE_PROMPT.replace("{question}", ex.meta.get("question_text") or "(spoken question; no transcript)")
            .replace("{official_answer}", ex.answer or "")
            .replace("{candidate_answer}", resp)
        )
        verdict = judge_verdict(ctx.judge.complete([{"role": "user", "content": prompt}], temperature=0.0)[0])
        if verdict is None:
            unparsed += 1
            continue
        per.setdefault(ex.meta.get("category", "?"), []).append(verdict)
    flat = [v for vs in per.values() for v in vs]
    return {
        "score": 100.0 * sum(flat) / len(flat) if flat else None,
        "scored": len(flat),
        "unscored": unparsed,
        "details": {"per_category": {c: 100.0 * sum(v) / len(v) for c, v in sorted(per.items())}},
    }


def _rows(root: Path, limit: int | None) -> tuple[list[dict], str, Path]:
    for name in ("metadata.jsonl", "metadata.csv", "data/metadata.jsonl", "data/metadata.csv"):
        meta = root / name
        if meta.is_file():
            return read_json_rows(meta, limit), str(meta), meta.parent
    got = read_split(root, None, "test", limit) or read_split(root, None, "train", limit)
    if got is not None:
        return got[0], got[1], root
    if root.is_file() or any(root.glob("*.parquet")) or (root / "state.json").is_file():
        rows, where = read_rows(root, limit)
        return rows, where, root.parent if root.is_file() else root
    raise DataError(
        f"{root}: no BIG Bench Audio copy here; expected metadata.jsonl next to data/question_*.mp3 (the published "
        "audiofolder), parquet shards or a save_to_disk folder; see docs/BENCHMARKS.md"
    )


def load(root: Path, spec: str, limit: int | None = None) -> list[Subset]:
    """One subset (``spec`` may name categories to keep, e.g. ``"navigate,web_of_lies"``)."""
    keep = parse_spec(spec, CATEGORIES, "big_bench_audio")
    rows, where, base = _rows(root, None if keep else limit)
    audio_col = "file_name" if "file_name" in (rows[0] if rows else {}) else "audio"
    require_columns(rows, ("category", "official_answer", audio_col), where, "is this BIG Bench Audio?")
    if keep:
        rows = [r for r in rows if r["category"] in keep][:limit]
    text_field = next((f for f in TEXT_FIELDS if rows and rows[0].get(f)), None)
    examples = []
    for i, row in enumerate(rows):
        data, path = audio_ref(row[audio_col], base, f"{where} row {i}")
        text = (row.get(text_field) or "") if text_field else ""
        examples.append(Example(
            id=str(row.get("id", i)), text=text or f"(spoken question {row.get('id', i)})", audio=path,
            audio_bytes=data, answer=str(row["official_answer"]),
            meta={"category": row["category"], "question_text": text},
        ))  # fmt: skip
    sub = Subset(benchmark="big_bench_audio", name="big_bench_audio", examples=examples, unit="judge accuracy %",
                 scorer="BIG Bench Audio: LLM judge, Artificial Analysis evaluator prompt, CORRECT/INCORRECT",
                 score=score, source=where)  # fmt: skip
    if text_field is None:
        sub.views = ("S",)
        sub.notes.append("no transcript field in this copy: S view only, so no drop (the base needs T)")
    return [sub]
