"""What trains and how: freezing, AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from xopd.errors import ConfigError
from xopd.models.base import PolicyModel
from xopd.training.config import TrainConfig


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


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def lr_factor(step: int, warmup_steps: int, max_steps: int, kind: str) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up, then constant, cosine or linear decay to 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_scheduler))
