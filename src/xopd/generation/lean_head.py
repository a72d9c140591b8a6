"""Sampled-token log-probs without the ``[rows, length, vocab]`` logits (issue 28: the largest memory term
of a 7B recipe step, ~20 GB for 32 rows x 512 tokens x 152k).

``pg`` needs only ``log p(y_t)`` of each sampled token. :func:`lean_response_logprobs` runs the usual
forward with the LM head swapped, for that forward only, for :class:`SampledLogprobHead`: it maps the
final hidden states to log-probs of given target ids chunk by chunk (``chunk`` rows of logits at a
time), and under autograd each chunk is checkpointed, so its logits are recomputed in backward instead
of kept. The swap happens inside the LM's own forward, so FSDP2's hooks on the LM (which unshard the
head) run as usual. Same values as :func:`~xopd.generation.logits.response_logprobs` (tested to 1e-5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xopd.generation import logits as full
from xopd.generation.kv_cache import repeat_cache
from xopd.models.base import PolicyModel, PromptBatch, position_ids_from_mask

#: config attributes that post-process logits after the head (a swapped head would skip them)
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def lean_head_ok(model: PolicyModel) -> bool:
    """Whether the model's logits are exactly ``head(hidden)`` (no soft-capping or scaling after it)."""
    cfg = getattr(model.causal_lm(), "config", None)
    return not any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING)


def _chunk_logprobs(head: nn.Module, temperature: float, vocab_limit: int | None, h: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """``[R, D]`` hidden states, ``[R, K]`` target ids -> ``[R, K]`` log-probs (fp32)."""
    logits = head(h).float()
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits[:, :vocab_limit]
    logits = logits / temperature
    return logits.gather(-1, targets) - torch.logsumexp(logits, dim=-1, keepdim=True)


class SampledLogprobHead(nn.Module):
    """Stands in for the LM head in one forward: ``[B, T, D] -> [B, T, K]`` log-probs of ``targets``
    (``[B, T, K]`` ids; K > 1 when n responses share one prompt position)."""

    def __init__(self, head: nn.Module, targets: torch.Tensor, temperature: float, chunk: int,
                 vocab_limit: int | None) -> None:
        super().__init__()
        self.head = head
        self.targets, self.temperature, self.chunk, self.vocab_limit = targets, temperature, chunk, vocab_limit

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        if self.targets.shape[:2] != (b, t):
            raise ValueError(f"lean head: targets {tuple(self.targets.shape)} for hidden states {(b, t)}")
        flat, tg = h.reshape(b * t, d), self.targets.reshape(b * t, -1)
        keep = torch.is_grad_enabled() and flat.requires_grad
        outs = []
        for i in range(0, flat.shape[0], self.chunk):
            args = (self.head, self.temperature, self.vocab_limit, flat[i : i + self.chunk], tg[i : i + self.chunk])
            outs.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if keep else _chunk_logprobs(*args))
        return torch.cat(outs).reshape(b, t, -1)


@contextlib.contextmanager
def _head_swapped(lm: nn.Module, make: Callable[[nn.Module], nn.Module]) -> Iterator[None]:
    head = lm.get_output_embeddings()
    name = next((n for n, m in lm.named_children() if m is head), None)
    if name is None:
        raise ValueError(f"lean head: {type(lm).__name__}'s output embeddings are not a direct child module")
    setattr(lm, name, make(head))
    try:
        yield
    finally:
        setattr(lm, name, head)


def _forward(model: PolicyModel, targets: torch.Tensor, temperature: float, chunk: int, vocab_limit: int | None,
             *args, **kwargs):
    make = lambda head: SampledLogprobHead(head, targets, temperature, chunk, vocab_limit)  # noqa: E731
    with _head_swapped(model.causal_lm(), make):
        return model.forward_embeds(*args, **kwargs)


def lean_response_logprobs(model: PolicyModel, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor,
                           temperature: float = 1.0, chunk: int = 1024, vocab_limit: int | None = None,
                           n: int = 1) -> torch.Tensor:
    """:func:`~xopd.generation.logits.response_logprobs` without materialising the logits: ``[N, L]``."""
    if prompts.embeds.shape[0] * n != ids.shape[0]:
        raise ValueError(f"{prompts.embeds.shape[0]} prompts x n={n} for {ids.shape[0]} responses")
    length = ids.shape[1]
    pad = torch.zeros_like(ids[:, :1])
    embed_ids, ids = ids, torch.where(mask.bool(), ids, torch.zeros_like(ids))  # masked targets: any valid id
    if n > 1 and full._shared_prompt_ok(model):
        b = prompts.embeds.shape[0]
        first = ids[:, :1].reshape(b, 1, n)  # the last prompt position predicts each response's first token
        p_lp, cache = _forward(model, first, temperature, chunk, vocab_limit, prompts.embeds,
                               prompts.attention_mask, use_cache=True, logits_to_keep=1)
        if cache is not None and cache.get_seq_length() == prompts.embeds.shape[1]:
            repeat_cache(cache, n)
            attn = torch.cat([prompts.attention_mask.repeat_interleave(n, 0), mask.long()], dim=1)
            positions = position_ids_from_mask(attn)[:, prompts.embeds.shape[1]:]
            nxt = torch.cat([ids[:, 1:], pad], dim=1)[..., None]  # response position j predicts token j + 1
            r_lp, _ = _forward(model, nxt, temperature, chunk, vocab_limit, model.embed_tokens(embed_ids), attn,
                               position_ids=positions, cache=cache, use_cache=True)
            lp = torch.cat([p_lp.reshape(b * n, 1), r_lp[:, :-1, 0]], dim=1)
            return torch.where(mask.bool(), lp, torch.zeros_like(lp))
        full._say_fallback_once(model, "its LM returned no KV cache for the prompts")
    elif n > 1:
        full._say_fallback_once(model, "gradient checkpointing drops the KV cache" if model.shared_prompt_ok
                                else "the model cannot share a prompt's KV cache")
    if n > 1:
        prompts = prompts.repeat_interleave(n)
    embeds = torch.cat([prompts.embeds, model.embed_tokens(embed_ids)], dim=1)
    attn = torch.cat([prompts.attention_mask, mask.long()], dim=1)
    targets = torch.cat([ids, pad], dim=1)[..., None]  # position P-1+j predicts token j; the last one nothing
    lp, _ = _forward(model, targets, temperature, chunk, vocab_limit, embeds, attn,
                     position_ids=position_ids_from_mask(attn), logits_to_keep=length + 1)
    lp = lp[:, :-1, 0]
    return torch.where(mask.bool(), lp, torch.zeros_like(lp))
