"""Trainer callbacks: the fixed points where plug-ins (the CPU speed kit, the lab) join a run.

The trainer calls every callback, in order, at each point below; a callback that keeps state across
steps (a data order, say) names a ``state_key`` and its state is saved in, and restored from, the
checkpoint's ``trainer_state.json``. Like Hugging Face's ``TrainerCallback``, but with the few points
this trainer needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xopd.models.base import PolicyModel
from xopd.training.distributed import DistContext


@dataclass
class TrainRun:
    """What callbacks may read (and, before the optimizer exists, change) about the run."""

    cfg: Any
    out: Path
    device: torch.device
    dtype: torch.dtype
    dist: DistContext
    student: PolicyModel | None = None
    teacher: PolicyModel | None = None
    #: set by a callback (to a reason, e.g. "target") to end the run after the current step, saved like a last step
    stop: str | None = None


class TrainerCallback:
    """Override the points you need; every method is a no-op by default."""

    #: key of this callback's state in trainer_state.json (None: it keeps none)
    state_key: str | None = None

    def on_train_begin(self, run: TrainRun) -> None:
        """Before anything is loaded."""

    def on_models_loaded(self, run: TrainRun) -> None:
        """Student and teacher loaded (encoder cache enabled), before LoRA and eval mode."""

    def on_models_ready(self, run: TrainRun) -> None:
        """After LoRA, before gradient checkpointing, freezing, sharding and the optimizer."""

    def extra_loss(self, run: TrainRun, step: int, generator: torch.Generator) -> tuple[float, dict[str, float]]:
        """After the algorithm's micro-batches, before gradients are synced: backpropagate any extra
        loss here; return (its value added to the step's loss, metrics to log)."""
        return 0.0, {}

    def on_step_end(self, run: TrainRun, step: int) -> None:
        """After the optimizer and scheduler step of ``step`` (0-based)."""

    def on_train_end(self, run: TrainRun) -> None:
        """After the last step, whether finished or stopped by a signal."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
