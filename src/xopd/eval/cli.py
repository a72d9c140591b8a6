"""``xopd eval``: the paper's S/T evaluation of a student (and its text teacher) on manifests."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xopd.errors import ConfigError, DataError
from xopd.eval.judge import SCORERS

EPILOG = """examples:
  xopd eval --student runs/x/checkpoint-100/model --teacher models/teacher \\
      --manifest data/reasoning/manifest.jsonl --manifest data/instruct/manifest.jsonl --output eval/report.json
  xopd eval --student models/student --manifest data/asr.jsonl --output eval/asr.json   # no teacher
  xopd eval --student S --teacher T --manifest open.jsonl --output r.json \\
      --judge-url http://localhost:8000/v1 --judge-model my-judge      # rows with a rubric / task open
  xopd eval --student S --teacher T --output vb.json \\
      --bench voicebench:mmsu,openbookqa,bbh,ifeval,advbench --data ~/data/voicebench --limit 50
  xopd eval --student S --teacher T --output paper.json --judge-url http://localhost:8000/v1 \\
      --judge-model gpt-4o-mini --bench voicebench --data ~/data/voicebench --voicebench-src ~/src/VoiceBench \\
      --bench big_bench_audio --data ~/data/big_bench_audio --bench mmar --data ~/data/MMAR \\
      --bench audio_multichallenge --data ~/data/audiomc --resume
  xopd eval --student S --output r.json --bench voicebench:sd-qa --data ~/data/voicebench \\
      --judge-model-dir models/judge                                 # a local HF causal LM as judge

Writes report.json (per-benchmark S/T scores, drops, avg_drop_S, avg_drop_T in percent), report.md
(the S/T table, one table per benchmark suite, the scorers) and report.responses.jsonl (every
response, written as it is generated; --resume reuses it). Base of the Avg. Drop is the teacher on
text; without --teacher it is the student on text (the report says so).
Benchmarks (--bench NAME[:subset,...], each with its own --data PATH): voicebench, big_bench_audio,
mmar, audio_multichallenge, read from local copies in their published layouts (docs/BENCHMARKS.md).
VoiceBench is scored with its official rule tables read from your checkout of its code
(--voicebench-src or $XOPD_VOICEBENCH_SRC), else with xopd's own approximate rules; the report
names the rule set per subset.
Manifest rows: id, audio, text, task, answer; scored by the row's "scorer" field, else --scorer
(auto: numbers by the last number in the reply, letters of rows with "choices" by choice, else
exact), task "asr" (WER), or a "rubric" field / task "open" (the judge).
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
        if ex.audio is None or ex.audio_bytes is not None:
            continue
        info = sf.info(ex.audio)
        seconds = info.frames / info.samplerate
        if seconds > window + 1e-6:
            raise DataError(
                f"{manifest}: row {ex.id!r} has {seconds:.1f} s of audio but the student's encoder window is "
                f"{window:.1f} s; trim the audio or drop the row (xopd synth --max-seconds {window:g})"
            )


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--max_new_tokens and --batch_size must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    if not args.manifest and not args.bench:
        raise ConfigError("nothing to evaluate: give --manifest FILE and/or --bench NAME --data PATH")
    if len(args.data) != len(args.bench):
        raise ConfigError(
            f"{len(args.bench)} --bench but {len(args.data)} --data: give one --data PATH per --bench, in the same order"
        )
    if bool(args.judge_url) != bool(args.judge_model):
        raise ConfigError("--judge-url and --judge-model go together: give both or neither")
    if args.judge_url and args.judge_model_dir:
        raise ConfigError("give either --judge-url/--judge-model or --judge-model-dir, not both")


def _plan(speech: bool, views: tuple[str, ...], student, teacher) -> list[tuple[str, Any, str]]:
    plan = [("student_S", student, "S")] if speech and "S" in views else []
    if "T" in views:
        plan.append(("student_T", student, "T"))
        if teacher is not None:
            plan.append(("teacher_T", teacher, "T"))
    return plan


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from xopd.data.manifest import read_manifest
    from xopd.eval.benchmarks import ScoreContext, bench_prompt, load_benchmark
    from xopd.eval.benchmarks.judging import LocalJudge, describe_judge
    from xopd.eval.benchmarks.voicebench_official import resolve_src
    from xopd.eval.judge import Judge
    from xopd.eval.report import benchmark_parts, build_report, score_run, write_report
    from xopd.eval.responses import ResponseStore, generate_logged
    from xopd.models import load_student, load_teacher
    from xopd.models.text_lm import TextLM

    _check_args(args)
    judge = None
    if args.judge_url:
        judge = Judge(args.judge_url, args.judge_model)
    elif args.judge_model_dir:
        judge = LocalJudge(args.judge_model_dir, device=args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    names = _bench_names(args.manifest)
    loaded = []
    for path in args.manifest:
        examples, skips = read_manifest(path, strict=args.strict, max_audio_seconds=None)
        if skips.total:
            print(f"[xopd eval] {path}: {skips.summary()}", file=sys.stderr)
        loaded.append((examples[: args.limit] if args.limit else examples, skips))
    suites = [(data, sub) for spec, data in zip(args.bench, args.data)
              for sub in load_benchmark(spec, data, args.limit, voicebench_src=args.voicebench_src)]  # fmt: skip

    t0 = time.perf_counter()
    student = load_student(args.student, device=args.device)
    speech = not isinstance(student, TextLM)
    window = audio_window_seconds(student) if speech else None
    if speech:
        for (examples, _), path in zip(loaded, args.manifest):
            _check_lengths(examples, path, window)
        for data, sub in suites:
            _check_lengths([e for e in sub.examples if e.audio], data, window)
    teacher = load_teacher(args.teacher, device=args.device) if args.teacher else None
    json_path = Path(args.output)
    store = ResponseStore(json_path.with_name(json_path.stem + ".responses.jsonl"), resume=args.resume)
    ids = {"student": str(args.student), "teacher": str(args.teacher)}

    def answer(bench: str, run: str, model, rows, view: str, prompt_fn=None) -> list[str]:
        return generate_logged(
            model, rows, view, store, benchmark=bench, run=run, model_id=ids[run.split("_")[0]],
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.no_progress,
            prompt_fn=prompt_fn,
        )  # fmt: skip

    benchmarks: dict[str, dict[str, Any]] = {}
    for name, path, (examples, skips) in zip(names, args.manifest, loaded):
        parts = benchmark_parts(name, examples)
        for bench, (metric, idx) in parts.items():
            rows = [examples[i] for i in idx]
            runs: dict[str, Any] = {}
            views = ("S", "T") if all(r.audio for r in rows) else ("T",)
            views = ("S",) if metric == "audio_only" else views
            for run, model, view in _plan(speech, views, student, teacher if metric != "wer" else None):
                resp = answer(bench, run, model, rows, view)
                runs[run] = score_run(rows, resp, "wer" if metric == "wer" else "accuracy", judge, args.scorer)
            benchmarks[bench] = {
                "manifest": str(path), "metric": metric, "n": len(rows), "runs": runs,
                "skipped_rows": skips.counts if skips.total else {},
            }  # fmt: skip
    ctx = ScoreContext(judge=judge, seed=args.seed)
    for data, sub in suites:
        entry: dict[str, Any] = {
            "benchmark": sub.benchmark, "data": str(data), "source": sub.source, "metric": sub.metric,
            "unit": sub.unit, "scorer": sub.scorer, "views": list(sub.views), "n": len(sub.examples), "runs": {},
            "notes": list(sub.notes),
        }  # fmt: skip
        if sub.rules:
            entry["rules"] = sub.rules
        benchmarks[sub.name] = entry
        plan = _plan(speech, sub.views, student, teacher)
        if sub.skip or not plan:
            entry["skipped"] = sub.skip or "S view only and the student is a text model"
            print(f"[xopd eval] {sub.name}: skipped ({entry['skipped']})", file=sys.stderr)
            continue
        for run, model, view in plan:
            resp = answer(sub.name, run, model, sub.examples, view, bench_prompt)
            entry["runs"][run] = sub.score(sub.examples, resp, ctx)
            if entry["runs"][run].get("skipped"):
                print(f"[xopd eval] {sub.name} {run}: not scored ({entry['runs'][run]['skipped']})", file=sys.stderr)
    store.close()
    vb_src = resolve_src(args.voicebench_src) if any(s.benchmark == "voicebench" for _, s in suites) else None
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "decoding": "greedy",
        "judge": {"url": judge.url, "model": judge.model} if isinstance(judge, Judge) else describe_judge(judge),
        "seconds": round(time.perf_counter() - t0, 1),
        "speech_student": speech,
        "audio_window_seconds": window,
        "scorer": args.scorer,
        "seed": args.seed,
        "limit": args.limit,
        "voicebench_src": str(vb_src) if vb_src else None,
        "resumed_responses": store.resumed if args.resume else 0,
    }
    report = build_report(benchmarks, student=str(args.student), teacher=args.teacher, settings=settings)
    json_path, md_path = write_report(report, args.output)
    print(md_path.read_text(), end="")
    print(f"[xopd eval] wrote {json_path}, {md_path} and {store.path}", file=sys.stderr)
    return report


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    run_eval(args)
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser(
        "eval",
        help="S/T scores per benchmark and Avg. Drop (JSON + Markdown)",
        description="Run the student on speech (S) and text (T) and the teacher on text for every "
        "manifest and benchmark (VoiceBench, BIG Bench Audio, MMAR, Audio MultiChallenge from local copies), "
        "score the answers as each benchmark's official code does and write the paper's S/T table with Avg. Drop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--student", required=True, help="student directory (SpeechLLM, Qwen2-Audio, Omni thinker, LM)"
    )
    p.add_argument("--teacher", default=None, help="text teacher directory (base of the Avg. Drop)")
    p.add_argument(
        "--manifest", action="append", default=[], help="JSONL manifest; repeat for several benchmarks"
    )
    p.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="NAME[:SUBSET,...]",
        help="a benchmark from a local copy: voicebench, big_bench_audio, mmar, audio_multichallenge; "
        "e.g. voicebench:sd-qa,mmsu (repeatable; each needs its own --data)",
    )
    p.add_argument(
        "--data", action="append", default=[], metavar="PATH", help="the local copy of the matching --bench"
    )
    p.add_argument("--limit", type=int, default=None, help="first N items of every benchmark / subset / split")
    p.add_argument(
        "--voicebench-src",
        dest="voicebench_src",
        default=None,
        metavar="DIR",
        help="your checkout of VoiceBench's code (github.com/MatthewCYM/VoiceBench): score VoiceBench with its "
        "official phrase tables and judge prompts, read from DIR (default: $XOPD_VOICEBENCH_SRC; without "
        "either, xopd's own approximate rules; the report names the rule set)",
    )
    p.add_argument(
        "--scorer",
        default="auto",
        choices=SCORERS,
        help="manifest rows without a 'scorer' field: auto (default), exact, last_number, contains, choice, "
        "judge, world",
    )
    p.add_argument("--resume", action="store_true", help="reuse the responses already in OUTPUT.responses.jsonl")
    p.add_argument("--seed", type=int, default=0, help="seed of the official scorers' random fallbacks (default 0)")
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
    p.add_argument(
        "--judge-model-dir",
        dest="judge_model_dir",
        default=None,
        help="a local Hugging Face causal-LM directory as judge (greedy, one sample) instead of --judge-url",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--strict", action="store_true", help="fail on the first bad manifest row instead of skipping it"
    )
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    handlers["eval"] = cmd_eval
