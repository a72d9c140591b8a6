"""Memory savers for the trainer: gradient checkpointing and bf16 autocast on GPUs (LoRA: ``lora.py``)."""

from __future__ import annotations

import contextlib

import torch

from xopd.errors import ConfigError


def enable_gradient_checkpointing(student) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with inputs_embeds and LoRA)."""
    lm = student.causal_lm()
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError("config: gradient_checkpointing is not supported by this student's LM class")
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mark_checkpointed_layers(student)


def mark_checkpointed_layers(student) -> int:
    """Flag the checkpointed layers as training (only the layer objects, not their children).

    Why: transformers checkpoints a layer only when ``layer.training`` is True, but the student runs
    in eval mode (dropout off, so pi/pi_old is exactly 1 at the first update); ``eval()`` anywhere
    (e.g. the eval hook) clears the flag, so the trainer calls this every step. Children (attention,
    MLP) stay in eval mode, so no dropout is switched on. Returns the number of layers flagged.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for m in student.causal_lm().modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            m.training = True
            n += 1
    return n


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (this CPU has no fast bf16)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def teacher_dtype(name: str, device: torch.device, student_dtype: torch.dtype) -> torch.dtype:
    """The teacher's weight dtype: ``auto`` is bf16 on CUDA (it is frozen, so there are no updates to lose
    to rounding, and it halves the teacher's memory) and the student's dtype elsewhere (this CPU has no
    fast bf16)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else student_dtype
    return getattr(torch, name)


def fsdp_param_dtype(name: str, device: torch.device, autocast_bf16: bool) -> torch.dtype | None:
    """FSDP2's compute dtype for the sharded LM (None: no casting): ``auto`` is bf16 on CUDA when bf16
    autocast is on (the same compute precision, without autocast's bf16 copy of every fp32 weight)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and autocast_bf16 else None
    return getattr(torch, name)
