"""Sampling responses: what every on-policy algorithm shares with evaluation.

``sample`` decodes n responses per prompt with a KV cache (the prompt prefilled once, its cache
repeated n times) and keeps the sampling policy's per-token log-probs (pi_old for the importance
ratio). Randomness can come from one seed per prompt (:func:`~xopd.generation.seeds.row_noise`), so
results do not depend on batching or ranks. Scoring the responses is :mod:`xopd.generation.logits`;
device-specific decoding plugs in through :mod:`xopd.generation.backend`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from xopd.generation.backend import SampleSpec, pick_backend
from xopd.generation.kv_cache import make_static_cache, repeat_cache, select_cache_rows
from xopd.generation.seeds import row_noise
from xopd.models.base import PolicyModel, PromptBatch, position_ids_from_mask
from xopd.utils.fsdp import full_params


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
    #: [N, L] the engine's own sampling log-probs, kept where ``logprobs`` were rescored by the trainer
    #: (an engine with kernels of its own, :mod:`xopd.generation.engine`); None otherwise
    engine_logprobs: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def eos_fraction(self) -> float:
        """Share of responses that ended with EOS before max_new_tokens."""
        return float(self.ended.float().mean()) if self.ended.numel() else 0.0

    def select(self, rows: torch.Tensor) -> Rollout:
        """The rollout of ``rows`` (``[k]`` indices, whole prompts of n rows each), cut to their longest
        response: what a rollout of those prompts alone returns."""
        mask = self.mask[rows]
        width = _steps_to_keep(mask)
        _, prompt_index = torch.unique_consecutive(self.prompt_index[rows], return_inverse=True)
        engine_lp = None if self.engine_logprobs is None else self.engine_logprobs[rows, :width]
        return Rollout(self.ids[rows, :width], mask[:, :width], self.logprobs[rows, :width], prompt_index,
                       self.ended[rows], engine_lp)

    def engine_metrics(self) -> dict[str, float]:
        """How far the engine's sampling log-probs are from the trainer's (TRL's and verl's rollout-vs-train
        log-prob gap): mean and max |difference| over generated tokens; empty for the trainer's own."""
        if self.engine_logprobs is None:
            return {}
        diff = (self.logprobs - self.engine_logprobs).abs().masked_fill(~self.mask, 0.0)
        count = self.mask.sum().clamp(min=1)
        return {"engine_logprob_diff_mean": float(diff.sum() / count), "engine_logprob_diff_max": float(diff.max())}


class Stepper(Protocol):
    """A decode step over a static cache: ``step(emb [N, H], t, slot, mask) -> logits [N, V]``."""

    def step(self, emb: torch.Tensor, t: int, slot: int, mask: torch.Tensor) -> torch.Tensor: ...


#: builds a faster decode step for (causal LM, static cache, positions [N, T]), or None to use the model's forward
StepperFactory = Callable[[torch.nn.Module, Any, torch.Tensor], "Stepper | None"]
#: context manager factory wrapped around the decode loop, given (model, rows, device)
LoopContext = Callable[[PolicyModel, int, torch.device], contextlib.AbstractContextManager]


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


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ``i`` with ``cdf[i-1] <= u * total < cdf[i]`` per row: [N, V], [N] -> [N] (never a p=0 token)."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    tok = torch.searchsorted(cdf, u[:, None].to(cdf.dtype) * total, right=True)
    last = torch.searchsorted(cdf, total.contiguous(), right=False)  # first index whose cdf reaches the total
    return torch.minimum(tok, last).squeeze(1)


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
    row_seeds: Sequence[int] | None = None,
    static_cache: bool = True,
) -> Rollout:
    """Sample ``n`` responses for every prompt with a KV cache (``temperature == 0``: greedy).

    ``vocab_limit`` restricts sampling to ids below it (the vocabulary shared with the teacher, so a
    padded student vocabulary can never emit an id the teacher cannot score).
    ``row_seeds`` (one int per prompt): draw each response's randomness from its own prompt's seed
    (see :func:`~xopd.generation.seeds.row_noise`) instead of ``generator``, so results do not depend
    on how prompts are batched or split across ranks. ``static_cache``: preallocate the KV cache
    (same values, fewer allocations). A registered decode backend that accepts the call decodes it.
    """
    spec = SampleSpec(n, max_new_tokens, temperature, top_p, top_k, vocab_limit)
    with full_params(model):  # FSDP2: gather the LM once, so decoding runs without collectives
        backend = pick_backend(model, prompts)
        if backend is not None:
            return backend.sample(model, prompts, spec, generator, row_seeds, static_cache)
        return decode(model, prompts, spec, generator, row_seeds, static_cache)


def _static_masks(prompts: PromptBatch, rep: int, total: int, max_new_tokens: int):
    """Additive 4-D masks over a preallocated cache of ``total`` slots: the prefill's [B, 1, P, total]
    and the decode steps' [B*rep, 1, 1, total]; pads and not-yet-written slots get the dtype's min."""
    b, width = prompts.embeds.shape[:2]
    device, dtype = prompts.embeds.device, prompts.embeds.dtype
    neg = torch.finfo(dtype).min
    keys = torch.arange(total, device=device)
    causal = keys[None, :] <= torch.arange(width, device=device)[:, None]  # [P, total]
    p_valid = torch.cat([prompts.attention_mask.bool(),
                         prompts.attention_mask.new_ones(b, max_new_tokens, dtype=torch.bool)], 1)
    pre = torch.zeros(b, 1, width, total, dtype=dtype, device=device)
    pre.masked_fill_(~(p_valid[:, None, None, :] & causal[None, None]), neg)
    valid = p_valid.repeat_interleave(rep, 0)
    step_mask = torch.zeros(b * rep, 1, 1, total, dtype=dtype, device=device).masked_fill_(
        ~valid[:, None, None, :], neg)
    step_mask[..., width:] = neg
    return pre, step_mask


def _next_token(logits: torch.Tensor, spec: SampleSpec, noise: torch.Tensor | None, t: int,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [N], log-probs [N, V] of the sampling distribution) from the last position's logits."""
    step = logits[:, -1].float()
    if spec.vocab_limit is not None and spec.vocab_limit < step.shape[-1]:
        step = step[:, : spec.vocab_limit]
    if spec.temperature <= 0:
        return step.argmax(-1), torch.log_softmax(step, dim=-1)
    step = step / spec.temperature
    logp = torch.log_softmax(step, dim=-1)
    truncated = spec.top_p < 1.0 or spec.top_k
    probs = _filter_logits(step, spec.top_p, spec.top_k).softmax(-1) if truncated else logp.exp()
    if noise is not None:
        return _inverse_cdf(probs, noise[:, t]), logp
    return torch.multinomial(probs, 1, generator=generator).squeeze(1), logp


#: decode steps between checks whether every row has finished, by device type: each check copies a flag
#: to the host and waits for the device; on a GPU that stalls the queue, on a CPU it is free
FINISHED_CHECK_EVERY = {"cpu": 1}
_DEFAULT_CHECK_EVERY = 16
#: at a check, finished rows leave the decode batch once at most this share of it still generates, by
#: device type (0 = never). Off on CPU, where the 2-core demo's numbers were measured with full batches
#: (a smaller batch may round the last bit differently); on a GPU the rows left decode at full speed.
COMPACT_BELOW = {"cpu": 0.0}
_DEFAULT_COMPACT_BELOW = 0.5


class _LiveRows:
    """Which rollout rows are still in the decode batch (``rows``: their indices; None = all, in order)
    and how their per-row tensors map back to the full rollout."""

    def __init__(self, num: int) -> None:
        self.num, self.rows = num, None

    def full(self, x: torch.Tensor, fill) -> torch.Tensor:
        """``[live]`` -> ``[num]``, rows that left the batch set to ``fill``."""
        if self.rows is None:
            return x
        out = x.new_full((self.num, *x.shape[1:]), fill)
        out[self.rows] = x
        return out

    def drop_finished(self, finished: torch.Tensor, cache, tensors: list) -> list:
        """Keep the unfinished rows: of the cache (in place) and of each tensor in ``tensors`` (None kept)."""
        keep = (~finished).nonzero().squeeze(1)
        select_cache_rows(cache, keep)
        self.rows = keep if self.rows is None else self.rows[keep]
        return [None if x is None else x.index_select(0, keep) for x in tensors]


def _prefill(model: PolicyModel, prompts: PromptBatch, rep: int, num: int, max_new_tokens: int, static_cache: bool):
    """Run the prompts once and repeat their KV cache ``rep`` times: (last logits [num, 1, V], cache, the
    decode steps' 4-D mask over a static cache, or None with the dynamic cache)."""
    total = prompts.embeds.shape[1] + max_new_tokens
    cache = make_static_cache(model, num, total) if static_cache else None
    step_mask = None
    if cache is not None:
        pre, step_mask = _static_masks(prompts, rep, total, max_new_tokens)
        logits, cache = model.forward_embeds(prompts.embeds, pre,
                                             position_ids=position_ids_from_mask(prompts.attention_mask),
                                             cache=cache, use_cache=True, logits_to_keep=1)
    else:
        logits, cache = model.forward_embeds(prompts.embeds, prompts.attention_mask, use_cache=True,
                                             logits_to_keep=1)
    repeat_cache(cache, rep)
    return logits.repeat_interleave(rep, 0), cache, step_mask


def decode(model: PolicyModel, prompts: PromptBatch, spec: SampleSpec, generator: torch.Generator | None = None,
           row_seeds: Sequence[int] | None = None, static_cache: bool = True,
           stepper: StepperFactory | None = None, loop_context: LoopContext | None = None,
           check_every: int | None = None, compact_below: float | None = None) -> Rollout:
    """The decode loop behind :func:`sample`, on any device.

    Backends reuse it with their own pieces: ``stepper`` builds a faster decode step over the static
    cache (the model's forward when it returns None), ``loop_context`` wraps the token loop (e.g. a
    thread policy). The prompts are prefilled ONCE and their KV cache repeated n times: the n samples
    of a prompt share it. ``check_every`` (default by device, :data:`FINISHED_CHECK_EVERY`): how often
    the loop asks whether all rows are done; steps run past that point emit only masked padding, which
    is cut off at the end, so the rollout is the same for every value. ``compact_below`` (default by
    device, :data:`COMPACT_BELOW`): at a check, finished rows leave the batch once at most that share
    of it still generates (only where each row's randomness is its own: row seeds, or greedy).
    """
    n, max_new_tokens = spec.n, spec.max_new_tokens
    b, width = prompts.embeds.shape[:2]
    num = b * n
    device = prompts.embeds.device
    every = check_every or FINISHED_CHECK_EVERY.get(device.type, _DEFAULT_CHECK_EVERY)
    eos = torch.tensor(model.eos_token_ids, device=device)
    pad = model.pad_token_id
    noise = None
    if row_seeds is not None and spec.temperature > 0:
        if len(row_seeds) != b:
            raise ValueError(f"{len(row_seeds)} row seeds for {b} prompts")
        noise = row_noise(row_seeds, n, max_new_tokens, device)
    rep = n  # how often the prefilled cache is repeated
    if n > 1 and not model.shared_prompt_ok:  # prefill every sample's own copy (same samples, more FLOPs)
        prompts, b, rep = prompts.repeat_interleave(n), b * n, 1
    attn = prompts.attention_mask.repeat_interleave(rep, 0)
    next_pos = attn.sum(-1, keepdim=True)  # position id of the first response token
    logits, cache, step_mask = _prefill(model, prompts, rep, num, max_new_tokens, static_cache)
    static = step_mask is not None
    dec = None
    if static and stepper is not None:
        dec = stepper(model.causal_lm(), cache, next_pos + torch.arange(max_new_tokens, device=device)[None, :])
    finished = torch.zeros(num, dtype=torch.bool, device=device)
    ids, masks, logps = [], [], []
    live = _LiveRows(num)
    compact = COMPACT_BELOW.get(device.type, _DEFAULT_COMPACT_BELOW) if compact_below is None else compact_below
    compact = compact if dec is None and (noise is not None or spec.temperature <= 0) else 0.0
    with loop_context(model, num, device) if loop_context is not None else contextlib.nullcontext():
        for t in range(max_new_tokens):
            tok, logp = _next_token(logits, spec, noise, t, generator)
            tok = torch.where(finished, torch.full_like(tok, pad), tok)
            ids.append(live.full(tok, pad))
            masks.append(live.full(~finished, False))
            logps.append(live.full(torch.where(finished, torch.zeros_like(tok, dtype=logp.dtype),
                                               logp.gather(1, tok[:, None]).squeeze(1)), 0.0))
            finished = finished | torch.isin(tok, eos)
            if t == max_new_tokens - 1 or ((t + 1) % every == 0 and bool(finished.all())):
                break
            if compact and (t + 1) % every == 0 and int((~finished).sum()) <= compact * finished.numel():
                tok, finished, next_pos, step_mask, attn, noise = live.drop_finished(
                    finished, cache, [tok, finished, next_pos, step_mask, attn, noise])
            emb = model.embed_tokens(tok[:, None])
            if static:
                step_mask[..., width + t] = 0.0
            if dec is not None:
                logits = dec.step(emb[:, 0], t, width + t, step_mask[..., : width + t + 1])[:, None]
            elif static:
                logits, cache = model.forward_embeds(emb, step_mask, position_ids=next_pos, cache=cache, use_cache=True)
            else:
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                logits, cache = model.forward_embeds(emb, attn, position_ids=next_pos, cache=cache, use_cache=True)
            next_pos = next_pos + 1
    mask = torch.stack(masks, 1)
    keep = _steps_to_keep(mask) if every > 1 else len(masks)
    return Rollout(
        ids=torch.stack(ids, 1)[:, :keep],
        mask=mask[:, :keep],
        logprobs=torch.stack(logps, 1)[:, :keep],
        prompt_index=torch.arange(num // n, device=device).repeat_interleave(n),
        ended=live.full(finished, True),
    )


def _steps_to_keep(mask: torch.Tensor) -> int:
    """Steps up to the last one any row generated in: those run after every row finished (all masked)
    are cut, so a loop that checks less often returns the rollout of one that checks every step."""
    return int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1


def concat_rollouts(parts: list[Rollout], pad: int, prompt_offsets: list[int]) -> Rollout:
    """Stack rollouts of disjoint prompt ranges; shorter ones are right-padded (pad id, mask False, 0)."""
    width = max(r.ids.shape[1] for r in parts)

    def padded(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(
        ids=torch.cat([padded(r.ids, pad) for r in parts]),
        mask=torch.cat([padded(r.mask, False) for r in parts]),
        logprobs=torch.cat([padded(r.logprobs, 0.0) for r in parts]),
        prompt_index=torch.cat([r.prompt_index + off for r, off in zip(parts, prompt_offsets)]),
        ended=torch.cat([r.ended for r in parts]),
        engine_logprobs=None if any(r.engine_logprobs is None for r in parts)
        else torch.cat([padded(r.engine_logprobs, 0.0) for r in parts]),
    )
