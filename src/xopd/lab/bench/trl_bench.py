"""TRL side of ``xopd bench --vs-trl``: ``DistillationTrainer`` and ``trl.experimental.gkd.GKDTrainer``
on the same world (weights, tokenizer, chat template, prompts) as the xopd step.

Fairness settings (both trainers): fully on-policy (GKD ``lmbda=1``), reverse KL (``beta=1``),
temperature 1, 48 new tokens, 16 prompts per optimizer step (one device batch, no accumulation),
fp32 (``bf16=False``: this CPU has no fast bf16) and gradient checkpointing OFF (TRL's default is on:
it recomputes activations and makes GKD generate without a KV cache). Throughput counts every
completion as the full 48 tokens (untrained students rarely stop early), which can only flatter TRL.

TRL is an optional dependency (``pip install 'xopd[bench]'``); :func:`trl_available` tells callers.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from xopd.lab.bench.models import BenchWorld


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def _common_args(out_dir: str, steps: int, batch: int, seed: int) -> dict[str, Any]:
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=seed,
        max_grad_norm=1.0,
    )


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (generation + teacher + update + optimizer)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)

    return StepTimer()


def run_trl(
    kind: str,
    world: BenchWorld,
    steps: int,
    max_new_tokens: int = 48,
    warmup: int = 1,
    seed: int = 0,
    work_dir: str = "runs/bench/trl",
    repeat: int = 1,
) -> dict[str, float]:
    """Train ``warmup + steps`` steps with TRL trainer ``kind`` ("distillation" or "gkd"); return timings.

    ``repeat``: every prompt appears this many times in a batch (n samples per prompt: what TRL does
    for n samples, each row computing its prompt again).

    Returns ``{"step_s": median steady step seconds, "tok_s": completion tokens/s, "steps": n}``.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.student)
    student = AutoModelForCausalLM.from_pretrained(world.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(world.teacher, dtype=torch.float32)
    prompts = [p for p in world.prompts for _ in range(repeat)]
    batch = len(prompts)
    total = warmup + steps
    # enough rows that every step sees a full batch of the same prompts
    out_dir = os.path.join(work_dir, f"{kind}-{world.size}")
    common = _common_args(out_dir, total, batch, seed)
    timer = _step_timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "distillation":
            from trl import DistillationConfig, DistillationTrainer

            rows = [{"prompt": [{"role": "user", "content": p}]} for p in prompts] * total
            args = DistillationConfig(
                **common,
                beta=1.0,
                temperature=1.0,
                max_completion_length=max_new_tokens,
                top_k=0,
                top_p=1.0,
                shuffle_dataset=False,
                disable_dropout=True,
            )
            trainer_cls = DistillationTrainer
        elif kind == "gkd":
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            rows = [
                {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
                for p in prompts
            ] * total
            args = GKDConfig(
                **common,
                lmbda=1.0,
                beta=1.0,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                disable_dropout=True,
            )
            trainer_cls = GKDTrainer
        else:
            raise ValueError(f"unknown TRL trainer {kind!r}")
        trainer = trainer_cls(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, callbacks=[timer])
        with contextlib.redirect_stdout(sys.stderr):  # TRL prints its summary dict to stdout
            trainer.train()
    steady = timer.times[warmup:] or timer.times
    step_s = statistics.median(steady)
    cpu_s = statistics.median(timer.cpu[warmup:] or timer.cpu)
    return {"step_s": step_s, "tok_s": batch * max_new_tokens / step_s, "cpu_s": cpu_s, "steps": len(steady)}
