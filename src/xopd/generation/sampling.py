"""Sampling responses: what every on-policy algorithm shares with evaluation.

``sample`` decodes n responses per prompt with a KV cache (the prompt prefilled once, its cache
repeated n times) and keeps the sampling policy's per-token log-probs (pi_old for the importance
ratio). Randomness can come from one seed per prompt (:func:`row_noise`), so results do not depend
on batching, lanes or ranks. Scoring the responses is :mod:`xopd.generation.logits`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from xopd.generation.fast_decode import ONEDNN_MIN_PARAMS, fast_decoder
from xopd.generation.kv_cache import make_static_cache, repeat_cache
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
    """
    rows = []
    for s in row_seeds:
        for j in range(n):
            g = torch.Generator().manual_seed(derive_seed(s, j))
            rows.append(torch.rand(steps, generator=g))
    return torch.stack(rows).to(device) if rows else torch.zeros(0, steps, device=device)


SMALL_DECODE_FLOPS = 1e8


@contextlib.contextmanager
def _decode_threads(model: PolicyModel, rows: int, device: torch.device, threads: int = 0) -> Iterator[None]:
    """CPU threads for the decode loop: ``threads`` if > 0, else (auto) ONE thread when a step's matmuls
    are too small to split (< ~0.1 GFLOP) and all threads otherwise.

    Why: such steps are bound by per-op overhead, and every op split over OpenMP threads adds a
    fork/join; on a shared machine a descheduled worker thread stalls every op (measured here: 2
    threads decode the benchmark's S model 2-5x slower than 1 under load, and no faster when idle).
    Bigger steps (memory- or FLOP-bound) keep all threads. Restored on exit.
    """
    n = torch.get_num_threads()
    if threads <= 0:
        flops = 2 * rows * sum(p.numel() for p in model.causal_lm().parameters())
        threads = 1 if flops < SMALL_DECODE_FLOPS else n
    if device.type != "cpu" or threads == n:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
    fast_decode: bool = True,
    decode_threads: int = 0,
) -> Rollout:
    """Sample ``n`` responses for every prompt with a KV cache (``temperature == 0``: greedy).

    ``vocab_limit`` restricts sampling to ids below it (the vocabulary shared with the teacher, so a
    padded student vocabulary can never emit an id the teacher cannot score).
    ``row_seeds`` (one int per prompt): draw each response's randomness from its own prompt's seed
    (see :func:`row_noise`) instead of ``generator``, so results do not depend on how prompts are
    batched or split across ranks. ``static_cache``: preallocate the KV cache (faster, same values);
    ``fast_decode``: with it, decode Llama-family models with :mod:`xopd.generation.fast_decode`;
    ``decode_threads``: CPU threads while decoding (0: auto, see :func:`_decode_threads`).
    """
    args = (n, max_new_tokens, temperature, top_p, top_k, generator, vocab_limit)
    with full_params(model):  # FSDP2: gather the LM once, so decoding runs without collectives
        lanes = _lanes(model, prompts, n, row_seeds, temperature, decode_threads)
        if lanes <= 1:
            return _sample(model, prompts, *args, row_seeds, static_cache, fast_decode, decode_threads)
        return _sample_in_lanes(model, prompts, args, row_seeds, static_cache, fast_decode, lanes)


def _lanes(model: PolicyModel, prompts: PromptBatch, n: int, row_seeds, temperature: float,
           decode_threads: int) -> int:
    """Concurrent decode lanes on CPU: one per thread, each decoding its share of the prompts on ONE
    thread. Only where it cannot change results (prompts with their own seeds, or greedy; decode
    threads on auto) and where it measured no slower than one loop split op by op: a small model
    (< ``LANE_MAX_PARAMS``, weights in cache) and >= ``LANE_MIN_ROWS`` rows per lane.

    Measured on an idle 2-core AMD EPYC (2026-11-30): the demo's X-OPD step (64 rows of a 1.2 M
    model, prompts of ~55-106 positions) 0.394 s with lanes vs 0.423-0.433 s without; the bench's S
    model, 16 rows (8 a lane), 65-69 ms with lanes vs 43-48 ms in one loop (the Python loop and the
    GIL bound each lane); the bench's M model (14.6 M, weights stream from memory, oneDNN-packed
    decode, see ``fast_decode``) 436 ms in one loop on 2 threads vs 518 ms in lanes.
    """
    threads = torch.get_num_threads()
    batch = prompts.embeds.shape[0]
    if prompts.embeds.device.type != "cpu" or threads < 2 or batch < 2 or decode_threads > 0:
        return 1
    if row_seeds is None and temperature > 0:
        return 1
    lanes = min(threads, batch)
    if batch * n // lanes < LANE_MIN_ROWS:
        return 1
    params = sum(p.numel() for p in model.causal_lm().parameters())
    return lanes if params < LANE_MAX_PARAMS else 1


LANE_MAX_PARAMS = ONEDNN_MIN_PARAMS  # above it one oneDNN-packed loop on all threads wins
LANE_MIN_ROWS = 16


def _sample_in_lanes(model, prompts: PromptBatch, args: tuple, row_seeds, static_cache: bool, fast_decode: bool,
                     lanes: int) -> Rollout:
    """Split the prompts into ``lanes`` contiguous parts, decode them concurrently (Python threads; torch
    releases the GIL inside ops) with one intra-op thread each, and stitch the rollouts back together.

    Per-prompt seeds make each part's samples exactly what the whole batch would give (see
    :func:`row_noise`), so this is a pure speed-up.
    """
    from concurrent.futures import ThreadPoolExecutor

    batch = prompts.embeds.shape[0]
    bounds = [round(i * batch / lanes) for i in range(lanes + 1)]
    parts = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def run(lo: int, hi: int) -> Rollout:
        with torch.no_grad():  # grad mode is per thread
            part = PromptBatch(prompts.embeds[lo:hi], prompts.attention_mask[lo:hi])
            seeds = list(row_seeds[lo:hi]) if row_seeds is not None else None
            return _sample(model, part, *args, seeds, static_cache, fast_decode, 1)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(parts)) as pool:
            outs = list(pool.map(lambda b: run(*b), parts))
    finally:
        torch.set_num_threads(threads)
    return _concat_rollouts(outs, model.pad_token_id, prompt_offsets=[lo for lo, _ in parts])


def _concat_rollouts(parts: list[Rollout], pad: int, prompt_offsets: list[int]) -> Rollout:
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
    )


def _sample(model, prompts, n, max_new_tokens, temperature, top_p, top_k, generator, vocab_limit, row_seeds,
            static_cache, fast_decode, decode_threads=0) -> Rollout:
    # The prompts are prefilled ONCE and their KV cache repeated n times: the n samples of a prompt share it.
    b, width = prompts.embeds.shape[:2]
    num = b * n
    device = prompts.embeds.device
    eos = torch.tensor(model.eos_token_ids, device=device)
    pad = model.pad_token_id
    noise = None
    if row_seeds is not None and temperature > 0:
        if len(row_seeds) != b:
            raise ValueError(f"{len(row_seeds)} row seeds for {b} prompts")
        noise = row_noise(row_seeds, n, max_new_tokens, device)
    rep = n  # how often the prefilled cache is repeated
    if n > 1 and not model.shared_prompt_ok:  # prefill every sample's own copy (same samples, more FLOPs)
        prompts, b, rep = prompts.repeat_interleave(n), b * n, 1
    attn = prompts.attention_mask.repeat_interleave(rep, 0)
    next_pos = attn.sum(-1, keepdim=True)  # position id of the first response token
    total = width + max_new_tokens
    cache = make_static_cache(model, num, total) if static_cache else None
    static = cache is not None
    if static:
        # additive 4-D masks over the preallocated cache: pads and not-yet-written slots get -inf-ish
        dtype = prompts.embeds.dtype
        neg = torch.finfo(dtype).min
        keys = torch.arange(total, device=device)
        causal = keys[None, :] <= torch.arange(width, device=device)[:, None]  # [P, total]
        p_valid = torch.cat([prompts.attention_mask.bool(),
                             prompts.attention_mask.new_ones(b, max_new_tokens, dtype=torch.bool)], 1)
        pre = torch.zeros(b, 1, width, total, dtype=dtype, device=device)
        pre.masked_fill_(~(p_valid[:, None, None, :] & causal[None, None]), neg)
        valid = p_valid.repeat_interleave(rep, 0)
        step_mask = torch.zeros(num, 1, 1, total, dtype=dtype, device=device).masked_fill_(
            ~valid[:, None, None, :], neg)
        step_mask[..., width:] = neg
        logits, cache = model.forward_embeds(prompts.embeds, pre,
                                             position_ids=position_ids_from_mask(prompts.attention_mask),
                                             cache=cache, use_cache=True, logits_to_keep=1)
    else:
        logits, cache = model.forward_embeds(prompts.embeds, prompts.attention_mask, use_cache=True,
                                             logits_to_keep=1)
    repeat_cache(cache, rep)
    logits = logits.repeat_interleave(rep, 0)
    dec = None
    if static and fast_decode:
        positions = next_pos + torch.arange(max_new_tokens, device=device)[None, :]
        dec = fast_decoder(model.causal_lm(), cache, positions)
    finished = torch.zeros(num, dtype=torch.bool, device=device)
    ids, masks, logps = [], [], []
    with _decode_threads(model, num, device, decode_threads):
        for t in range(max_new_tokens):
            step = logits[:, -1].float()
            if vocab_limit is not None and vocab_limit < step.shape[-1]:
                step = step[:, :vocab_limit]
            if temperature > 0:
                step = step / temperature
                logp = torch.log_softmax(step, dim=-1)
                probs = logp.exp() if top_p >= 1.0 and not top_k else _filter_logits(step, top_p, top_k).softmax(-1)
                if noise is not None:
                    tok = _inverse_cdf(probs, noise[:, t])
                else:
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
            if t == max_new_tokens - 1 or bool(finished.all()):
                break
            emb = model.embed_tokens(tok[:, None])
            if dec is not None:
                step_mask[..., width + t] = 0.0
                logits = dec.step(emb[:, 0], t, width + t, step_mask[..., : width + t + 1])[:, None]
            elif static:
                step_mask[..., width + t] = 0.0
                logits, cache = model.forward_embeds(emb, step_mask, position_ids=next_pos, cache=cache, use_cache=True)
            else:
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                logits, cache = model.forward_embeds(emb, attn, position_ids=next_pos, cache=cache, use_cache=True)
            next_pos = next_pos + 1
    return Rollout(
        ids=torch.stack(ids, 1),
        mask=torch.stack(masks, 1),
        logprobs=torch.stack(logps, 1),
        prompt_index=torch.arange(num // n, device=device).repeat_interleave(n),
        ended=finished,
    )
