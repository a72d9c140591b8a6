"""Loss functions for X-OPD: pure tensor functions, see :mod:`xopd.losses.functional`."""

from xopd.losses.functional import (
    ADV_ESTIMATORS,
    AGG_MODES,
    LOGPROB_FLOOR,
    advantage,
    aggregate,
    entropy_from_logits,
    forward_kl,
    forward_kl_topk,
    gather_logprobs,
    generalized_jsd,
    k1_advantage,
    k3_advantage,
    masked_mean,
    policy_gradient_loss,
    reverse_kl,
    sft_cross_entropy,
    truncated_is_weight,
)
from xopd.losses.registry import DIRECT_LOSSES, direct_loss

__all__ = [
    "DIRECT_LOSSES",
    "direct_loss",
    "ADV_ESTIMATORS",
    "AGG_MODES",
    "LOGPROB_FLOOR",
    "advantage",
    "aggregate",
    "entropy_from_logits",
    "forward_kl",
    "forward_kl_topk",
    "gather_logprobs",
    "generalized_jsd",
    "k1_advantage",
    "k3_advantage",
    "masked_mean",
    "policy_gradient_loss",
    "reverse_kl",
    "sft_cross_entropy",
    "truncated_is_weight",
]
