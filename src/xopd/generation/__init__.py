"""Generation: sampling responses and scoring them, shared by every algorithm and by evaluation.

Sits between ``models`` and ``algos`` (docs/DESIGN.md section 7): it may import models, losses, data,
metrics and utils, never algos, training or eval.
"""

from __future__ import annotations

from xopd.generation.logits import response_logits, response_logprobs
from xopd.generation.sampling import Rollout, StepGenerator, derive_seed, row_noise, sample

__all__ = ["Rollout", "StepGenerator", "derive_seed", "response_logits", "response_logprobs", "row_noise", "sample"]
