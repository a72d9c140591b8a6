"""Subcommands other than ``train`` register themselves here (keeps cli.py small)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    """Add subcommand parsers and their handlers. Each module owns its own parser."""
    # data check | synth | eval | models prepare | demo, reproduce | bench | export | plan
    for module_name in ("xopd.data.cli", "xopd.data.synth_cli", "xopd.eval.cli", "xopd.models.cli",
                        "xopd.lab.world.cli", "xopd.lab.bench.cli", "xopd.training.export",
                        "xopd.training.plan"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue
            raise
        module.register(sub, handlers)
