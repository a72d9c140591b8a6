"""Peak RSS of one step type, measured in a fresh process (``ru_maxrss`` only ever grows, so each
step type needs its own process): ``python -m xopd.lab.bench.rss KIND ROOT [THREADS]`` prints JSON.

Kinds: ``imports`` (python + torch + transformers + xopd, the floor), ``xopd-text-S``/``-M`` (the
benchmark's text-only step), ``xopd-speech`` (a full X-OPD step: tiny SpeechLLM student, S and T
views, n=4), ``sft`` (teacher-forced SFT step on the tiny world), ``demo-quick``/``demo-full``
(the whole ``xopd demo`` pipeline).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

KINDS = ("imports", "xopd-text-S", "xopd-text-M", "xopd-speech", "sft")


def probe(kind: str, root: Path, threads: int) -> dict:
    import torch

    from xopd.lab.bench.system import peak_rss_mb
    from xopd.lab.train import run_train as train

    torch.set_num_threads(threads)
    if kind in ("demo-quick", "demo-full"):
        from xopd.lab.world.config import DemoConfig
        from xopd.lab.world.pipeline import run_demo

        cfg = DemoConfig(output_dir=str(root / kind), threads=threads, quick=kind == "demo-quick")
        cfg.validate()
        run_demo(cfg)
        return {"kind": kind, "peak_rss_mb": peak_rss_mb()}
    if kind == "imports":
        return {"kind": kind, "peak_rss_mb": peak_rss_mb()}
    if kind.startswith("xopd-text-"):
        from xopd.lab.bench.models import build_bench_world
        from xopd.lab.bench.xopd_bench import bench_config, bench_examples

        world = build_bench_world(kind[-1], root / "world")
        cfg = bench_config(world, root / "rss" / kind, 2, 48, threads)
        train(cfg, examples=bench_examples(world))
        return {"kind": kind, "peak_rss_mb": peak_rss_mb()}
    from xopd.data.manifest import read_manifest
    from xopd.lab.tiny import build_tiny_world
    from xopd.lab.train import LabTrainConfig

    tw = build_tiny_world(root / "tiny", n=8, seed=0)
    examples, _ = read_manifest(tw["manifest"])
    cfg = LabTrainConfig(
        student_path=tw["student"],
        teacher_path=tw["teacher"],
        manifest=tw["manifest"],
        output_dir=str(root / "rss" / kind),
        n_samples=4,
        max_new_tokens=32,
        batch_size=8,
        micro_batch_size=8,
        max_steps=2,
        save_every=10**9,
        eval_prompts=1,
        progress=False,
        report_to="jsonl",
        threads=threads,
    )
    if kind == "sft":
        cfg.algo = "sft"
        examples = [replace(e, reference=e.answer or e.text) for e in examples]
    elif kind != "xopd-speech":
        raise ValueError(f"unknown step type {kind!r}; choose from {', '.join(KINDS)}")
    train(cfg, examples=examples)
    return {"kind": kind, "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from xopd.utils.hf import quiet_hf

    quiet_hf()
    kind, root = argv[0], Path(argv[1])
    threads = int(argv[2]) if len(argv) > 2 else 1
    print(json.dumps(probe(kind, root, threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
