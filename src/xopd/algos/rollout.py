"""Sampling responses and scoring them: the two pieces every on-policy algorithm shares.

``sample`` decodes n responses per prompt with a KV cache and keeps the sampling policy's per-token
log-probs (pi_old for the importance ratio). ``response_logprobs`` runs one forward over
[prompt | response] and returns the log-prob of every response token; it scores the student (with
grad, S or T view) and the teacher (no grad, always T) with the same code, so both sides see exactly
the same response token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xopd.losses import gather_logprobs
from xopd.models.base import PolicyModel, PromptBatch, position_ids_from_mask


@dataclass
class Rollout:
    """n responses per prompt, rows ordered prompt0 x n, prompt1 x n, ...

    ids/mask/logprobs: [N, L]; ``mask`` is True on generated tokens up to and including EOS.
    ``logprobs`` are log pi_old(y_t) of the sampling distribution (temperature applied, before
    top-p/top-k truncation, as verl does: the trained policy is the untruncated one).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    prompt_index: torch.Tensor
    ended: torch.Tensor  # [N] bool: the response emitted EOS before max_new_tokens

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def eos_fraction(self) -> float:
        """Share of responses that ended with EOS before max_new_tokens."""
        return float(self.ended.float().mean()) if self.ended.numel() else 0.0


def _filter_logits(logits: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Mask logits outside top-k / the top-p nucleus with -inf (sampling only)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def sample(
    model: PolicyModel,
    prompts: PromptBatch,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
) -> Rollout:
    """Sample ``n`` responses for every prompt with a KV cache (``temperature == 0``: greedy).

    ``vocab_limit`` restricts sampling to ids below it (the vocabulary shared with the teacher, so a
    padded student vocabulary can never emit an id the teacher cannot score).
    """
    batch = prompts.repeat_interleave(n)
    num = batch.embeds.shape[0]
    device = batch.embeds.device
    eos = torch.tensor(model.eos_token_ids, device=device)
    pad = model.pad_token_id
    attn = batch.attention_mask
    next_pos = attn.sum(-1, keepdim=True)  # position id of the first response token
    logits, cache = model.forward_embeds(batch.embeds, attn, use_cache=True, logits_to_keep=1)
    finished = torch.zeros(num, dtype=torch.bool, device=device)
    ids, masks, logps = [], [], []
    for _ in range(max_new_tokens):
        step = logits[:, -1].float()
        if vocab_limit is not None and vocab_limit < step.shape[-1]:
            step = step[:, :vocab_limit]
        if temperature > 0:
            step = step / temperature
            logp = torch.log_softmax(step, dim=-1)
            probs = _filter_logits(step, top_p, top_k).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            logp = torch.log_softmax(step, dim=-1)
            tok = step.argmax(-1)
        tok = torch.where(finished, torch.full_like(tok, pad), tok)
        ids.append(tok)
        masks.append(~finished)
        logps.append(torch.where(finished, torch.zeros_like(tok, dtype=logp.dtype),
                                 logp.gather(1, tok[:, None]).squeeze(1)))
        finished = finished | torch.isin(tok, eos)
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        logits, cache = model.forward_embeds(model.embed_tokens(tok[:, None]), attn, position_ids=next_pos,
                                             cache=cache, use_cache=True)
        next_pos = next_pos + 1
    return Rollout(
        ids=torch.stack(ids, 1),
        mask=torch.stack(masks, 1),
        logprobs=torch.stack(logps, 1),
        prompt_index=torch.arange(num // n, device=device).repeat_interleave(n),
        ended=finished,
    )


def response_logits(model: PolicyModel, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits that predict each response token: [N, L, V] (one forward over [prompt | response])."""
    if prompts.embeds.shape[0] != ids.shape[0]:
        raise ValueError(f"{prompts.embeds.shape[0]} prompts for {ids.shape[0]} responses")
    embeds = torch.cat([prompts.embeds, model.embed_tokens(ids)], dim=1)
    attn = torch.cat([prompts.attention_mask, mask.long()], dim=1)
    length = ids.shape[1]
    # position P-1+j predicts response token j: keep only the last L+1 positions' logits, drop the last.
    logits, _ = model.forward_embeds(embeds, attn, position_ids=position_ids_from_mask(attn),
                                     logits_to_keep=length + 1)
    return logits[:, :-1]


def response_logprobs(
    model: PolicyModel,
    prompts: PromptBatch,
    ids: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """log p(y_t | prompt, y_<t) for every response token: [N, L] (0 where ``mask`` is False)."""
    logits = response_logits(model, prompts, ids, mask)
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits[..., :vocab_limit]
    lp = gather_logprobs(logits, ids, temperature=temperature, chunk_size=chunk_size or None)
    return torch.where(mask, lp, torch.zeros_like(lp))
