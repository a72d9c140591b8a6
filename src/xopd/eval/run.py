"""The S/T evaluation of a student (and its text teacher): one pipeline for ``xopd eval`` and every recipe.

Manifests and benchmark suites are loaded, every (model, view) run generates greedily into a
resumable response log, and the runs are scored into the paper's S/T table with Avg. Drop
(docs/DESIGN.md section 4).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from xopd.errors import DataError
from xopd.eval.config import EvalConfig


def _bench_names(paths: list[str]) -> list[str]:
    """Manifest stems; folder name when the stem is the generic 'manifest'; suffixes on clashes."""
    names = []
    for p in paths:
        path = Path(p)
        name = path.parent.name if path.stem == "manifest" and path.parent.name else path.stem
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _check_lengths(examples, manifest: str, window: float | None) -> None:
    if window is None:
        return
    import soundfile as sf

    for ex in examples:
        if ex.audio is None or ex.audio_bytes is not None:
            continue
        info = sf.info(ex.audio)
        seconds = info.frames / info.samplerate
        if seconds > window + 1e-6:
            raise DataError(
                f"{manifest}: row {ex.id!r} has {seconds:.1f} s of audio but the student's encoder window is "
                f"{window:.1f} s; trim the audio or drop the row (xopd synth --max-seconds {window:g})"
            )


def _plan(speech: bool, views: tuple[str, ...], student, teacher) -> list[tuple[str, Any, str]]:
    plan = [("student_S", student, "S")] if speech and "S" in views else []
    if "T" in views:
        plan.append(("student_T", student, "T"))
        if teacher is not None:
            plan.append(("teacher_T", teacher, "T"))
    return plan


def _make_judge(cfg: EvalConfig):
    """The open-answer judge: an OpenAI-compatible server, a local HF model, or None (rule scorers only)."""
    from xopd.eval.benchmarks.judging import LocalJudge
    from xopd.eval.judge import Judge

    if cfg.judge_url:
        return Judge(cfg.judge_url, cfg.judge_model)
    if cfg.judge_model_dir:
        return LocalJudge(cfg.judge_model_dir, device=cfg.device)
    return None


def _load_inputs(cfg: EvalConfig) -> tuple[list[str], list, list]:
    """(benchmark names, [(examples, skips)] per manifest, [(data, suite)] per benchmark suite)."""
    from xopd.data.manifest import read_manifest
    from xopd.eval.benchmarks import load_benchmark

    names = _bench_names(cfg.manifest)
    loaded = []
    for path in cfg.manifest:
        examples, skips = read_manifest(path, strict=cfg.strict, max_audio_seconds=None)
        if skips.total:
            print(f"[xopd eval] {path}: {skips.summary()}", file=sys.stderr)
        loaded.append((examples[: cfg.limit] if cfg.limit else examples, skips))
    suites = [(data, sub) for spec, data in zip(cfg.bench, cfg.data)
              for sub in load_benchmark(spec, data, cfg.limit, voicebench_src=cfg.voicebench_src)]  # fmt: skip
    return names, loaded, suites


class _Session:
    """The loaded models and the resumable response log of one ``run_eval``; runs and scores benchmarks."""

    def __init__(self, cfg: EvalConfig, student, teacher, speech: bool, judge) -> None:
        from xopd.eval.responses import ResponseStore

        self.cfg, self.student, self.teacher, self.speech, self.judge = cfg, student, teacher, speech, judge
        json_path = Path(cfg.output)
        self.store = ResponseStore(json_path.with_name(json_path.stem + ".responses.jsonl"), resume=cfg.resume)
        self.ids = {"student": str(cfg.student), "teacher": str(cfg.teacher)}

    def answer(self, bench: str, run: str, model, rows, view: str, prompt_fn=None) -> list[str]:
        from xopd.eval.responses import generate_logged

        cfg = self.cfg
        return generate_logged(
            model, rows, view, self.store, benchmark=bench, run=run, model_id=self.ids[run.split("_")[0]],
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=not cfg.no_progress,
            prompt_fn=prompt_fn,
        )  # fmt: skip

    def manifest(self, name: str, path: str, examples, skips) -> dict[str, dict[str, Any]]:
        """A manifest's benchmark parts (by task), each run on the views its rows allow, scored."""
        from xopd.eval.report import benchmark_parts, score_run

        out: dict[str, dict[str, Any]] = {}
        for bench, (metric, idx) in benchmark_parts(name, examples).items():
            rows = [examples[i] for i in idx]
            runs: dict[str, Any] = {}
            views = ("S", "T") if all(r.audio for r in rows) else ("T",)
            views = ("S",) if metric == "audio_only" else views
            for run, model, view in _plan(self.speech, views, self.student, self.teacher if metric != "wer" else None):
                resp = self.answer(bench, run, model, rows, view)
                runs[run] = score_run(rows, resp, "wer" if metric == "wer" else "accuracy", self.judge,
                                      self.cfg.scorer)
            out[bench] = {
                "manifest": str(path), "metric": metric, "n": len(rows), "runs": runs,
                "skipped_rows": skips.counts if skips.total else {},
            }  # fmt: skip
        return out

    def suite(self, data: str, sub, ctx) -> dict[str, Any]:
        """One benchmark suite's entry: each planned (model, view) run, scored by the suite's scorer."""
        from xopd.eval.benchmarks import bench_prompt

        entry: dict[str, Any] = {
            "benchmark": sub.benchmark, "data": str(data), "source": sub.source, "metric": sub.metric,
            "unit": sub.unit, "scorer": sub.scorer, "views": list(sub.views), "n": len(sub.examples), "runs": {},
            "notes": list(sub.notes),
        }  # fmt: skip
        if sub.rules:
            entry["rules"] = sub.rules
        plan = _plan(self.speech, sub.views, self.student, self.teacher)
        if sub.skip or not plan:
            entry["skipped"] = sub.skip or "S view only and the student is a text model"
            print(f"[xopd eval] {sub.name}: skipped ({entry['skipped']})", file=sys.stderr)
            return entry
        for run, model, view in plan:
            resp = self.answer(sub.name, run, model, sub.examples, view, bench_prompt)
            entry["runs"][run] = sub.score(sub.examples, resp, ctx)
            if entry["runs"][run].get("skipped"):
                print(f"[xopd eval] {sub.name} {run}: not scored ({entry['runs'][run]['skipped']})", file=sys.stderr)
        return entry


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Generate, score and write the report (``cfg.output`` and the .md beside it); returns the report."""
    from xopd.eval.benchmarks import ScoreContext
    from xopd.eval.benchmarks.judging import describe_judge
    from xopd.eval.benchmarks.voicebench_official import resolve_src
    from xopd.eval.judge import Judge
    from xopd.eval.report import build_report, write_report
    from xopd.models import load_student, load_teacher
    from xopd.models.text_lm import TextLM

    cfg.validate()
    judge = _make_judge(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    names, loaded, suites = _load_inputs(cfg)
    t0 = time.perf_counter()
    student = load_student(cfg.student, device=cfg.device)
    speech = not isinstance(student, TextLM)
    window = student.audio_window_seconds() if speech else None
    if speech:
        for (examples, _), path in zip(loaded, cfg.manifest):
            _check_lengths(examples, path, window)
        for data, sub in suites:
            _check_lengths([e for e in sub.examples if e.audio], data, window)
    teacher = load_teacher(cfg.teacher, device=cfg.device) if cfg.teacher else None
    session = _Session(cfg, student, teacher, speech, judge)
    benchmarks: dict[str, dict[str, Any]] = {}
    for name, path, (examples, skips) in zip(names, cfg.manifest, loaded):
        benchmarks.update(session.manifest(name, path, examples, skips))
    ctx = ScoreContext(judge=judge, seed=cfg.seed)
    for data, sub in suites:
        benchmarks[sub.name] = session.suite(data, sub, ctx)
    session.store.close()
    vb_src = resolve_src(cfg.voicebench_src) if any(s.benchmark == "voicebench" for _, s in suites) else None
    settings = {
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "decoding": "greedy",
        "judge": {"url": judge.url, "model": judge.model} if isinstance(judge, Judge) else describe_judge(judge),
        "seconds": round(time.perf_counter() - t0, 1),
        "speech_student": speech,
        "audio_window_seconds": window,
        "scorer": cfg.scorer,
        "seed": cfg.seed,
        "limit": cfg.limit,
        "voicebench_src": str(vb_src) if vb_src else None,
        "resumed_responses": session.store.resumed if cfg.resume else 0,
    }
    report = build_report(benchmarks, student=str(cfg.student), teacher=cfg.teacher, settings=settings)
    json_path, md_path = write_report(report, cfg.output)
    print(md_path.read_text(), end="")
    print(f"[xopd eval] wrote {json_path}, {md_path} and {session.store.path}", file=sys.stderr)
    return report
