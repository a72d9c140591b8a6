"""``xopd eval``: the paper's S/T evaluation of a student (and its text teacher) on manifests."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from xopd.eval.config import EvalConfig
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


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.eval.run import run_eval

    run_eval(EvalConfig.from_namespace(args))
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
