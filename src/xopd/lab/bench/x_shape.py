"""The X-OPD-shaped benchmark size ``X``: long prompts, short answers, n samples per prompt.

A spoken question occupies ~110 LM positions in the demo's X-OPD run while its answer is ~20 tokens,
and every prompt is sampled n = 4 times. Here the same shape runs on the M model (d384 x 6): 8 prompts
of ~110 chat-templated tokens, 20 new tokens, n = 4, one text view (TRL has no speech path, so the
prompt is text of the length a spoken one takes). Side by side, in one run:

* xopd with the shared-prompt path (each distinct prompt prefilled, scored by the teacher and
  trained once for its n samples);
* xopd with ``shared_prompt: false`` (every sample recomputes its prompt: xopd before the shared path,
  and what TRL and verl do);
* TRL's DistillationTrainer and GKDTrainer with every prompt repeated n times in the batch (how TRL
  gets n samples per prompt).

FLOPs per step are counted for the work the step must do (prompts once, every sample's tokens), so
``step_gflops`` / peak says how much of the machine the shared path turns into useful work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from xopd.lab.bench.models import SIZES, build_bench_world

if TYPE_CHECKING:
    from xopd.lab.bench.config import BenchConfig

#: ~125 chat-templated prompt tokens a prompt (the demo's spoken word problem takes ~110), 20 new tokens, n = 4
X_SHAPE = {"prompt_words": 100, "prompts": 8, "n": 4, "max_new_tokens": 20}


def run_x(args: BenchConfig, work: Path, threads: int, peak: float, use_trl: bool, log) -> dict[str, Any]:
    """Every X measurement; returns ``{"vs_trl": ..., "shared_prompt": ..., "flops": ...}``."""
    from xopd.algos.base import make_prompts
    from xopd.lab.bench.runs import best_run, cpu_ratio, linear_kernel_entry, linear_kernel_switches
    from xopd.lab.bench.trl_bench import run_trl
    from xopd.lab.bench.xopd_bench import bench_examples, run_xopd, step_flops
    from xopd.models import load_student, load_teacher

    shape = dict(X_SHAPE)
    spec = SIZES["XS"] if args.quick else SIZES["X"]
    if args.quick:  # a smoke run: tiny model, short prompts
        shape.update(prompt_words=20, prompts=2, n=2, max_new_tokens=4)
    n, new = shape["n"], shape["max_new_tokens"]
    world = build_bench_world("X", work / "world", n_prompts=shape["prompts"], words=shape["prompt_words"],
                              spec=spec)
    runs: dict[str, list[dict[str, float]]] = {"shared": [], "unshared": [], "distillation": [], "gkd": []}
    variants = [("shared", True, "auto"), ("unshared", False, "auto")]
    ab_kernel = linear_kernel_switches(world)
    if ab_kernel:  # the default step again with torch's (MKL) linears
        variants.append(("torch_linear", True, "torch"))
        runs["torch_linear"] = []
    for r in range(args.rounds):
        for name, shared, kernel in variants:
            log(f"X round {r + 1}/{args.rounds}: xopd ({name})")
            runs[name].append(run_xopd(world, args.steps, args.warmup, new, threads, work_dir=work / f"xopd-{name}",
                                       n_samples=n, shared_prompt=shared, linear_kernel=kernel))
        if use_trl:
            for kind in ("distillation", "gkd"):
                log(f"X round {r + 1}/{args.rounds}: trl {kind} (prompts repeated {n}x)")
                runs[kind].append(run_trl(kind, world, args.steps, new, args.warmup, work_dir=str(work / "trl-x"),
                                          repeat=n))
    best = {k: best_run(v) for k, v in runs.items()}
    x, slow = best["shared"], best["unshared"]
    trl = {k: best[k] for k in ("distillation", "gkd") if best[k]}
    faster = max(trl, key=lambda k: trl[k]["tok_s"]) if trl else None

    student = load_student(world.student)
    prompt_tokens = int(student.embed_prompts(make_prompts(bench_examples(world), "T")).attention_mask.sum())
    gen = int(round(x["gen_tokens"]))
    flops = step_flops(student.causal_lm(), load_teacher(world.teacher).causal_lm(), prompt_tokens, gen)
    gflops = flops["step_gflop"] / x["step_s"]
    vs_trl = {
        "xopd_tok_s": x["tok_s"], "xopd_step_s": x["step_s"], "xopd_cpu_s": x.get("cpu_s"),
        "trl_tok_s": trl[faster]["tok_s"] if faster else None,
        "trl_step_s": trl[faster]["step_s"] if faster else None,
        "trl_cpu_s": trl[faster].get("cpu_s") if faster else None,
        "ratio": x["tok_s"] / trl[faster]["tok_s"] if faster else None,
        "ratio_cpu": cpu_ratio(x, trl[faster]) if faster else None,
        "faster_trl": faster, "trl": trl, "all_rounds": runs, "step_gflop": flops["step_gflop"],
    }  # fmt: skip
    return {
        "shape": {**shape, "model": spec, "prompt_tokens_per_step": prompt_tokens},
        "vs_trl": vs_trl,
        "shared_prompt": {
            "speedup": x["tok_s"] / slow["tok_s"],
            "shared_tok_s": x["tok_s"], "unshared_tok_s": slow["tok_s"],
            "shared_step_s": x["step_s"], "unshared_step_s": slow["step_s"],
        },  # fmt: skip
        "linear_kernel": linear_kernel_entry(x, best["torch_linear"]) if ab_kernel else None,
        "step_gflops": gflops,
        "step_peak_fraction": gflops / peak,
    }
