"""``xopd eval``: the paper's S/T evaluation of a student (and its text teacher) on manifests."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xopd.errors import ConfigError, DataError

EPILOG = """examples:
  xopd eval --student runs/x/checkpoint-100/model --teacher models/teacher \\
      --manifest data/reasoning/manifest.jsonl --manifest data/instruct/manifest.jsonl --output eval/report.json
  xopd eval --student models/student --manifest data/asr.jsonl --output eval/asr.json   # no teacher
  xopd eval --student S --teacher T --manifest open.jsonl --output r.json \\
      --judge-url http://localhost:8000/v1 --judge-model my-judge      # rows with a rubric / task open

Writes report.json (per-benchmark S/T scores, drops, avg_drop_S, avg_drop_T in percent), report.md
(the S/T table) and report.responses.jsonl (every response, for inspection). Base of the Avg. Drop
is the teacher on text; without --teacher it is the student on text (the report says so).
Manifest rows: id, audio, text, task, answer (exact / answer extraction), task "asr" (WER), or
a "rubric" field / task "open" (judged over HTTP by any OpenAI-compatible endpoint).
"""


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


def audio_window_seconds(model) -> float | None:
    """Longest audio the student's encoder takes in one prompt, or None if unbounded/unknown."""
    enc = getattr(model, "encoder", None)
    feats = getattr(model, "feature_config", None)
    if enc is not None and hasattr(enc, "max_frames") and feats:
        return enc.max_frames * feats.get("hop_length", 160) / feats.get("sampling_rate", 16000)
    from xopd.models.qwen2_audio import Qwen2AudioStudent

    if isinstance(model, Qwen2AudioStudent):  # pads every clip to the processor's 30 s window
        fe = model.processor.feature_extractor
        return fe.n_samples / fe.sampling_rate
    return getattr(model, "max_audio_seconds", None)


def _check_lengths(examples, manifest: str, window: float | None) -> None:
    if window is None:
        return
    import soundfile as sf

    for ex in examples:
        if ex.audio is None:
            continue
        info = sf.info(ex.audio)
        seconds = info.frames / info.samplerate
        if seconds > window + 1e-6:
            raise DataError(
                f"{manifest}: row {ex.id!r} has {seconds:.1f} s of audio but the student's encoder window is "
                f"{window:.1f} s; trim the audio or drop the row (xopd synth --max-seconds {window:g})"
            )


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from xopd.data.manifest import read_manifest
    from xopd.eval.generation import generate
    from xopd.eval.judge import Judge
    from xopd.eval.report import benchmark_parts, build_report, score_run, write_report
    from xopd.models import load_student, load_teacher
    from xopd.models.text_lm import TextLM

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--max_new_tokens and --batch_size must be >= 1")
    if bool(args.judge_url) != bool(args.judge_model):
        raise ConfigError("--judge-url and --judge-model go together: give both or neither")
    judge = Judge(args.judge_url, args.judge_model) if args.judge_url else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    names = _bench_names(args.manifest)
    loaded = []
    for path in args.manifest:
        examples, skips = read_manifest(path, strict=args.strict, max_audio_seconds=None)
        if skips.total:
            print(f"[xopd eval] {path}: {skips.summary()}", file=sys.stderr)
        loaded.append((examples, skips))

    t0 = time.perf_counter()
    student = load_student(args.student, device=args.device)
    speech = not isinstance(student, TextLM)
    window = audio_window_seconds(student) if speech else None
    if speech:
        for (examples, _), path in zip(loaded, args.manifest):
            _check_lengths(examples, path, window)
    teacher = load_teacher(args.teacher, device=args.device) if args.teacher else None

    def answer(model, examples, view: str, desc: str) -> list[str]:
        return generate(
            model,
            examples,
            view,
            args.max_new_tokens,
            args.batch_size,
            progress=not args.no_progress,
            desc=desc,
        )

    benchmarks: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for name, path, (examples, skips) in zip(names, args.manifest, loaded):
        parts = benchmark_parts(name, examples)
        for bench, (metric, idx) in parts.items():
            rows = [examples[i] for i in idx]
            runs: dict[str, Any] = {}
            plan = [("student_S", student, "S")] if speech and all(r.audio for r in rows) else []
            if metric != "audio_only":
                plan.append(("student_T", student, "T"))
                if teacher is not None and metric != "wer":
                    plan.append(("teacher_T", teacher, "T"))
            for run, model, view in plan:
                resp = answer(model, rows, view, f"{bench} {run}")
                runs[run] = score_run(rows, resp, "wer" if metric == "wer" else "accuracy", judge)
                lines += [
                    json.dumps(
                        {"benchmark": bench, "run": run, "id": r.id, "response": x}, ensure_ascii=False
                    )
                    for r, x in zip(rows, resp)
                ]
            benchmarks[bench] = {
                "manifest": str(path), "metric": metric, "n": len(rows), "runs": runs,
                "skipped_rows": skips.counts if skips.total else {},
            }  # fmt: skip
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "decoding": "greedy",
        "judge": {"url": judge.url, "model": judge.model} if judge else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "speech_student": speech,
        "audio_window_seconds": window,
    }
    report = build_report(benchmarks, student=str(args.student), teacher=args.teacher, settings=settings)
    json_path, md_path = write_report(report, args.output)
    resp_path = json_path.with_name(json_path.stem + ".responses.jsonl")
    resp_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(md_path.read_text(), end="")
    print(f"[xopd eval] wrote {json_path}, {md_path} and {resp_path}", file=sys.stderr)
    return report


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    run_eval(args)
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser(
        "eval",
        help="S/T scores per benchmark and Avg. Drop (JSON + Markdown)",
        description="Run the student on speech (S) and text (T) and the teacher on text for every "
        "manifest, score the answers and write the paper's S/T table with Avg. Drop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--student", required=True, help="student directory (SpeechLLM, Qwen2-Audio, Omni thinker, LM)"
    )
    p.add_argument("--teacher", default=None, help="text teacher directory (base of the Avg. Drop)")
    p.add_argument(
        "--manifest", action="append", required=True, help="JSONL manifest; repeat for several benchmarks"
    )
    p.add_argument("--output", required=True, help="report JSON path (the .md table is written next to it)")
    p.add_argument(
        "--max_new_tokens",
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=64,
        help="longest answer (greedy decoding; default 64)",
    )
    p.add_argument(
        "--batch_size",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=16,
        help="prompts per generation batch (default 16)",
    )
    p.add_argument(
        "--judge-url",
        dest="judge_url",
        default=None,
        help="OpenAI-compatible endpoint for open-ended rows, e.g. http://localhost:8000/v1 "
        "(API key from $XOPD_JUDGE_API_KEY if set)",
    )
    p.add_argument("--judge-model", dest="judge_model", default=None, help="model name to send to the judge")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--strict", action="store_true", help="fail on the first bad manifest row instead of skipping it"
    )
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    handlers["eval"] = cmd_eval
