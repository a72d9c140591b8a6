"""Training algorithms. Each is a small module built from the shared rollout/scoring/loss pieces."""

from __future__ import annotations

from xopd.algos.base import Algorithm, StepOutput, make_prompt, make_prompts
from xopd.errors import ConfigError


def get_algorithm(name: str) -> type[Algorithm]:
    """Algorithm class by config name."""
    from xopd.algos.ctc import CTC
    from xopd.algos.sft import SFT
    from xopd.algos.xopd import XOPD

    registry: dict[str, type[Algorithm]] = {"xopd": XOPD, "sft": SFT, "ctc": CTC}
    try:
        from xopd.algos import baselines  # noqa: F401  (registers sft/offline_kd/gkd/grpo when present)

        registry.update(baselines.REGISTRY)
    except ImportError:
        pass
    if name not in registry:
        raise ConfigError(f"config: algo {name!r} is not available; choose one of {sorted(registry)}")
    return registry[name]


__all__ = ["Algorithm", "StepOutput", "get_algorithm", "make_prompt", "make_prompts"]
