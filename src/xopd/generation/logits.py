"""Scoring responses: the logits (and log-probs) that predict each response token given its prompt.

It scores the student (with grad, S or T view) and the teacher (no grad, always T) with the same code,
so both sides see exactly the same response token ids. With ``n > 1`` each distinct prompt is run once
and its KV cache repeated for its n responses (docs/DESIGN.md section 2).
"""

from __future__ import annotations

import sys

import torch

from xopd.generation.kv_cache import repeat_cache
from xopd.losses import gather_logprobs
from xopd.models.base import PolicyModel, PromptBatch, position_ids_from_mask


def checkpointing_active(lm: torch.nn.Module) -> bool:
    """Whether a forward of ``lm`` now would recompute layers in backward. Such layers drop their KV
    cache (transformers' ``GradientCheckpointingLayer`` sets ``cache=None`` when checkpointing, in
    training mode, with grad enabled), so a prompt's cache cannot be kept for its responses.

    Read from the layers themselves, not from a wrapper's flag: a view such as the Omni thinker's
    ``ThinkerCausalLM`` need not carry ``is_gradient_checkpointing``.
    """
    if not torch.is_grad_enabled():
        return False
    from transformers.modeling_layers import GradientCheckpointingLayer

    return any(isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and m.training
               for m in lm.modules())


def _shared_prompt_ok(model: PolicyModel) -> bool:
    """Whether ``model`` can score n responses against ONE forward of their shared prompt: its LM must
    return a KV cache that gradients flow through."""
    return model.shared_prompt_ok and not checkpointing_active(model.causal_lm())


_FALLBACK_SAID: set[str] = set()


def _say_fallback_once(model: PolicyModel, why: str) -> None:
    name = type(model).__name__
    if name not in _FALLBACK_SAID:
        _FALLBACK_SAID.add(name)
        print(f"[xopd] {name}: scoring repeats each prompt per sample ({why})", file=sys.stderr)


def response_logits(model: PolicyModel, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor,
                    n: int = 1) -> torch.Tensor:
    """Logits that predict each response token: [N, L, V].

    ``prompts`` has one row per response (``n == 1``) or one row per *distinct* prompt whose ``n``
    responses follow each other in ``ids`` (rollout order). With ``n > 1`` the prompts are run once and
    their KV cache is repeated for the n responses (the repeat's backward sums, so gradients reach the
    prompt's trainable inputs exactly as if every response had its own copy): on spoken prompts that
    are longer than their answers this is most of a scoring step's FLOPs saved. Models that cannot do
    that (``shared_prompt_ok = False``, or layers checkpointed right now) repeat the prompts instead, and
    say so once on stderr.
    """
    if prompts.embeds.shape[0] * n != ids.shape[0]:
        raise ValueError(f"{prompts.embeds.shape[0]} prompts x n={n} for {ids.shape[0]} responses")
    if n > 1 and _shared_prompt_ok(model):
        logits = _response_logits_shared(model, prompts, ids, mask, n)
        if logits is not None:
            return logits
        _say_fallback_once(model, "its LM returned no KV cache for the prompts")
    elif n > 1:
        _say_fallback_once(model, "gradient checkpointing drops the KV cache" if model.shared_prompt_ok
                           else "the model cannot share a prompt's KV cache")
    if n > 1:
        prompts = prompts.repeat_interleave(n)
    embeds = torch.cat([prompts.embeds, model.embed_tokens(ids)], dim=1)
    attn = torch.cat([prompts.attention_mask, mask.long()], dim=1)
    length = ids.shape[1]
    # position P-1+j predicts response token j: keep only the last L+1 positions' logits, drop the last.
    logits, _ = model.forward_embeds(embeds, attn, position_ids=position_ids_from_mask(attn),
                                     logits_to_keep=length + 1)
    return logits[:, :-1]


def _response_logits_shared(model: PolicyModel, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor,
                            n: int) -> torch.Tensor | None:
    """One forward over the B prompts (cache kept), the cache repeated n times, one over the B*n responses.

    ``None`` when the LM gave no cache covering the prompts (e.g. a checkpointing wrapper this module
    cannot see): scoring the responses without their prompts would be silently wrong.
    """
    p_logits, cache = model.forward_embeds(prompts.embeds, prompts.attention_mask, use_cache=True, logits_to_keep=1)
    width = prompts.embeds.shape[1]
    if cache is None or cache.get_seq_length() != width:
        return None
    repeat_cache(cache, n)
    attn = torch.cat([prompts.attention_mask.repeat_interleave(n, 0), mask.long()], dim=1)
    positions = position_ids_from_mask(attn)[:, width:]
    r_logits, _ = model.forward_embeds(model.embed_tokens(ids), attn, position_ids=positions, cache=cache,
                                       use_cache=True)
    # the last prompt position predicts response token 0; response position j predicts token j + 1
    return torch.cat([p_logits[:, -1:].repeat_interleave(n, 0), r_logits[:, :-1]], dim=1)


def response_logprobs(
    model: PolicyModel,
    prompts: PromptBatch,
    ids: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_limit: int | None = None,
    n: int = 1,
) -> torch.Tensor:
    """log p(y_t | prompt, y_<t) for every response token: [N, L] (0 where ``mask`` is False);
    ``prompts`` and ``n`` as in :func:`response_logits`."""
    logits = response_logits(model, prompts, ids, mask, n=n)
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits[..., :vocab_limit]
    lp = gather_logprobs(logits, ids, temperature=temperature, chunk_size=chunk_size or None, mask=mask)
    return torch.where(mask, lp, torch.zeros_like(lp))
