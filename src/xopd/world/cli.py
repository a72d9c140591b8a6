"""``xopd demo`` (and later ``xopd reproduce``): the mini world's commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

DEMO_EPILOG = """examples:
  xopd demo                       # everything, cached under runs/demo (about 20-25 min on 2 cores)
  xopd demo --fresh               # rebuild data, teacher, stage-1 student and X-OPD from nothing
  xopd demo --quick --output_dir /tmp/demo   # seconds; checks the pipeline, numbers meaningless
  xopd demo --xopd_steps 300 --xopd_lr 1e-4  # any DemoConfig key can be overridden
"""


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import build, overrides_from_namespace, parse_overrides
    from xopd.world.pipeline import DemoConfig, run_demo

    values = {**overrides_from_namespace(args, DemoConfig), **parse_overrides(rest)}
    cfg = build(DemoConfig, values, source="command line")
    run_demo(cfg)
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    from xopd.config import add_help_for
    from xopd.world.pipeline import DemoConfig

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
