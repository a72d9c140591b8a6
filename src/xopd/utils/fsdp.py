"""FSDP2 helpers every layer may need: is a tensor sharded, and a block in which a model is whole.

Lives at the bottom so that sampling (``xopd.generation``) can gather a sharded LM once per rollout
without importing the training layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_params(model: nn.Module) -> Iterator[None]:
    """Keep every FSDP2-sharded module of ``model`` unsharded inside the block (no-op otherwise).

    One all-gather per module on entry, none inside: a rollout's many forwards then run
    collective-free (ranks may take different numbers of decode steps), at the memory cost of the
    full LM for the duration of the rollout.
    """
    mods = fsdp_modules(model) if dist.is_initialized() else []
    if not mods or getattr(model, "_xopd_unsharded", False):  # nothing sharded, or an outer block holds it
        yield
        return
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    model._xopd_unsharded = True
    try:
        yield
    finally:
        model._xopd_unsharded = False
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
