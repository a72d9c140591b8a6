"""The paper's baselines (docs/DESIGN.md section 3), registered for ``xopd train --algo NAME``.

:func:`xopd.algos.get_algorithm` merges ``REGISTRY`` into its own table. Every baseline is an
:class:`~xopd.algos.base.Algorithm` built from the shared pieces (``rollout.sample`` /
``response_logits``, ``xopd.losses``, SFT's tokenisation), so the trainer, budget accounting and
checkpoints are identical across rows of the comparison.
"""

from __future__ import annotations

from xopd.algos.base import Algorithm
from xopd.algos.gkd import GKD
from xopd.algos.grpo import GRPO
from xopd.algos.offline_kd import OfflineKD
from xopd.algos.sft import SFT

REGISTRY: dict[str, type[Algorithm]] = {"sft": SFT, "offline_kd": OfflineKD, "gkd": GKD, "grpo": GRPO}

__all__ = ["GKD", "GRPO", "REGISTRY", "SFT", "OfflineKD"]
