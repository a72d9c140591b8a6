"""``xopd demo`` (and later ``xopd reproduce``): the mini world's commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

DEMO_EPILOG = """examples:
  xopd demo                       # everything, cached under runs/demo (timings: docs/BENCHMARKS.md)
  xopd demo --fresh               # rebuild data, teacher, stage-1 student and X-OPD from nothing
  xopd demo --quick --output_dir /tmp/demo   # seconds; checks the pipeline, numbers meaningless
  xopd demo --xopd_steps 300 --xopd_lr 1e-4  # any DemoConfig key can be overridden
"""


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import build, overrides_from_namespace, parse_overrides
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.pipeline import run_demo

    values = {**overrides_from_namespace(args, DemoConfig), **parse_overrides(rest)}
    cfg = build(DemoConfig, values, source="command line")
    run_demo(cfg)
    return 0


REPRODUCE_EPILOG = """examples:
  xopd reproduce                    # all rows x 3 seeds, reusing runs/demo's data/teacher/stage-1 student
                                    # (timings after `xopd demo`: docs/BENCHMARKS.md)
  xopd reproduce --quick --output_dir /tmp/rep --world_dir /tmp/rep-world   # seconds; smoke test
  xopd reproduce --rows xopd_l05,gkd --seeds 0 --steps 100
"""


def cmd_reproduce(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import build, overrides_from_namespace, parse_overrides
    from xopd.lab.world.reproduce import ReproduceConfig, run_reproduce

    values = {**overrides_from_namespace(args, ReproduceConfig), **parse_overrides(rest)}
    run_reproduce(build(ReproduceConfig, values, source="command line"))
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    from xopd.config import add_help_for
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.reproduce import ReproduceConfig

    p = sub.add_parser("reproduce", help="baselines vs X-OPD from one stage-1 student (paper Tables 1-3)",
                       description="Run sft, offline_kd, gkd, grpo and X-OPD (lambda 0, 0.5, 1) from the same "
                       "stage-1 student with the same data and budget, over seeds, with a learning-rate sweep; "
                       "write runs/reproduce/report.{md,json} and plots.",
                       epilog=REPRODUCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_help_for(p, ReproduceConfig)
    handlers["reproduce"] = cmd_reproduce

    p = sub.add_parser(
        "demo",
        help="the embedded default: mini world, modality gap, X-OPD, Table 1",
        description="Build the mini world from nothing (espeak-ng speech, a text teacher, a "
        "speech student), run X-OPD and print the paper's Table 1 in miniature. Stages are "
        "cached under --output_dir; a re-run redoes only what changed.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_help_for(p, DemoConfig)
    handlers["demo"] = cmd_demo
