"""Training algorithms. Each is a small module built from the shared rollout/scoring/loss pieces."""

from __future__ import annotations

from xopd.algos.base import Algorithm, StepOutput, make_prompt, make_prompts
from xopd.errors import ConfigError


def get_algorithm(name: str) -> type[Algorithm]:
    """Algorithm class by config name."""
    from xopd.algos.baselines import REGISTRY as BASELINES  # sft, offline_kd, gkd, grpo
    from xopd.algos.ctc import CTC
    from xopd.algos.xopd import XOPD

    registry: dict[str, type[Algorithm]] = {"xopd": XOPD, "ctc": CTC, **BASELINES}
    if name not in registry:
        raise ConfigError(f"config: algo {name!r} is not available; choose one of {sorted(registry)}")
    return registry[name]


__all__ = ["Algorithm", "StepOutput", "get_algorithm", "make_prompt", "make_prompts"]
