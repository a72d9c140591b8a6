"""Per-token distillation losses by name: what ``loss:`` in a config chooses.

Every entry maps (student logits ``[N, L, V]``, teacher logits ``[N, L, V]``, mask ``[N, L]``) to
per-token losses ``[N, L]`` (0 where masked), with the knobs it understands passed by keyword.
``pg`` (the paper's policy gradient on the per-token advantage) is not here: it needs only the
teacher's log-probs of the sampled tokens, never its full logits (see :mod:`xopd.algos.xopd`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from xopd.errors import ConfigError
from xopd.losses.functional import forward_kl_topk, generalized_jsd, reverse_kl

DirectLoss = Callable[..., Tensor]


def _reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, temperature: float = 1.0,
                chunk_size: int | None = None, **_: object) -> Tensor:
    return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature, chunk_size=chunk_size)


def _jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, temperature: float = 1.0,
         jsd_beta: float = 0.5, chunk_size: int | None = None, **_: object) -> Tensor:
    return generalized_jsd(student_logits, teacher_logits, mask, beta=jsd_beta, temperature=temperature,
                           chunk_size=chunk_size)


def _topk_forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, topk: int = 20,
                     chunk_size: int | None = None, **_: object) -> Tensor:
    return forward_kl_topk(student_logits, teacher_logits, mask, k=topk, chunk_size=chunk_size)


#: name -> per-token loss on full logits ("direct" losses, trained by plain backprop)
DIRECT_LOSSES: dict[str, DirectLoss] = {
    "reverse_kl": _reverse_kl,
    "jsd": _jsd,
    "topk_forward_kl": _topk_forward_kl,
}


def direct_loss(name: str) -> DirectLoss:
    """The per-token loss registered as ``name``."""
    if name not in DIRECT_LOSSES:
        raise ConfigError(f"config: loss {name!r} is not a direct loss; choose one of {sorted(DIRECT_LOSSES)}")
    return DIRECT_LOSSES[name]
