"""The S/T table and Avg. Drop (docs/DESIGN.md section 4), as JSON and Markdown.

Every benchmark (one manifest, or the ASR part of a mixed manifest) gets a score per run:
student on speech (S), student on text (T), teacher on text (T). Higher-is-better benchmarks
(accuracy, judge grades; percent) enter the Avg. Drop

    avg_drop_V = 100 * mean_b (base_b - student_V_b) / base_b         V in {S, T}

with ``base`` = the teacher on T, or -- when no teacher is given -- the student itself on T (then
``avg_drop_T`` is 0 by construction and ``avg_drop_S`` is the student's own modality gap; the
report says which base it used). Benchmarks whose base is 0 are left out (the ratio is undefined)
and WER benchmarks (lower is better, and a text teacher cannot transcribe audio) are reported
beside the table but not averaged; both exclusions are listed in the report.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xopd.data.textnorm import normalize_for_wer
from xopd.eval.judge import Judge, resolve_scorer, row_metric, score_row
from xopd.metrics import wer

__all__ = ["RUNS", "avg_drops", "benchmark_parts", "build_report", "score_run", "to_markdown", "write_report"]

RUNS = ("student_S", "student_T", "teacher_T")


def benchmark_parts(name: str, examples: Sequence) -> dict[str, tuple[str, list[int]]]:
    """Split one manifest into benchmarks by metric: ``{bench_name: (metric, row indices)}``.

    Metrics: ``accuracy`` (answers, judge grades), ``wer`` (``task == "asr"``) and ``audio_only``
    (``task == "audio_only"``: questions only the audio answers, the paper's forgetting probe, run
    on S only). A manifest of one kind is one benchmark named ``name``; a mixed one is split into
    ``name``, ``name:asr`` and ``name:audio_only``.
    """
    groups: dict[str, list[int]] = {"accuracy": [], "wer": [], "audio_only": []}
    for i, e in enumerate(examples):
        kind = row_metric(e.task, e.meta)
        groups["audio_only" if e.task == "audio_only" else ("wer" if kind == "wer" else "accuracy")].append(i)
    present = [k for k, v in groups.items() if v]
    if len(present) == 1:
        return {name: (present[0], groups[present[0]])}
    suffix = {"accuracy": "", "wer": ":asr", "audio_only": ":audio_only"}
    return {f"{name}{suffix[k]}": (k, groups[k]) for k in present}


def score_run(
    examples: Sequence, responses: Sequence[str], metric: str, judge: Judge | None = None, scorer: str = "auto"
) -> dict[str, Any]:
    """One run on one benchmark: ``{"score": percent or None, "scored": n, "unscored": n, "per_task": {...},
    "scorers": {name: rows}}``.

    ``metric == "wer"``: ``score`` is the corpus WER in percent (numbers spelled on both sides).
    Otherwise the mean row score in percent over the rows that could be scored; ``scorer`` is the
    default of rows that do not name their own (:mod:`xopd.eval.judge`).
    """
    if metric == "wer":
        refs = [normalize_for_wer(e.answer or e.reference or e.text) for e in examples]
        hyps = [normalize_for_wer(r) for r in responses]
        return {"score": 100.0 * wer(refs, hyps), "scored": len(refs), "unscored": 0, "per_task": {},
                "scorers": {"wer": len(refs)}}  # fmt: skip
    per_task: dict[str, list[float]] = defaultdict(list)
    unscored = 0
    used: dict[str, int] = defaultdict(int)
    for ex, resp in zip(examples, responses, strict=True):
        used[resolve_scorer(ex, scorer)] += 1
        s = score_row(ex, resp, judge, scorer)
        if s is None:
            unscored += 1
            continue
        per_task[ex.task or "default"].append(s)
    flat = [s for v in per_task.values() for s in v]
    return {
        "score": 100.0 * sum(flat) / len(flat) if flat else None,
        "scored": len(flat),
        "unscored": unscored,
        "per_task": {t: 100.0 * sum(v) / len(v) for t, v in sorted(per_task.items())},
        "scorers": dict(sorted(used.items())),
    }


def _drop(base: float | None, x: float | None) -> float | None:
    if base is None or x is None or base <= 0:
        return None
    return 100.0 * (base - x) / base


def avg_drops(
    benchmarks: dict[str, dict[str, Any]], base_run: str
) -> tuple[dict[str, float | None], dict[str, str]]:
    """``({"avg_drop_S", "avg_drop_T"}, excluded {bench: why})`` over accuracy-type benchmarks."""
    terms: dict[str, list[float]] = {"S": [], "T": []}
    excluded: dict[str, str] = {}
    for name, b in benchmarks.items():
        if b["metric"] == "wer":
            excluded[name] = "WER benchmark (lower is better): reported, not averaged"
            continue
        if b["metric"] == "audio_only":
            excluded[name] = (
                "audio-only (forgetting probe): answered from S only, the text views cannot answer it"
            )
            continue
        base = b["runs"].get(base_run, {}).get("score")
        if b.get("skipped"):
            excluded[name] = f"not run: {b['skipped']}"
            continue
        if base_run not in b["runs"] and b.get("views") == ["S"]:
            excluded[name] = "no text view (T) in this copy, so no base: reported, not averaged"
            continue
        if b["runs"].get(base_run, {}).get("skipped"):
            excluded[name] = f"not scored: {b['runs'][base_run]['skipped']}"
            continue
        if base is None or base <= 0:
            excluded[name] = f"base ({base_run}) score is {base}: the relative drop is undefined"
            continue
        for view in ("S", "T"):
            d = _drop(base, b["runs"].get(f"student_{view}", {}).get("score"))
            if d is not None:
                terms[view].append(d)
    out = {f"avg_drop_{v}": (sum(t) / len(t) if t else None) for v, t in terms.items()}
    return out, excluded


def build_report(
    benchmarks: dict[str, dict[str, Any]],
    *,
    student: str,
    teacher: str | None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add per-benchmark drops and the top-level Avg. Drops to ``benchmarks`` (see module docstring)."""
    base_run = "teacher_T" if teacher else "student_T"
    for b in benchmarks.values():
        base = b["runs"].get(base_run, {}).get("score")
        if b["metric"] == "accuracy":
            b["drop_S"] = _drop(base, b["runs"].get("student_S", {}).get("score"))
            b["drop_T"] = _drop(base, b["runs"].get("student_T", {}).get("score"))
    drops, excluded = avg_drops(benchmarks, base_run)
    note = (
        "base = teacher on text (T), as in the paper"
        if teacher
        else "no --teacher given: base = the student itself on text (T); avg_drop_T is 0 by construction "
        "and avg_drop_S measures the student's own speech-vs-text gap"
    )
    return {
        "student": student,
        "teacher": teacher,
        "base": base_run,
        "base_note": note,
        **drops,
        "avg_drop_benchmarks": [n for n in benchmarks if n not in excluded],
        "excluded_from_avg_drop": excluded,
        "benchmarks": benchmarks,
        "settings": settings or {},
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _row(name: str, b: dict[str, Any]) -> str:
    r = b["runs"]
    metric = b.get("unit") or {"wer": "WER % (lower better)", "audio_only": "audio-only %"}.get(b["metric"], "score %")
    return (
        f"| {name} | {metric} | {b['n']} | {_fmt(r.get('student_S', {}).get('score'))} | "
        f"{_fmt(r.get('student_T', {}).get('score'))} | {_fmt(r.get('teacher_T', {}).get('score'))} | "
        f"{_fmt(b.get('drop_S'))} | {_fmt(b.get('drop_T'))} |"
    )


def _details(name: str, b: dict[str, Any]) -> list[str]:
    out = []
    for run, r in b["runs"].items():
        if r.get("skipped"):
            out.append(f"- `{name}` {run}: skipped ({r['skipped']})")
        for key, value in (r.get("details") or {}).items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in value.items())
            elif isinstance(value, float):
                value = _fmt(value)
            out.append(f"- `{name}` {run} {key}: {value}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    """The S/T table (one row per benchmark, then the Avg. Drop row), one table per benchmark
    suite (its subsets and per-split / per-category details), the scorers and the notes."""
    header = [
        "| Benchmark | Metric | N | Student S | Student T | Teacher T | Drop S % | Drop T % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = [
        f"Student: `{report['student']}`  ",
        f"Teacher: `{report['teacher'] or '(none)'}`  ",
        f"Base for Avg. Drop: {report['base_note']}",
        "",
        *header,
    ]
    for name, b in report["benchmarks"].items():
        lines.append(_row(name, b))
    lines.append(
        f"| **Avg. Drop** | | | | | | **{_fmt(report.get('avg_drop_S'))}** | **{_fmt(report.get('avg_drop_T'))}** |"
    )
    terms = report.get("avg_drop_benchmarks") or []
    lines += ["", f"Avg. Drop = mean over {len(terms)} benchmarks of 100 * (base - x) / base: "
              + (", ".join(f"`{t}`" for t in terms) or "none")]  # fmt: skip
    groups: dict[str, list[str]] = {}
    for name, b in report["benchmarks"].items():
        if b.get("benchmark"):
            groups.setdefault(b["benchmark"], []).append(name)
    for group, names in groups.items():
        lines += ["", f"### {group}", "", *header]
        lines += [_row(n, report["benchmarks"][n]) for n in names]
        details = [d for n in names for d in _details(n, report["benchmarks"][n])]
        lines += ["", *details] if details else []
    scorers = []
    for name, b in report["benchmarks"].items():
        if b.get("scorer"):
            scorers.append(f"- `{name}`: {b['scorer']}" + (f"; rules: {b['rules']}" if b.get("rules") else ""))
        else:
            used = next((r.get("scorers") for r in b["runs"].values() if r.get("scorers")), None)
            if used:
                scorers.append(f"- `{name}`: " + ", ".join(f"{k} ({v} rows)" for k, v in used.items()))
    if scorers:
        lines += ["", "Scorers:", *scorers]
    notes = []
    for name, why in report.get("excluded_from_avg_drop", {}).items():
        notes.append(f"- `{name}` not in Avg. Drop: {why}")
    for name, b in report["benchmarks"].items():
        un = {k: v.get("unscored", 0) for k, v in b["runs"].items() if v.get("unscored") and not v.get("skipped")}
        if un:
            notes.append(
                f"- `{name}`: rows without a usable score (open-ended without a judge, unparsed judge reply, "
                f"or no answer): {un}"
            )
        if b.get("skipped_rows"):
            notes.append(f"- `{name}`: manifest rows skipped: {b['skipped_rows']}")
        for note in b.get("notes") or []:
            notes.append(f"- `{name}`: {note}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` (JSON) and the Markdown table next to it (same name, ``.md``); atomic."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    md = p.with_suffix(".md") if p.suffix != ".md" else p.with_name(p.name + ".md")
    for target, text in (
        (p, json.dumps(report, indent=2, ensure_ascii=False) + "\n"),
        (md, to_markdown(report)),
    ):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return p, md
