"""Pure tensor losses for cross-modal on-policy distillation (no state, no config objects).

Conventions (every function):
  * logits ``[B, L, V]``; token ids ``[B, L]`` (long); per-token log-probs ``[B, L]``;
  * ``mask [B, L]`` is bool or 0/1 float and is treated as bool. Positions where it is False never
    produce NaN and come out as exactly 0, whatever garbage (``-inf`` log-probs, ``-inf``/NaN logit
    rows, ``-100`` labels) sits there: we select with ``torch.where`` *before* anything can overflow,
    because ``0 * inf`` (in the forward or the backward pass) is NaN.
  * Student/teacher vocab mismatch (e.g. 151936 vs 152064: the larger model pads its embedding
    matrix) is handled by truncating both logits to the smaller V. Padding rows carry no real tokens,
    so this is exact whenever the extra rows are padding.
  * Log-probabilities inside the divergences are clamped below at ``LOGPROB_FLOOR`` (-1e4). This only
    changes values when a probability is below exp(-1e4), i.e. zero in any float format, and it turns
    ``0 * log 0`` into a clean 0 and an infinite KL (teacher gives a token -inf, student does not) into
    a large finite one instead of inf/NaN gradients.
  * Half-precision logits are upcast to float32 chunk by chunk; outputs are float32 then.
  * ``chunk_size`` processes that many rows of the flattened ``B*L`` at a time, so full-vocab
    intermediates exist for one chunk only. With autograd on, each chunk is activation-checkpointed
    (recomputed in backward), which is what actually bounds memory; values and grads are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
ADV_ESTIMATORS = ("k1", "k3")
LOGPROB_FLOOR = -1.0e4
LOG_RATIO_CLAMP = 20.0


# ----------------------------------------------------------------------------- helpers
def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero(x: Tensor) -> Tensor:
    return x.new_zeros(())


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _clean_rows(x: Tensor, m: Tensor, temperature: float) -> Tensor:
    """Masked rows -> zeros (uniform distribution, finite), then upcast and divide by temperature."""
    x = torch.where(m[:, None], _upcast(x), 0.0)
    return x if temperature == 1.0 else x / temperature


def _log_probs(x: Tensor, m: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(_clean_rows(x, m, temperature), dim=-1).clamp_min(LOGPROB_FLOOR)


def _run_rows(fn: Callable[..., Tensor], m: Tensor, args: list[Tensor], chunk_size: int | None) -> Tensor:
    """Apply ``fn(mask_rows, *row_tensors) -> [n]`` over rows, optionally in checkpointed chunks."""
    n = m.shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(m, *args)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    use_ckpt = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    outs = []
    for s in range(0, n, chunk_size):
        chunk = [m[s : s + chunk_size]] + [a[s : s + chunk_size] for a in args]
        outs.append(checkpoint(fn, *chunk, use_reentrant=False) if use_ckpt else fn(*chunk))
    return torch.cat(outs)


def _pair_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor):
    """Truncate to the common vocab, detach the teacher, flatten to rows ``[N, V]``."""
    lead = student_logits.shape[:-1]
    if teacher_logits.shape[:-1] != lead or tuple(mask.shape) != tuple(lead):
        raise ValueError(
            f"shape mismatch: student {tuple(student_logits.shape)}, teacher "
            f"{tuple(teacher_logits.shape)}, mask {tuple(mask.shape)} (need [B, L, V], [B, L, V'], [B, L])"
        )
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = student_logits[..., :v].reshape(-1, v)
    t = teacher_logits.detach()[..., :v].reshape(-1, v)
    return s, t, _as_bool(mask).reshape(-1), lead


# ----------------------------------------------------------------------------- reductions
def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is True (mask broadcasts to ``x``).

    ``sum(where(mask, x, 0), dim) / max(count, 1)``: an empty mask gives 0, not NaN, and inf/NaN at
    masked positions cannot leak into the value or the gradient.
    """
    m = _as_bool(mask).expand_as(x)
    xs = torch.where(m, x, _zero(x))
    if dim is None:
        return xs.sum() / m.sum().clamp_min(1)
    return xs.sum(dim) / m.sum(dim).clamp_min(1)


def aggregate(per_token: Tensor, mask: Tensor, mode: str = "seq-mean-token-mean") -> Tensor:
    """Reduce per-token values ``[B, L]`` to a scalar.

    * ``"seq-mean-token-mean"``: ``mean_{b: n_b>0} (1/n_b) sum_t x_bt`` (the paper's 1/|y_j| then 1/m);
    * ``"token-mean"``: ``sum_{b,t} x_bt / sum_b n_b``;
    * ``"seq-mean-token-sum"``: ``mean_{b: n_b>0} sum_t x_bt``.
    ``n_b`` = valid tokens of sequence b. Sequences with no valid token are left out of the mean
    (both seq-mean modes, so an empty rollout does not dilute the batch); no valid token at all -> 0.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    m = _as_bool(mask)
    x = torch.where(m, per_token, _zero(per_token))
    if mode == "token-mean":
        return x.sum() / m.sum().clamp_min(1)
    tok_sum, count = x.sum(-1), m.sum(-1)
    seq = tok_sum / count.clamp_min(1) if mode == "seq-mean-token-mean" else tok_sum
    return seq.sum() / (count > 0).sum().clamp_min(1)


# ----------------------------------------------------------------------------- log-probs
def gather_logprobs(
    logits: Tensor,
    ids: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token log-probs ``log softmax(logits / T)[id]``: ``[B, L, V], [B, L] -> [B, L]``.

    Computed as ``logits[id]/T - logsumexp(logits/T)`` so the ``[.., V]`` log-softmax is never built.
    Differentiable. Ids must lie in ``[0, V)`` (ValueError otherwise). With ``mask``, masked positions
    may hold any id (e.g. -100) and any logits (e.g. all -inf); they return 0.
    """
    _check_temperature(temperature)
    lead, v = logits.shape[:-1], logits.shape[-1]
    if tuple(ids.shape) != tuple(lead):
        raise ValueError(f"ids shape {tuple(ids.shape)} != logits leading shape {tuple(lead)}")
    m = torch.ones(lead, dtype=torch.bool, device=logits.device) if mask is None else _as_bool(mask)
    m, i = m.reshape(-1), ids.reshape(-1)
    if bool(torch.where(m, (i < 0) | (i >= v), False).any()):
        raise ValueError(f"token id out of range [0, {v}) at an unmasked position")

    def rows(mc: Tensor, xc: Tensor, ic: Tensor) -> Tensor:
        xc = _clean_rows(xc, mc, temperature)
        ic = torch.where(mc, ic, 0)
        out = xc.gather(-1, ic[:, None]).squeeze(-1) - torch.logsumexp(xc, dim=-1)
        return torch.where(mc, out, _zero(out))

    return _run_rows(rows, m, [logits.reshape(-1, v), i], chunk_size).reshape(lead)


def entropy_from_logits(
    logits: Tensor,
    chunk_size: int | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits / T)``: ``[B, L, V] -> [B, L]``.

    ``-inf`` logits contribute 0. Masked positions (if ``mask`` is given) return 0.
    """
    _check_temperature(temperature)
    lead, v = logits.shape[:-1], logits.shape[-1]
    m = torch.ones(lead, dtype=torch.bool, device=logits.device) if mask is None else _as_bool(mask)

    def rows(mc: Tensor, xc: Tensor) -> Tensor:
        lp = _log_probs(xc, mc, temperature)
        h = -(lp.exp() * lp).sum(-1)
        return torch.where(mc, h, _zero(h))

    return _run_rows(rows, m.reshape(-1), [logits.reshape(-1, v)], chunk_size).reshape(lead)


def sft_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor, chunk_size: int | None = None,
                      label_smoothing: float = 0.0) -> Tensor:
    """Per-token NLL ``-log softmax(logits)[label]``: ``[B, L, V], [B, L] -> [B, L]``.

    Matches ``F.cross_entropy(reduction='none', label_smoothing=...)``; positions with ``mask`` False or
    a negative label (the -100 ignore_index convention) return 0. ``label_smoothing`` eps mixes the
    target with the uniform distribution: ``(1 - eps) * NLL + eps * mean_v(-log p_v)``.
    """
    m = _as_bool(mask) & (labels >= 0)
    lp = gather_logprobs(logits, labels, chunk_size=chunk_size, mask=m)
    nll = -lp
    if label_smoothing:
        v = logits.shape[-1]

        def rows(mc: Tensor, xc: Tensor) -> Tensor:  # mean_v(-log p_v), row by row
            u = -torch.log_softmax(xc.float(), dim=-1).mean(-1)
            return torch.where(mc, u, _zero(u))

        # by rows, in the same chunks as the NLL: no second full [B, L, V] log-softmax in memory
        uniform = _run_rows(rows, m.reshape(-1), [logits.reshape(-1, v)], chunk_size).reshape(m.shape)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * uniform.to(nll.dtype)
    return torch.where(m, nll, _zero(lp))


# ----------------------------------------------------------------------------- advantages
def k1_advantage(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``A = log pi_T(y_t) - log pi_S(y_t)`` ``[B, L]`` (negative single-sample reverse KL), 0 where
    masked, detached: it is a reward, the gradient must flow only through the policy-gradient ratio."""
    d = (teacher_logprobs - student_logprobs).detach()
    return torch.where(_as_bool(mask), d, _zero(d))


def k3_advantage(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``A = -((exp(d) - 1) - d)``, ``d = log pi_T - log pi_S`` ``[B, L]``: the negative k3 estimator of
    KL(student || teacher); always <= 0, lower variance than k1. ``d`` is clamped to [-20, 20] so
    ``exp`` cannot overflow. 0 where masked; detached."""
    m = _as_bool(mask)
    d = (teacher_logprobs - student_logprobs).detach()
    d = torch.where(m, d, _zero(d)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    a = -(torch.expm1(d) - d)
    return torch.where(m, a, _zero(a))


def advantage(
    teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, estimator: str = "k1"
) -> Tensor:
    """Dispatch to :func:`k1_advantage` / :func:`k3_advantage` by name."""
    if estimator == "k1":
        return k1_advantage(teacher_logprobs, student_logprobs, mask)
    if estimator == "k3":
        return k3_advantage(teacher_logprobs, student_logprobs, mask)
    raise ValueError(f"unknown advantage estimator {estimator!r}; valid: {', '.join(ADV_ESTIMATORS)}")


def truncated_is_weight(trainer_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """``w = min(pi_trainer(y_t) / pi_engine(y_t), cap)`` ``[B, L]``, 0 where masked, detached: truncated
    importance sampling (verl's / TRL's TIS) for samples drawn by an engine whose kernels differ from the
    trainer's, so the sampling distribution is the engine's, not exactly pi_old. Multiply the advantage
    by it. The log-ratio is clamped to [-20, 20] so ``exp`` cannot overflow."""
    if cap <= 0:
        raise ValueError(f"truncated importance weight cap must be > 0, got {cap}")
    m = _as_bool(mask)
    d = (trainer_logprobs - engine_logprobs).detach()
    w = torch.exp(torch.where(m, d, _zero(d)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).clamp(max=cap)
    return torch.where(m, w, _zero(w))


def policy_gradient_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float | None = None,
    clip_eps_high: float | None = None,
    agg: str = "seq-mean-token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance-weighted policy-gradient loss (minimised), all inputs ``[B, L]``.

    ``r = exp(logprobs - old_logprobs)`` (log-ratio clamped to [-20, 20], as verl does). Per token:
    ``-r * A`` without clipping; PPO ``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` with
    ``clip_eps`` (``eps_high`` defaults to ``eps``). Reduced with :func:`aggregate` (``agg``). When
    ``old_logprobs == logprobs.detach()`` the gradient is exactly REINFORCE's ``-A grad log pi``.
    Returns ``(loss, stats)`` with detached scalars ``ratio_mean``, ``clip_frac``, ``adv_mean``.
    """
    if clip_eps is None and clip_eps_high is not None:
        raise ValueError("clip_eps_high needs clip_eps (the lower clip range) to be set")
    m = _as_bool(mask)
    log_ratio = torch.where(m, logprobs - old_logprobs, _zero(logprobs))
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = torch.where(m, advantages.detach(), _zero(ratio))
    pg = -adv * ratio
    if clip_eps is not None:
        high = clip_eps if clip_eps_high is None else clip_eps_high
        pg_clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high)
        clip_frac = masked_mean((pg_clipped > pg).to(ratio.dtype), m).detach()
        pg = torch.maximum(pg, pg_clipped)
    else:
        clip_frac = _zero(ratio)
    loss = aggregate(pg, m, agg)
    stats = {
        "ratio_mean": masked_mean(ratio.detach(), m),
        "clip_frac": clip_frac,
        "adv_mean": masked_mean(adv, m),
    }
    return loss, stats


def _full_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
             chunk_size: int | None, student_first: bool) -> Tensor:
    """Full-vocab KL per token, ``KL(p_S || p_T)`` if ``student_first`` else ``KL(p_T || p_S)``."""
    _check_temperature(temperature)
    s, t, m, lead = _pair_rows(student_logits, teacher_logits, mask)

    def rows(mc: Tensor, sc: Tensor, tc: Tensor) -> Tensor:
        ls, lt = _log_probs(sc, mc, temperature), _log_probs(tc, mc, temperature)
        a, b = (ls, lt) if student_first else (lt, ls)
        kl = (a.exp() * (a - b)).sum(-1)
        return torch.where(mc, kl, _zero(kl))

    return _run_rows(rows, m, [s, t], chunk_size).reshape(lead)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Full-vocab ``KL(pi_S || pi_T) = sum_v p_S (log p_S - log p_T)`` per token: ``-> [B, L]``.

    Both softmaxes at ``temperature`` (no T^2 rescaling). Teacher is detached. 0 where masked.
    """
    return _full_kl(student_logits, teacher_logits, mask, temperature, chunk_size, student_first=True)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Full-vocab ``KL(pi_T || pi_S) = sum_v p_T (log p_T - log p_S)`` per token: ``-> [B, L]``.

    Teacher detached; 0 where masked.
    """
    return _full_kl(student_logits, teacher_logits, mask, temperature, chunk_size, student_first=False)


def forward_kl_topk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    k: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL on the teacher's top-k tokens: ``-> [B, L]``.

    ``sum_{v in topk_T} q_T(v) (log q_T(v) - log p_S(v))`` where ``q_T`` is the teacher softmax
    *renormalised over its top-k* (so it is a distribution and the loss is >= 0) and ``p_S`` is the
    student's *full-vocab* softmax (not renormalised: student mass outside the top-k is penalised,
    as in top-k logit distillation where only teacher top-k logits are stored). ``k >= V`` equals
    :func:`forward_kl`. Teacher detached; 0 where masked.
    """
    _check_temperature(temperature)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s, t, m, lead = _pair_rows(student_logits, teacher_logits, mask)
    kk = min(k, s.shape[-1])

    def rows(mc: Tensor, sc: Tensor, tc: Tensor) -> Tensor:
        ls = _log_probs(sc, mc, temperature)
        top_vals, top_idx = _clean_rows(tc, mc, temperature).topk(kk, dim=-1)
        lt = F.log_softmax(top_vals, dim=-1).clamp_min(LOGPROB_FLOOR)
        kl = (lt.exp() * (lt - ls.gather(-1, top_idx))).sum(-1)
        return torch.where(mc, kl, _zero(kl))

    return _run_rows(rows, m, [s, t], chunk_size).reshape(lead)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Generalised JSD per token (TRL GKD convention): ``-> [B, L]``.

    ``beta = 0``: forward KL(p_T || p_S); ``beta = 1``: reverse KL(p_S || p_T); otherwise
    ``beta KL(p_T || m) + (1 - beta) KL(p_S || m)`` with ``m = beta p_T + (1 - beta) p_S`` computed in
    log space (``logaddexp``). Teacher detached; 0 where masked.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature, chunk_size)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature, chunk_size)
    _check_temperature(temperature)
    s, t, m, lead = _pair_rows(student_logits, teacher_logits, mask)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)

    def rows(mc: Tensor, sc: Tensor, tc: Tensor) -> Tensor:
        ls, lt = _log_probs(sc, mc, temperature), _log_probs(tc, mc, temperature)
        lm = torch.logaddexp(lt + log_b, ls + log_1mb)
        jsd = beta * (lt.exp() * (lt - lm)).sum(-1) + (1.0 - beta) * (ls.exp() * (ls - lm)).sum(-1)
        return torch.where(mc, jsd, _zero(jsd))

    return _run_rows(rows, m, [s, t], chunk_size).reshape(lead)
