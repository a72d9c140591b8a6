"""xopd side of the benchmark: the real ``xopd train`` loop on the bench world, plus a per-phase
breakdown and the FLOP accounting of one step.

The headline numbers come from ``train()`` itself (its ``step_seconds`` metric): what a user gets,
including every per-step cost of the loop. The breakdown times the same pieces one by one
(rollout, teacher scoring, student forward+backward, optimizer) to show what bounds a step.

FLOP accounting (the issue's convention): ``P`` = parameters that do matmuls (everything but the
input-embedding table); 2P per prompt or generated token in the rollout, 2P per token the teacher
scores, 6P per token the student trains on (forward + backward). Attention's O(L^2) term is left
out (it is < 5 % at these lengths).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from xopd.data.manifest import Example
from xopd.lab.bench.models import BenchWorld


def bench_config(world: BenchWorld, out_dir: Path, steps: int, max_new_tokens: int, threads: int, **over):
    """The text-only on-policy distillation step TRL also runs: T view only (lam=1), 1 sample per
    prompt, k1 policy gradient (the paper's loss), all prompts in one micro-batch."""
    from xopd.lab.train import LabTrainConfig

    cfg = LabTrainConfig(
        student_path=str(world.student),
        teacher_path=str(world.teacher),
        manifest="(in memory)",
        output_dir=str(out_dir),
        algo="xopd",
        lam=1.0,
        n_samples=1,
        loss="pg",
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        lr=1e-5,
        batch_size=len(world.prompts),
        micro_batch_size=len(world.prompts),
        max_steps=steps,
        save_every=10**9,
        keep_last=1,
        eval_prompts=1,
        progress=False,
        report_to="jsonl",
        threads=threads,
        seed=0,
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def bench_examples(world: BenchWorld) -> list[Example]:
    return [Example(id=f"bench-{i:02d}", text=p) for i, p in enumerate(world.prompts)]


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but the input-embedding table (a lookup)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def run_xopd(
    world: BenchWorld,
    steps: int,
    warmup: int = 1,
    max_new_tokens: int = 48,
    threads: int = 0,
    work_dir: str | Path = "runs/bench/xopd",
    **over,
) -> dict[str, float]:
    """Train ``warmup + steps`` steps with ``xopd train``; median steady-state step time and tokens/s."""
    from xopd.lab.train import run_train as train
    from xopd.training.logging import read_metrics

    out = Path(work_dir) / world.size
    cfg = bench_config(world, out, warmup + steps, max_new_tokens, threads, **over)
    train(cfg, examples=bench_examples(world))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "step_seconds" in r][warmup:]
    step_s = statistics.median(r["step_seconds"] for r in rows)
    gen = statistics.median(r["tok_s"] * r["step_seconds"] for r in rows)  # generated tokens per step
    cpu_s = statistics.median(r.get("step_cpu_seconds", float("nan")) for r in rows)
    return {"step_s": step_s, "tok_s": gen / step_s, "cpu_s": cpu_s, "gen_tokens": gen, "steps": len(rows)}


def phase_breakdown(world: BenchWorld, steps: int = 2, max_new_tokens: int = 48, **over) -> dict[str, float]:
    """Seconds per phase of one step (median over ``steps`` after one warm-up) and the step's GFLOP."""
    from xopd import cpu
    from xopd.algos.base import make_prompts
    from xopd.cpu.onednn_linear import select_linear_kernel
    from xopd.generation import derive_seed, response_logits, response_logprobs, sample
    from xopd.losses import advantage, gather_logprobs, policy_gradient_loss
    from xopd.models import load_student, load_teacher

    cfg = bench_config(world, Path("."), steps, max_new_tokens, 0, **over)
    cpu.install(cfg)  # the decode path train() would take (fast_decode, decode threads)
    student = load_student(world.student).eval()
    teacher = load_teacher(world.teacher)
    select_linear_kernel(cfg.linear_kernel, torch.device("cpu"), torch.float32, student, teacher)  # as train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr)
    prompts = make_prompts(bench_examples(world), "T")
    times: dict[str, list[float]] = {k: [] for k in ("rollout", "teacher", "student_fwd_bwd", "optimizer")}
    tokens = {}
    for s in range(steps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            batch = student.embed_prompts(prompts)
            ro = sample(
                student,
                batch,
                1,
                max_new_tokens,
                temperature=1.0,
                row_seeds=[derive_seed(0, s, i) for i in range(len(prompts))],
            )
        t1 = time.perf_counter()
        with torch.no_grad():
            t_lp = response_logprobs(teacher, teacher.embed_prompts(prompts), ro.ids, ro.mask)
        t2 = time.perf_counter()
        logits = response_logits(student, student.embed_prompts(prompts), ro.ids, ro.mask)
        s_lp = gather_logprobs(logits, ro.ids)
        loss, _ = policy_gradient_loss(s_lp, ro.logprobs, advantage(t_lp, ro.logprobs, ro.mask), ro.mask)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if s:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v)
        tokens = {"prompt": int(batch.attention_mask.sum()), "generated": ro.num_tokens}
    out = {k: statistics.median(v) for k, v in times.items()}
    out["total"] = sum(out.values())
    out.update(step_flops(student.causal_lm(), teacher.causal_lm(), tokens["prompt"], tokens["generated"]))
    return out


def step_flops(student_lm, teacher_lm, prompt_tokens: int, generated: int) -> dict[str, float]:
    """GFLOP of one step by phase (see module docstring) for the given token counts."""
    p_s, p_t = matmul_params(student_lm), matmul_params(teacher_lm)
    seq = prompt_tokens + generated
    g = {"rollout_gflop": 2 * p_s * seq, "teacher_gflop": 2 * p_t * seq, "update_gflop": 6 * p_s * seq}
    g = {k: v / 1e9 for k, v in g.items()}
    g["step_gflop"] = sum(g.values())
    g["prompt_tokens"], g["generated_tokens"] = prompt_tokens, generated
    return g
