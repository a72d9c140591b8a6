"""How the recipe tests scale a shipped recipe down: only paths and sizes change, never a setting."""

from __future__ import annotations

from pathlib import Path

from xopd.config import load_config
from xopd.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def rollout_sizes(recipe: str, processes: int = 1) -> list[str]:
    """A recipe that rolls out several micro-batches at once (``rollout_batch_size``) keeps doing so,
    scaled down: one rollout of two micro-batches of 2 on each process."""
    if not load_config(TrainConfig, str(CONFIGS / f"{recipe}.yaml"), {}).rollout_batch_size:
        return []
    return ["--batch_size", str(4 * processes), "--micro_batch_size", "2", "--rollout_batch_size", "4"]
