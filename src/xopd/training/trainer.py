"""The training loop shared by every algorithm.

One optimizer step = ``grad_accum`` micro-batches of ``micro_batch_size`` prompts, each turned into
a loss by the algorithm (rollouts included). Around it: which parameters train, AdamW + schedule,
NaN/inf guards, metrics, the eval hook, atomic checkpoints and exact resume. Plug-ins join through
:mod:`xopd.training.callbacks` (the CPU speed kit, the lab's rehearsal rows), never by an import here.

Exact resume: the data order is a seeded permutation per epoch, sampling uses a generator seeded by
(seed, step) plus per-prompt seeds from (seed, step, position in the step's global batch), and
checkpoints hold weights, optimizer, scheduler and RNG states — so a run that is killed and resumed
produces the same subsequent losses and weights as one that was not. The per-prompt seeds also make
an N-process run (``distributed: ddp|fsdp2``, see ``distributed.py``) sample what 1 process does.

Reading order: :func:`train` -> :class:`Trainer` (``__init__`` sets the run up in named steps,
``run`` is the loop, ``_train_step`` one optimizer step).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xopd.algos import get_algorithm
from xopd.algos.base import AlgoContext
from xopd.data.manifest import Example, read_manifest
from xopd.errors import ConfigError
from xopd.generation import StepGenerator, derive_seed
from xopd.generation.engines import make_engine
from xopd.generation.seeds import step_seed
from xopd.models import check_tokenizer_alignment, load_student, load_teacher
from xopd.training.callbacks import TrainerCallback, TrainRun
from xopd.training.checkpoint import latest_checkpoint, load_training_checkpoint, save_training_checkpoint
from xopd.training.config import TrainConfig
from xopd.training.distributed import (
    NullLogger,
    clip_grad_norm,
    init_distributed,
    reduce_step_metrics,
    shard_teacher,
    sync_grads,
    wrap_student,
)
from xopd.training.eval_hook import EvalHook
from xopd.training.logging import MetricsLogger
from xopd.training.lora import apply_lora
from xopd.training.memory import (
    autocast_context,
    enable_gradient_checkpointing,
    fsdp_param_dtype,
    mark_checkpointed_layers,
    teacher_dtype,
)
from xopd.training.optim import configure_trainable, make_optimizer, make_scheduler
from xopd.training.state import DataOrder, StopFlag, TrainingInterrupted

__all__ = ["Trainer", "TrainingInterrupted", "resolve_device", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig, examples: list[Example] | None = None,
          callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Run ``cfg``; returns the output dir. ``examples`` overrides the manifest (used by pipelines);
    ``callbacks`` join the run at the points of :class:`~xopd.training.callbacks.TrainerCallback`."""
    return Trainer(cfg, examples, callbacks).run()


class Trainer:
    """One training run: set up in ``__init__`` (in the order below), looped in :meth:`run`."""

    def __init__(self, cfg: TrainConfig, examples: list[Example] | None = None,
                 callbacks: Sequence[TrainerCallback] = ()) -> None:
        self.cfg, self.callbacks = cfg, list(callbacks)
        self._setup_run()
        self._load_data(examples)
        self._load_models()
        self._build_optimizer()
        self._resume()
        self.engine = make_engine(cfg.rollout_engine, self.student, cfg)
        self.algo = self.algo_cls(cfg, self.student, self.teacher, self.vocab_limit, AlgoContext.of(cfg), self.engine)
        self.rollout_group = self._rollout_group()
        self.logger = (MetricsLogger(self.out, cfg.report_to, resume_step=self.start if self.ckpt else None,
                                     run_config=asdict(cfg)) if self.dist.is_main else NullLogger())
        self.eval_hook = EvalHook(self.student, self.teacher, self.eval_examples, cfg, self.vocab_limit)

    def _fire(self, point: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, point)(self.ctx, *args)

    # -- set-up, in order --------------------------------------------------------------------------
    def _setup_run(self) -> None:
        """Output dir, global seed, device and process group."""
        cfg = self.cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        device = resolve_device(cfg.device)
        dtype = getattr(torch, cfg.dtype)
        self.ctx = TrainRun(cfg, self.out, device, dtype, dist=None)  # type: ignore[arg-type]
        self._fire("on_train_begin")
        torch.manual_seed(cfg.seed)
        self.dist = init_distributed(cfg.distributed, device)
        self.device = self.dist.device or device
        self.ctx.dist, self.ctx.device = self.dist, self.device
        if cfg.batch_size % (cfg.micro_batch_size * self.dist.world):
            raise ConfigError(f"config: 'batch_size' ({cfg.batch_size}) must be a multiple of micro_batch_size x "
                              f"processes ({cfg.micro_batch_size} x {self.dist.world})")

    def _load_data(self, examples: list[Example] | None) -> None:
        """Training rows (bad rows skipped and counted in skipped.json) and the eval hook's prompts."""
        cfg = self.cfg
        if examples is None:
            if not cfg.manifest:
                raise ConfigError("config: 'manifest' is required (or set bootstrap: tiny)")
            examples, skips = read_manifest(cfg.manifest, strict=cfg.strict, max_audio_seconds=cfg.max_audio_seconds)
            if skips.total:
                (self.out / "skipped.json").write_text(skips.to_json())
                print(f"[xopd] {cfg.manifest}: {skips.summary()} (ids in {self.out / 'skipped.json'})",
                      file=sys.stderr)
        self.examples = examples
        eval_rows = (read_manifest(cfg.eval_manifest, max_audio_seconds=cfg.max_audio_seconds)[0]
                     if cfg.eval_manifest else examples)
        self.eval_examples = eval_rows[: cfg.eval_prompts]

    def _load_models(self) -> None:
        """Student (from the newest checkpoint when resuming), teacher, LoRA, memory savers."""
        cfg, device = self.cfg, self.device
        self.lora = cfg.lora_r > 0
        self.ckpt = latest_checkpoint(self.out) if cfg.resume else None
        if cfg.resume and self.ckpt is None:
            print(f"[xopd] --resume: no checkpoint in {self.out}, starting fresh", file=sys.stderr)
        # LoRA resumes from the base + the checkpoint's adapter (model/ holds merged weights, for eval)
        path = self.ckpt / "model" if self.ckpt and not self.lora else cfg.student_path
        student = load_student(path, dtype=self.ctx.dtype, trust_remote_code=cfg.trust_remote_code).to(device)
        self.algo_cls = self._algorithm_class()
        teacher, self.vocab_limit = None, None
        if self.algo_cls.uses_teacher:
            teacher = load_teacher(cfg.teacher_path, dtype=teacher_dtype(cfg.teacher_dtype, device, self.ctx.dtype),
                                   trust_remote_code=cfg.trust_remote_code).to(device)
            report = check_tokenizer_alignment(student.tokenizer, teacher.tokenizer, student.vocab_size,
                                               teacher.vocab_size)
            self.vocab_limit = report.shared_vocab_size
        if cfg.cache_encoder and not cfg.train_encoder:
            student.enable_encoder_cache()
        self.student, self.teacher = student, teacher
        self.ctx.student, self.ctx.teacher = student, teacher
        self._fire("on_models_loaded")
        student.eval()  # dropout off: the ratio pi/pi_old must be exactly 1 at the first update
        if self.lora:
            apply_lora(student, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
        self._fire("on_models_ready")
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(student)

    def _build_optimizer(self) -> None:
        """Freeze what does not train, shard (fsdp2), AdamW and the LR schedule."""
        configure_trainable(self.student, self.cfg)
        param_dtype = fsdp_param_dtype(self.cfg.fsdp_param_dtype, self.device, self.cfg.autocast_bf16)
        # fsdp2: shards the LM; returns the params to all-reduce
        self.replicated = wrap_student(self.student, self.dist, param_dtype)
        if self.teacher is not None and self.cfg.shard_teacher and shard_teacher(self.teacher, self.dist) \
                and self.dist.is_main:
            print(f"[xopd] fsdp2: the teacher is sharded over {self.dist.world} ranks", file=sys.stderr)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, self.cfg)
        self.scheduler = self._make_scheduler()

    def _algorithm_class(self) -> type:
        """The algorithm of this run (a subclass may train with its own)."""
        return get_algorithm(self.cfg.algo)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule of the config (a subclass may bring its own)."""
        return make_scheduler(self.optimizer, self.cfg)

    def _resume(self) -> None:
        """Weights, optimizer, scheduler, RNG, data position and callback states from the checkpoint."""
        self.state: dict[str, Any] = {"nonfinite_total": 0, "data": {"epoch": 0, "index": 0}}
        self.start = 0
        if self.ckpt is not None:
            self.state = load_training_checkpoint(self.ckpt, self.student, self.optimizer, self.scheduler,
                                                  self.dist, self.lora)
            self.start = int(self.state["step"])
            print(f"[xopd] resumed from {self.ckpt} at step {self.start}", file=sys.stderr)
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(self.state.get(cb.state_key) or {})
        self.order = DataOrder(len(self.examples), self.cfg.seed, **self.state["data"])

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        if self.start == 0:
            self._evaluate(0)
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.start, desc=f"xopd {cfg.algo}", dynamic_ncols=True)
        self.nonfinite_run, self.nonfinite_first = 0, None
        step = self.start
        t_run = time.perf_counter()
        with StopFlag() as stop:
            while step < cfg.max_steps:
                metrics = self._train_step(step)
                step += 1
                self._log(step, metrics, bar)
                self.state["data"] = self.order.state()
                for cb in self.callbacks:
                    if cb.state_key:
                        self.state[cb.state_key] = cb.state_dict()
                done = step == cfg.max_steps or self.ctx.stop is not None
                if cfg.eval_every and step % cfg.eval_every == 0 and not done:
                    self._evaluate(step)
                if step % cfg.save_every == 0 or done or stop.signum is not None:
                    save_training_checkpoint(self.out, step, self.student, self.optimizer, self.scheduler,
                                             {**self.state, "config": asdict(cfg),
                                              "elapsed": time.perf_counter() - t_run},
                                             cfg.keep_last, self.dist, self.lora)
                if stop.signum is not None:
                    print(f"[xopd] signal {stop.signum}: saved checkpoint-{step}, exiting", file=sys.stderr)
                    break
                if self.ctx.stop is not None:  # a callback ended the run (e.g. a target reached)
                    break
        if bar is not None:
            bar.close()
        if step == cfg.max_steps or self.ctx.stop is not None:
            self._evaluate(step)
        self._fire("on_train_end")
        self.logger.close()
        self.dist.close()
        if stop.signum is not None and step < cfg.max_steps:
            raise TrainingInterrupted(stop.signum, step, self.out)
        return self.out

    def _evaluate(self, step: int) -> None:
        res = self.eval_hook()
        if res:
            self.logger.log(step, res)

    def _micro_batches(self, step: int):
        """(examples, per-prompt seeds) of this rank's micro-batches of step ``step``'s GLOBAL batch, taken
        in the 1-process order: this rank takes a contiguous slice."""
        cfg, dist = self.cfg, self.dist
        global_idx = self.order.take(cfg.batch_size)
        per_rank = cfg.batch_size // dist.world
        for a in range(per_rank // cfg.micro_batch_size):
            lo = dist.rank * per_rank + a * cfg.micro_batch_size
            positions = range(lo, lo + cfg.micro_batch_size)
            yield [self.examples[global_idx[p]] for p in positions], [derive_seed(cfg.seed, step, p) for p in positions]

    def _rollout_group(self) -> int:
        """Micro-batches per rollout (``rollout_batch_size`` / ``micro_batch_size``; 1 = roll out each alone)."""
        cfg = self.cfg
        if cfg.rollout_batch_size <= cfg.micro_batch_size:
            return 1
        if not self.algo.supports_rollout_batches:
            raise ConfigError(f"config: 'rollout_batch_size' is for algorithms that roll out (xopd); algo "
                              f"{cfg.algo!r} rolls out per micro-batch: leave it at 0")
        per_rank = cfg.batch_size // self.dist.world
        if per_rank % cfg.rollout_batch_size:
            raise ConfigError(f"config: 'rollout_batch_size' ({cfg.rollout_batch_size}) must divide each process's "
                              f"share of batch_size ({per_rank} = {cfg.batch_size} / {self.dist.world} processes)")
        return cfg.rollout_batch_size // cfg.micro_batch_size

    def _prepared(self, step: int, gen: StepGenerator):
        """(micro-batch, seeds, prepared rollout or None) of this rank's step ``step``: with
        ``rollout_batch_size``, each group of micro-batches is rolled out (and scored) in one go first."""
        if self.rollout_group == 1:
            yield from ((batch, seeds, None) for batch, seeds in self._micro_batches(step))
            return
        micro = list(self._micro_batches(step))
        for lo in range(0, len(micro), self.rollout_group):
            group = micro[lo : lo + self.rollout_group]
            gen.prompt_seeds = [s for _, seeds in group for s in seeds]
            if self.cfg.gradient_checkpointing:
                mark_checkpointed_layers(self.student)
            with autocast_context(self.device, self.cfg.autocast_bf16):
                prepared = self.algo.prepare([batch for batch, _ in group], gen)
            yield from ((batch, seeds, prep) for (batch, seeds), prep in zip(group, prepared))

    def _accumulate(self, step: int, gen: StepGenerator) -> tuple[float, int, int, dict[str, float]]:
        """Forward/backward of every micro-batch, then the callbacks' extra losses. Returns the step's
        (loss, trained tokens, generated tokens, mean metrics) on this rank."""
        cfg = self.cfg
        accum = cfg.batch_size // self.dist.world // cfg.micro_batch_size
        agg: dict[str, float] = {}
        tokens = gen_tokens = 0
        loss_total = 0.0
        for batch, seeds, prepared in self._prepared(step, gen):
            gen.prompt_seeds = seeds
            if cfg.gradient_checkpointing:
                mark_checkpointed_layers(self.student)
            with autocast_context(self.device, cfg.autocast_bf16):
                outp = self.algo.step(batch, gen) if prepared is None else self.algo.step(batch, gen, prepared=prepared)
            share = 1 if outp.step_mean else accum
            (outp.loss / share).backward()
            loss_total += float(outp.loss.detach()) / share
            tokens += outp.tokens
            gen_tokens += outp.generated_tokens
            for k, v in outp.metrics.items():
                agg[k] = agg.get(k, 0.0) + v / accum
        for cb in self.callbacks:
            extra, extra_metrics = cb.extra_loss(self.ctx, step, gen)
            loss_total += extra
            agg.update(extra_metrics)
        return loss_total, tokens, gen_tokens, agg

    def _train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step (0-based ``step``); returns its metrics."""
        cfg = self.cfg
        t0, c0 = time.perf_counter(), time.process_time()
        gen = StepGenerator()
        gen.manual_seed(step_seed(cfg.seed, step, self.dist.rank))
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, tokens, gen_tokens, agg = self._accumulate(step, gen)
        if self.dist.enabled:
            sync_grads(self.replicated, self.dist)
            red = reduce_step_metrics({**agg, "loss": loss_total, "tokens": tokens, "gen_tokens": gen_tokens},
                                      self.dist, sums=("tokens", "gen_tokens"))
            loss_total, tokens, gen_tokens = red.pop("loss"), int(red.pop("tokens")), int(red.pop("gen_tokens"))
            agg = red
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = clip_grad_norm(self.params, max_norm, self.dist)
        finite = math.isfinite(loss_total) and bool(torch.isfinite(grad_norm))
        self._apply_update(step, finite)
        self.scheduler.step()
        self._fire("on_step_end", step)
        dt = time.perf_counter() - t0
        return {"loss": loss_total, "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                "tokens": tokens, "tok_s": (gen_tokens or tokens) / max(dt, 1e-9), "step_seconds": dt,
                "step_cpu_seconds": time.process_time() - c0, "skipped_update": not finite, **agg}

    def _apply_update(self, step: int, finite: bool) -> None:
        """The optimizer step, or (NaN/inf loss or gradients) a skipped update, counted."""
        if finite:
            self.optimizer.step()
            self.engine.update_weights(self.student)  # an engine with its own copy takes the new weights
            self.nonfinite_run = 0
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.state["nonfinite_total"] = self.state.get("nonfinite_total", 0) + 1
        self.nonfinite_run += 1
        self.nonfinite_first = step if self.nonfinite_run == 1 else self.nonfinite_first
        print(f"[xopd] step {step + 1}: non-finite loss/grad, update skipped ({self.nonfinite_run} in a row)",
              file=sys.stderr)

    def _log(self, step: int, metrics: dict[str, Any], bar) -> None:
        """Metrics and progress bar after ``step`` steps; stops the run after too many skipped updates."""
        cfg = self.cfg
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self.logger.log(step, metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", adv=f"{metrics.get('adv_mean', 0):.3f}",
                            rkl=f"{metrics.get('reverse_kl', 0):.3f}", tok_s=f"{metrics['tok_s']:.0f}")
        if self.nonfinite_run >= cfg.max_nonfinite_steps:
            self.logger.close()
            self.dist.close()
            raise FloatingPointError(
                f"{self.nonfinite_run} updates in a row had NaN/inf loss or gradients, starting at step "
                f"{self.nonfinite_first + 1}; lower lr, check the data, or raise max_nonfinite_steps"
            )

