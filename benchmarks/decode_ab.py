"""Rollout (prefill + 48 decode steps, 16 prompts) before/after the decode work, same process.

    .venv/bin/python benchmarks/decode_ab.py [--sizes S,M] [--threads 1] [--reps 5]

"before" = HF forward with a dynamic KV cache (torch.cat per step, masks rebuilt per step: what
``sample`` did originally); "static" = preallocated cache + ready-made 4-D masks (the core's path); "dense" = static
cache + the fused Llama decode step with dense pre-transposed weights (``XOPD_DECODE_ONEDNN=0``);
"fast" = the same step as the default runs it (oneDNN-reordered weights on CPU for models of >= 8 M
parameters, else the same as "dense"). Prints median wall and CPU seconds per rollout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from xopd import cpu
from xopd.algos.base import make_prompts
from xopd.generation import sample
from xopd.lab.bench.models import build_bench_world
from xopd.lab.bench.xopd_bench import bench_examples
from xopd.models import load_student

#: name -> (sample() keywords, CPU kit's fast_decode or None for the core alone)
VARIANTS = {
    "before": (dict(static_cache=False), None),
    "static": ({}, None),
    "dense": ({}, True),
    "fast": ({}, True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="S,M")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--work-dir", default="runs/bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes.split(","):
        world = build_bench_world(size, f"{args.work_dir}/world")
        student = load_student(world.student).eval()
        batch = student.embed_prompts(make_prompts(bench_examples(world), "T"))
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
        for _ in range(args.reps):  # interleaved, so machine load hits every variant alike
            for name, (kw, fast) in VARIANTS.items():
                os.environ["XOPD_DECODE_ONEDNN"] = "0" if name == "dense" else "1"
                kit = cpu.activated(cpu.CPUConfig(fast_decode=fast)) if fast else contextlib.nullcontext()
                with kit:
                    t, c = time.perf_counter(), time.process_time()
                    sample(student, batch, 1, 48, row_seeds=list(range(len(world.prompts))), **kw)
                    res[name].append((time.perf_counter() - t, time.process_time() - c))
        base = statistics.median(c_s for _, c_s in res["before"])
        for name, v in res.items():
            wall, cpu_s = statistics.median(w for w, _ in v), statistics.median(c_s for _, c_s in v)
            print(f"{size} {name:<7} wall {wall:.3f}s  cpu {cpu_s:.3f}s  speed-up (cpu) {base / cpu_s:.2f}x")


if __name__ == "__main__":
    main()
