"""Seeds that make sampling independent of batching: one stream per (seed, step, prompt, ...).

Every random draw of a rollout comes from a seed derived from where the prompt sits in the run, not
from where it sits in a micro-batch, so an N-process run, a resumed run and a run with other
micro-batch sizes all sample the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64 steps): independent streams per (seed, step, prompt, ...).

    Why not ``hash``: this must be identical across processes, Python versions and machines, because
    ranks of a distributed run derive the same per-prompt seeds independently.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & MASK64)) * 0xBF58476D1CE4E5B9) & MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & MASK64
        h ^= h >> 29
    return h >> 1


class StepGenerator(torch.Generator):
    """The trainer's per-step generator; ``prompt_seeds`` holds one seed per example of the current
    micro-batch, derived from (seed, step, position in the global batch).

    Algorithms that sample pass these on (``sample(row_seeds=...)``) so every prompt's samples are
    independent of batching and of the rank it runs on; code that ignores them still gets an
    ordinary seeded ``torch.Generator``.
    """

    prompt_seeds: list[int] | None = None


def row_noise(row_seeds: Sequence[int], n: int, steps: int, device: torch.device | None = None) -> torch.Tensor:
    """Uniform noise ``[len(row_seeds) * n, steps]``: row (p, j) drawn from seed ``derive_seed(row_seeds[p], j)``.

    Sampling with this noise (inverse CDF, one uniform per token) makes every response a function of
    its own prompt's seed only: the same tokens whatever batch, micro-batch or rank the prompt lands in.
    The noise is drawn on the CPU (a seeded CPU generator is the same on every machine) and then moved.
    """
    rows = []
    for s in row_seeds:
        for j in range(n):
            g = torch.Generator().manual_seed(derive_seed(s, j))
            rows.append(torch.rand(steps, generator=g))
    return torch.stack(rows).to(device) if rows else torch.zeros(0, steps, device=device)


# The trainer's two older seed mixes, named. They stay as they were (rather than derive_seed) so a run
# reproduces its earlier numbers and a checkpoint written before resumes onto the same stream.
def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data permutation."""
    return seed * 100_003 + epoch


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of step ``step``'s generator on rank ``rank`` (draws that ignore the per-prompt seeds)."""
    return seed * 1_000_003 + step + 7_919 * rank


def eval_seed(seed: int) -> int:
    """Seed of the eval hook's samples: the same at every evaluation, so its numbers compare over steps."""
    return seed + 99


def replay_seed(seed: int) -> int:
    """Seed of the rehearsal rows' data order (a stream apart from the training rows')."""
    return seed + 1
