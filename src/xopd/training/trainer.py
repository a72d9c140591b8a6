"""The training loop shared by every algorithm.

One optimizer step = ``grad_accum`` micro-batches of ``micro_batch_size`` prompts, each turned into
a loss by the algorithm (rollouts included). Around it: which parameters train, AdamW + schedule,
NaN/inf guards, metrics, the eval hook, atomic checkpoints and exact resume.

Exact resume: the data order is a seeded permutation per epoch, sampling uses a generator seeded by
(seed, step) plus per-prompt seeds from (seed, step, position in the step's global batch), and
checkpoints hold weights, optimizer, scheduler and RNG states — so a run that is killed and resumed
produces the same subsequent losses and weights as one that was not. The per-prompt seeds also make
an N-process run (``distributed: ddp|fsdp2``, see ``distributed.py``) sample what 1 process does.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xopd.algos import get_algorithm
from xopd.data.manifest import Example, read_manifest
from xopd.errors import ConfigError, XopdError
from xopd.generation import StepGenerator, derive_seed
from xopd.models import check_tokenizer_alignment, load_student, load_teacher
from xopd.models.base import PolicyModel
from xopd.models.onednn_linear import select_linear_kernel
from xopd.training.checkpoint import latest_checkpoint
from xopd.training.config import TrainConfig
from xopd.training.distributed import (
    NullLogger,
    clip_grad_norm,
    init_distributed,
    load_training_checkpoint,
    reduce_step_metrics,
    save_training_checkpoint,
    sync_grads,
    wrap_student,
)
from xopd.training.kl import measure_reverse_kl
from xopd.training.logging import MetricsLogger
from xopd.training.memory import (
    apply_lora,
    autocast_context,
    enable_gradient_checkpointing,
    mark_checkpointed_layers,
)
from xopd.utils.fsdp import full_params
from xopd.utils.heap import trim_heap


class DataOrder:
    """Endless, seeded, resumable stream of example indices: a fresh permutation every epoch."""

    def __init__(self, size: int, seed: int, epoch: int = 0, index: int = 0) -> None:
        self.size, self.seed, self.epoch, self.index = size, seed, epoch, index
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.size:
                self.epoch, self.index = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            out.append(self._perm[self.index])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_trainable(student: PolicyModel, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze what the config trains (paper: the LLM backbone only)."""
    student.requires_grad_(False)
    if cfg.train_adapter and student.adapter is None:
        raise ConfigError("config: train_adapter is set but the student has no CTC adapter (compose one with "
                          "`xopd models compose --adapter ctc`)")
    student.freeze(encoder=not cfg.train_encoder, projector=not cfg.train_projector, lm=not cfg.train_lm,
                   adapter=not cfg.train_adapter)
    if cfg.lora_r > 0 and cfg.train_lm:  # LoRA: only the adapters of the LM train, the base stays frozen
        for name, p in student.causal_lm().named_parameters():
            p.requires_grad_("lora_" in name)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("config: nothing to train for this student (check train_lm/train_encoder/train_projector)")
    return params


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingInterrupted(XopdError):
    """SIGINT/SIGTERM stopped an unfinished run after saving a checkpoint.

    Exits 128 + signal (130 for SIGINT, 143 for SIGTERM) rather than 0, so a scheduler or a
    ``train && eval`` pipeline never mistakes a stopped run for a finished one; ``--resume`` continues it.
    """

    def __init__(self, signum: int, step: int, output_dir: Path) -> None:
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; saved {output_dir / f'checkpoint-{step}'}; "
                         "continue with --resume")


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save and exit after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def bootstrap_assets(cfg: TrainConfig) -> TrainConfig:
    """``bootstrap: tiny`` builds a tiny student/teacher/manifest (cached) and points the config at it."""
    if cfg.bootstrap != "tiny":
        return cfg
    from xopd.models.tiny import build_tiny_world

    assets = build_tiny_world(Path(cfg.output_dir).parent / "tiny-assets", seed=0)
    cfg.student_path = cfg.student_path or str(assets["student"])
    cfg.teacher_path = cfg.teacher_path or str(assets["teacher"])
    cfg.manifest = cfg.manifest or str(assets["manifest"])
    return cfg


def train(cfg: TrainConfig, examples: list[Example] | None = None, replay: list[Example] | None = None) -> Path:
    """Run ``cfg``; returns the output dir. ``examples`` / ``replay`` override the manifest /
    ``replay_manifest`` (used by pipelines)."""
    cfg = bootstrap_assets(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    dist_ctx = init_distributed(cfg.distributed, device)
    device = dist_ctx.device or device
    if cfg.batch_size % (cfg.micro_batch_size * dist_ctx.world):
        raise ConfigError(f"config: 'batch_size' ({cfg.batch_size}) must be a multiple of micro_batch_size x "
                          f"processes ({cfg.micro_batch_size} x {dist_ctx.world})")
    lora = cfg.lora_r > 0

    if examples is None:
        if not cfg.manifest:
            raise ConfigError("config: 'manifest' is required (or set bootstrap: tiny)")
        examples, skips = read_manifest(cfg.manifest, strict=cfg.strict, max_audio_seconds=cfg.max_audio_seconds)
        if skips.total:
            (out / "skipped.json").write_text(skips.to_json())
            print(f"[xopd] {cfg.manifest}: {skips.summary()} (ids in {out / 'skipped.json'})", file=sys.stderr)
    if replay is None and cfg.replay_manifest and cfg.replay_batch:
        replay = read_manifest(cfg.replay_manifest, strict=cfg.strict, max_audio_seconds=cfg.max_audio_seconds)[0]
    replay = replay if cfg.replay_batch else None
    if replay is not None and not replay:
        raise ConfigError(f"config: 'replay_manifest' {cfg.replay_manifest!r} has no usable rows")
    if replay is not None and cfg.replay_batch % dist_ctx.world:
        raise ConfigError(f"config: 'replay_batch' ({cfg.replay_batch}) must be a multiple of the process count "
                          f"({dist_ctx.world})")
    eval_manifest = cfg.eval_manifest
    eval_examples = (read_manifest(eval_manifest, max_audio_seconds=cfg.max_audio_seconds)[0]
                     if eval_manifest else examples)[: cfg.eval_prompts]

    ckpt = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt is None:
        print(f"[xopd] --resume: no checkpoint in {out}, starting fresh", file=sys.stderr)
    # LoRA resumes from the base + the checkpoint's adapter (model/ holds merged weights, for eval)
    student = load_student(ckpt / "model" if ckpt and not lora else cfg.student_path, dtype=dtype,
                           trust_remote_code=cfg.trust_remote_code).to(device)
    teacher = None
    algo_cls = get_algorithm(cfg.algo)
    vocab_limit = None
    if algo_cls.uses_teacher:
        teacher = load_teacher(cfg.teacher_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code).to(device)
        report = check_tokenizer_alignment(student.tokenizer, teacher.tokenizer, student.vocab_size, teacher.vocab_size)
        vocab_limit = report.shared_vocab_size
    if not cfg.shared_prompt:  # the per-sample prompt path (benchmarks compare it with the shared one)
        for m in (student, teacher):
            if m is not None:
                m.shared_prompt_ok = False
    if cfg.cache_encoder and not cfg.train_encoder:
        student.enable_encoder_cache(dtype=None if cfg.cache_encoder_dtype == "auto" else cfg.cache_encoder_dtype)
        if cfg.encoder_cache_file and Path(cfg.encoder_cache_file).is_file():
            student.load_encoder_cache(cfg.encoder_cache_file)
    student.eval()  # dropout off: the ratio pi/pi_old must be exactly 1 at the first update
    if lora:
        apply_lora(student, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
    select_linear_kernel(cfg.linear_kernel, device, dtype, student, teacher)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    configure_trainable(student, cfg)
    replicated = wrap_student(student, dist_ctx)  # fsdp2: shards the LM; returns params to all-reduce
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    state: dict[str, Any] = {"nonfinite_total": 0, "data": {"epoch": 0, "index": 0},
                             "replay_data": {"epoch": 0, "index": 0}}
    start = 0
    if ckpt is not None:
        state = load_training_checkpoint(ckpt, student, optimizer, scheduler, dist_ctx, lora)
        start = int(state["step"])
        print(f"[xopd] resumed from {ckpt} at step {start}", file=sys.stderr)
    order = DataOrder(len(examples), cfg.seed, **state["data"])
    algo = algo_cls(cfg, student, teacher, vocab_limit)
    rehearsal = None
    if replay is not None:  # SFT on S for rehearsal rows, so the algorithm's update does not erase them
        from dataclasses import replace as _replace

        from xopd.algos.sft import SFT

        rehearsal = SFT(_replace(cfg, sft_view="S"), student, None)
        replay_order = DataOrder(len(replay), cfg.seed + 1, **state.get("replay_data", {"epoch": 0, "index": 0}))
    logger = (MetricsLogger(out, cfg.report_to, resume_step=start if ckpt else None, run_config=asdict(cfg))
              if dist_ctx.is_main else NullLogger())

    def run_eval(step: int) -> None:
        if teacher is None or not eval_examples:
            return
        views = ["S", "T"] if any(e.audio or e.waveform is not None for e in eval_examples) else ["T"]
        res: dict[str, float] = {}
        for v in views:
            with full_params(student):  # every rank evaluates (same numbers); rank 0 logs
                res.update(measure_reverse_kl(student, teacher, eval_examples, view=v, n=1,
                                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                              seed=cfg.seed + 99, vocab_limit=vocab_limit,
                                              max_audio_seconds=cfg.max_audio_seconds))
        logger.log(step, res)

    if start == 0:
        run_eval(0)
    bar = None
    if cfg.progress and dist_ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, desc=f"xopd {cfg.algo}", dynamic_ncols=True)
    nonfinite_run, nonfinite_first = 0, None
    step = start
    t_run = time.perf_counter()
    with _StopFlag() as stop:
        while step < cfg.max_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            gen = StepGenerator()
            gen.manual_seed(cfg.seed * 1_000_003 + step + 7_919 * dist_ctx.rank)
            optimizer.zero_grad(set_to_none=True)
            agg: dict[str, float] = {}
            tokens = gen_tokens = 0
            loss_total = 0.0
            # the step's GLOBAL batch, in the 1-process order; this rank takes a contiguous slice
            global_idx = order.take(cfg.batch_size)
            per_rank = cfg.batch_size // dist_ctx.world
            accum = per_rank // cfg.micro_batch_size
            for a in range(accum):
                lo = dist_ctx.rank * per_rank + a * cfg.micro_batch_size
                positions = range(lo, lo + cfg.micro_batch_size)
                batch = [examples[global_idx[p]] for p in positions]
                gen.prompt_seeds = [derive_seed(cfg.seed, step, p) for p in positions]
                if cfg.gradient_checkpointing:
                    mark_checkpointed_layers(student)
                with autocast_context(device, cfg.autocast_bf16):
                    outp = algo.step(batch, gen)
                (outp.loss / accum).backward()
                loss_total += float(outp.loss.detach()) / accum
                tokens += outp.tokens
                gen_tokens += outp.generated_tokens
                for k, v in outp.metrics.items():
                    agg[k] = agg.get(k, 0.0) + v / accum
            if rehearsal is not None:
                r_idx = replay_order.take(cfg.replay_batch)
                r_per_rank = cfg.replay_batch // dist_ctx.world
                r_batch = [replay[i] for i in r_idx[dist_ctx.rank * r_per_rank:(dist_ctx.rank + 1) * r_per_rank]]
                with autocast_context(device, cfg.autocast_bf16):
                    r_out = rehearsal.step(r_batch, gen)
                (cfg.replay_coef * r_out.loss).backward()
                loss_total += cfg.replay_coef * float(r_out.loss.detach())
                agg["replay_nll"] = float(r_out.loss.detach())
            if dist_ctx.enabled:
                sync_grads(replicated, dist_ctx)
                red = reduce_step_metrics({**agg, "loss": loss_total, "tokens": tokens, "gen_tokens": gen_tokens},
                                          dist_ctx, sums=("tokens", "gen_tokens"))
                loss_total, tokens, gen_tokens = red.pop("loss"), int(red.pop("tokens")), int(red.pop("gen_tokens"))
                agg = red
            grad_norm = clip_grad_norm(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"), dist_ctx)
            finite = math.isfinite(loss_total) and bool(torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
                nonfinite_run = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                state["nonfinite_total"] = state.get("nonfinite_total", 0) + 1
                nonfinite_run += 1
                nonfinite_first = step if nonfinite_run == 1 else nonfinite_first
                print(f"[xopd] step {step + 1}: non-finite loss/grad, update skipped ({nonfinite_run} in a row)",
                      file=sys.stderr)
            scheduler.step()
            if cfg.trim_heap_every and step % cfg.trim_heap_every == 0:
                trim_heap()  # hand freed activations back to the OS (RSS tracks live tensors)
            step += 1
            dt = time.perf_counter() - t0
            metrics = {"loss": loss_total, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "tokens": tokens, "tok_s": (gen_tokens or tokens) / max(dt, 1e-9), "step_seconds": dt,
                       "step_cpu_seconds": time.process_time() - c0,
                       "skipped_update": not finite, **agg}
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                logger.log(step, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_total:.4f}", adv=f"{agg.get('adv_mean', 0):.3f}",
                                rkl=f"{agg.get('reverse_kl', 0):.3f}", tok_s=f"{metrics['tok_s']:.0f}")
            if nonfinite_run >= cfg.max_nonfinite_steps:
                logger.close()
                dist_ctx.close()
                raise FloatingPointError(
                    f"{nonfinite_run} updates in a row had NaN/inf loss or gradients, starting at step "
                    f"{nonfinite_first + 1}; lower lr, check the data, or raise max_nonfinite_steps"
                )
            state["data"] = order.state()
            if rehearsal is not None:
                state["replay_data"] = replay_order.state()
            done = step == cfg.max_steps
            if cfg.eval_every and step % cfg.eval_every == 0 and not done:
                run_eval(step)
            if step % cfg.save_every == 0 or done or stop.signum is not None:
                save_training_checkpoint(out, step, student, optimizer, scheduler,
                                         {**state, "config": asdict(cfg), "elapsed": time.perf_counter() - t_run},
                                         cfg.keep_last, dist_ctx, lora)
            if stop.signum is not None:
                print(f"[xopd] signal {stop.signum}: saved checkpoint-{step}, exiting", file=sys.stderr)
                break
    if bar is not None:
        bar.close()
    if step == cfg.max_steps:
        run_eval(step)
    logger.close()
    dist_ctx.close()
    if stop.signum is not None and step < cfg.max_steps:
        raise TrainingInterrupted(stop.signum, step, out)
    return out
