"""Generation: sampling responses and scoring them, shared by every algorithm and by evaluation.

Sits between ``models`` and ``algos`` (docs/DESIGN.md section 7): it may import models, losses, data,
metrics and utils, never algos, training or eval. Device-specific decoding plugs in through
:mod:`xopd.generation.backend` (the CPU speed kit registers there), never by an import from here.
"""

from __future__ import annotations

from xopd.generation.backend import SampleSpec, register_backend, release_memory, unregister_backend
from xopd.generation.logits import response_logits, response_logprobs
from xopd.generation.sampling import Rollout, decode, sample
from xopd.generation.seeds import StepGenerator, derive_seed, row_noise

__all__ = ["Rollout", "SampleSpec", "StepGenerator", "decode", "derive_seed", "register_backend", "release_memory",
           "response_logits", "response_logprobs", "row_noise", "sample", "unregister_backend"]
