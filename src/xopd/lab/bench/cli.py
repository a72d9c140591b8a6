"""``xopd bench``: speed of an X-OPD step, side by side with TRL, FLOP/s vs the matmul peak, peak RSS.

Not a test: numbers depend on the machine and on what else runs on it. Each trainer runs
``warmup + steps`` optimizer steps; its time is the median steady step, best over ``rounds`` rounds
(rounds alternate the trainers, so slow phases of a shared machine hit all of them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path

from xopd.utils.io import atomic_write_text

EPILOG = """examples:
  xopd bench --vs-trl                       # S and M, xopd vs TRL; writes runs/bench/bench.json
  xopd bench --sizes M --steps 8 --rounds 3 # longer, steadier
  xopd bench --vs-trl --sizes X --steps 3 --rounds 1   # the X-OPD-shaped step: shared-prompt path vs not vs TRL
  xopd bench --quick                        # seconds: tiny model, checks the pipeline (numbers meaningless)
  xopd bench --quick --sizes XS,X           # the same smoke run with the X-OPD shape
TRL is optional: pip install 'xopd[bench]' (trl>=1.16); without it the TRL columns are empty.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="throughput vs TRL, FLOP/s vs matmul peak, peak RSS per step type",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--vs-trl",
        "--vs_trl",
        dest="vs_trl",
        action="store_true",
        help="also run TRL's DistillationTrainer and GKDTrainer (lmbda=1, beta=1) on the same world",
    )
    p.add_argument(
        "--sizes", default="S,M", help="comma list of model sizes: S (d128x4), M (d384x6), XS (tiny), "
        "X (M's model on an X-OPD-shaped step: 8 prompts of ~110 tokens, 20 new tokens, n=4; xopd with and "
        "without the shared-prompt path, TRL with prompts repeated n times)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per trainer (after --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps per trainer")
    p.add_argument("--rounds", type=int, default=2, help="repeat every trainer this often; keep the best")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads for every trainer (0: torch default)"
    )
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step (~29 tokens each)")
    p.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak RSS per step type in fresh processes (default: on unless --quick)",
    )
    p.add_argument(
        "--demo-rss",
        "--demo_rss",
        dest="demo_rss",
        choices=("none", "quick", "full"),
        default="none",
        help="also run `xopd demo` (quick or full) in a child process and record its peak RSS",
    )
    p.add_argument(
        "--work-dir", "--work_dir", dest="work_dir", default="runs/bench", help="scratch models and runs"
    )
    p.add_argument("--output", default=None, help="JSON report (default: WORK_DIR/bench.json)")
    p.add_argument("--quick", action="store_true", help="XS model, 4 prompts, 8 tokens, 1 round: a smoke run")
    return p


def cmd_bench(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from xopd.config import from_namespace
    from xopd.lab.bench.config import BenchConfig
    from xopd.lab.bench.report import run_bench

    cfg = from_namespace(BenchConfig, args)
    out = Path(cfg.output or os.path.join(cfg.work_dir, "bench.json"))
    report = run_bench(cfg)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"[xopd] wrote {out} ({_dt.datetime.now():%Y-%m-%d %H:%M})")
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    add_parser(sub)
    handlers["bench"] = cmd_bench
