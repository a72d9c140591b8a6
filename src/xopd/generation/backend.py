"""Decode backends: where device-specific decoding plugs into :func:`xopd.generation.sample`.

The core decodes with the model's own forward on any device. A backend (the CPU speed kit,
:mod:`xopd.cpu`, registers one) may take over a call it accepts, e.g. only for CPU tensors, and
must return what the core would: the same tokens and log-probs up to float rounding. Nothing is
registered by default, so a GPU run or a library user gets the plain path unless they opt in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from xopd.models.base import PolicyModel, PromptBatch


@dataclass(frozen=True)
class SampleSpec:
    """What to sample: ``n`` responses per prompt of at most ``max_new_tokens`` (``temperature`` 0: greedy)."""

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    vocab_limit: int | None = None


class DecodeBackend(Protocol):
    def accepts(self, model: PolicyModel, prompts: PromptBatch) -> bool:
        """Whether this backend decodes this call (e.g. only CPU tensors)."""

    def sample(self, model: PolicyModel, prompts: PromptBatch, spec: SampleSpec,
               generator: torch.Generator | None, row_seeds: Sequence[int] | None, static_cache: bool):
        """A :class:`~xopd.generation.sampling.Rollout`, as :func:`xopd.generation.sampling.decode` returns."""

    def release_memory(self) -> None:
        """Called by long generation loops (evaluation) after each batch."""


_BACKENDS: list[DecodeBackend] = []


def register_backend(backend: DecodeBackend) -> None:
    """Put ``backend`` first in line (the newest registration wins)."""
    _BACKENDS.insert(0, backend)


def unregister_backend(backend: DecodeBackend) -> None:
    if backend in _BACKENDS:
        _BACKENDS.remove(backend)


def registered_backends() -> list[DecodeBackend]:
    return list(_BACKENDS)


def pick_backend(model: PolicyModel, prompts: PromptBatch) -> DecodeBackend | None:
    return next((b for b in _BACKENDS if b.accepts(model, prompts)), None)


def release_memory() -> None:
    """Let every registered backend hand freed memory back (a no-op without backends)."""
    for b in _BACKENDS:
        b.release_memory()
