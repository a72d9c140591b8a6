"""``xopd`` command line: one subcommand per stage.

User mistakes (``XopdError``) print one line and exit non-zero; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from xopd.errors import XopdError
from xopd.utils.hf import quiet_hf

TRAIN_EPILOG = """examples:
  xopd train --config configs/tiny.yaml --output_dir runs/tiny
  xopd train --config configs/tiny.yaml --output_dir runs/tiny --resume
  xopd train --config my.yaml --lam 1.0 --n_samples 8 --lr 2e-6
"""


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import load_config, overrides_from_namespace, parse_overrides
    from xopd.lab.train import LabTrainConfig, run_train

    overrides = {**overrides_from_namespace(args, LabTrainConfig), **parse_overrides(rest)}
    cfg = load_config(LabTrainConfig, args.config, overrides)
    out = run_train(cfg)
    print(f"[xopd] done: {out}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from xopd.config import add_help_for
    from xopd.lab.train import LabTrainConfig

    parser = argparse.ArgumentParser(
        prog="xopd",
        description="Cross-modal on-policy distillation (X-OPD) for speech LLMs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `xopd COMMAND --help` for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable] = {}

    p = sub.add_parser("train", help="train a student (X-OPD or a baseline) from a YAML config",
                       description="Train a speech-LLM student against a text teacher. Every key below can "
                       "be set in the YAML file or overridden as --key value.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with the keys below")
    add_help_for(p, LabTrainConfig)
    handlers["train"] = cmd_train

    from xopd import commands

    commands.register(sub, handlers)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    quiet_hf()
    argv = sys.argv[1:] if argv is None else argv
    parser, handlers = build_parser()
    args, rest = parser.parse_known_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if rest and args.command not in ("train", "demo", "reproduce"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from xopd import cpu

    try:
        # the CPU speed kit's decode backend for this command: it takes only CPU calls, a GPU run never meets it
        with cpu.activated():
            return int(handlers[args.command](args, rest) or 0)
    except XopdError as e:
        print(f"xopd {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except FloatingPointError as e:
        print(f"xopd {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xopd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xopd ... | head` closed our stdout: not a crash, exit like SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def exit_process(code: int) -> None:
    """Exit with ``code``; a worker of a multi-process launch (torchrun sets ``WORLD_SIZE``) skips the
    interpreter's finalisation.

    Why: after a finished 2-process gloo run whose group was destroyed, a rank sometimes aborts during
    finalisation ("terminate called without an active exception", SIGABRT; rare, seen in repeated loops
    of the two-process baseline tests: docs/BENCHMARKS.md, 'Gloo abort at exit'), and torchrun then
    reports the finished job as failed. Upstream describes the same abort (Gloo threads still holding
    objects while the interpreter tears down; pytorch/pytorch PR 179291, abandoned). By this point every
    checkpoint and log is written atomically and closed; stdout and stderr are flushed here."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    else:
        sys.exit(code)


def entry() -> None:
    """The ``xopd`` console script: :func:`main`, then :func:`exit_process`."""
    exit_process(main())


if __name__ == "__main__":
    entry()
