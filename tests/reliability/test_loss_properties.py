"""Property tests: xopd.losses on random shapes, masks (incl. all-False), temperatures and -inf garbage
equal straightforward F.log_softmax reference implementations, stay finite, and give finite grads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xopd.losses import (
    aggregate,
    entropy_from_logits,
    forward_kl,
    forward_kl_topk,
    gather_logprobs,
    generalized_jsd,
    k1_advantage,
    k3_advantage,
    policy_gradient_loss,
    reverse_kl,
    sft_cross_entropy,
)

SETTINGS = settings(max_examples=40, deadline=None)
ATOL, RTOL = 1e-5, 1e-4


@st.composite
def cases(draw):
    b, length = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vs, vt = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    mask_kind = draw(st.sampled_from(["random", "all_false", "all_true"]))
    temperature = draw(st.floats(0.5, 2.0))
    chunk = draw(st.one_of(st.none(), st.integers(1, 5)))
    g = torch.Generator().manual_seed(seed)
    if mask_kind == "random":
        mask = torch.rand(b, length, generator=g) < 0.6
    else:
        mask = torch.full((b, length), mask_kind == "all_true")
    s = 3.0 * torch.randn(b, length, vs, generator=g)
    t = 3.0 * torch.randn(b, length, vt, generator=g)
    ids = torch.randint(0, min(vs, vt), (b, length), generator=g)
    # garbage on masked positions: -inf rows, -100 ids
    s[~mask] = float("-inf")
    t[~mask] = float("-inf")
    ids = torch.where(mask, ids, -100)
    return dict(s=s, t=t, ids=ids, mask=mask, temperature=temperature, chunk=chunk)


def _ref_lp(x: torch.Tensor, mask: torch.Tensor, temperature: float, v: int) -> torch.Tensor:
    x = torch.where(mask[..., None], x[..., :v], 0.0)
    return F.log_softmax(x / temperature, dim=-1)


def _close_on_mask(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    torch.testing.assert_close(out[mask], ref[mask], atol=ATOL, rtol=RTOL)


def _finite_grad(out: torch.Tensor, leaf: torch.Tensor) -> None:
    (g,) = torch.autograd.grad(aggregate(out, torch.isfinite(out)), leaf)
    assert torch.isfinite(g).all()


@SETTINGS
@given(cases())
def test_logprobs_entropy_sft_match_reference(c):
    s, ids, mask, temp, chunk = c["s"].requires_grad_(True), c["ids"], c["mask"], c["temperature"], c["chunk"]
    v = s.shape[-1]
    lp_ref = _ref_lp(s.detach(), mask, temp, v)
    safe_ids = torch.where(mask, ids, 0)[..., None]
    out = gather_logprobs(s, ids, temperature=temp, chunk_size=chunk, mask=mask)
    _close_on_mask(out, lp_ref.gather(-1, safe_ids).squeeze(-1), mask)
    _finite_grad(out, s)
    ent = entropy_from_logits(s, chunk_size=chunk, temperature=temp, mask=mask)
    _close_on_mask(ent, -(lp_ref.exp() * lp_ref).sum(-1), mask)
    _finite_grad(ent, s)
    ce = sft_cross_entropy(s, ids, mask, chunk_size=chunk)
    _close_on_mask(ce, -_ref_lp(s.detach(), mask, 1.0, v).gather(-1, safe_ids).squeeze(-1), mask)
    _finite_grad(ce, s)


@SETTINGS
@given(cases(), st.floats(0.0, 1.0), st.integers(1, 12))
def test_divergences_match_reference(c, beta, k):
    s, t, mask, temp, chunk = c["s"].requires_grad_(True), c["t"], c["mask"], c["temperature"], c["chunk"]
    v = min(s.shape[-1], t.shape[-1])
    ls, lt = _ref_lp(s.detach(), mask, temp, v), _ref_lp(t, mask, temp, v)
    ps, pt = ls.exp(), lt.exp()
    rkl_ref = (ps * (ls - lt)).sum(-1)
    fkl_ref = (pt * (lt - ls)).sum(-1)
    if beta in (0.0, 1.0):
        jsd_ref = fkl_ref if beta == 0.0 else rkl_ref
    else:
        lm = torch.log(beta * pt + (1 - beta) * ps)
        jsd_ref = beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)
    kk = min(k, v)
    tv = torch.where(mask[..., None], t[..., :v], 0.0) / temp
    top_vals, top_idx = tv.topk(kk, -1)
    q = F.log_softmax(top_vals, -1)
    topk_ref = (q.exp() * (q - ls.gather(-1, top_idx))).sum(-1)
    results = [
        (reverse_kl(s, t, mask, temperature=temp, chunk_size=chunk), rkl_ref),
        (forward_kl(s, t, mask, temperature=temp, chunk_size=chunk), fkl_ref),
        (generalized_jsd(s, t, mask, beta=beta, temperature=temp, chunk_size=chunk), jsd_ref),
        (forward_kl_topk(s, t, mask, k=k, temperature=temp, chunk_size=chunk), topk_ref),
    ]
    for out, ref in results:
        _close_on_mask(out, ref, mask)
        assert (out[mask] >= -1e-5).all()  # divergences are non-negative
        _finite_grad(out, s)


@SETTINGS
@given(
    cases(),
    st.sampled_from([None, 0.1, 0.3]),
    st.sampled_from(["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]),
)
def test_advantages_and_policy_loss_match_reference(c, clip, agg):
    s, t, ids, mask, temp = c["s"].requires_grad_(True), c["t"], c["ids"], c["mask"], c["temperature"]
    v = min(s.shape[-1], t.shape[-1])
    lp = gather_logprobs(s[..., :v], ids, temperature=temp, mask=mask)
    tlp = gather_logprobs(t[..., :v], ids, temperature=temp, mask=mask)
    # masked positions hold -inf garbage in the log-prob tensors too
    lp_g = torch.where(mask, lp, float("-inf"))
    tlp_g = torch.where(mask, tlp, float("-inf"))
    a1, a3 = k1_advantage(tlp_g, lp_g, mask), k3_advantage(tlp_g, lp_g, mask)
    d = (tlp - lp).detach().clamp(-20, 20)
    _close_on_mask(a1, (tlp - lp).detach(), mask)
    _close_on_mask(a3, -(d.exp() - 1 - d), mask)
    assert (a3 <= 0).all()

    old = (lp.detach() + 0.2 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(0))).where(
        mask, float("-inf")
    )
    loss, stats = policy_gradient_loss(lp_g, old, a1, mask, clip_eps=clip, agg=agg)
    (g,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(torch.isfinite(x) for x in stats.values())
    # reference: explicit loops over sequences and tokens
    r = torch.exp(lp.detach() - old)
    per_seq, n_tok, total = [], 0, 0.0
    for bi in range(mask.shape[0]):
        vals = []
        for ti in range(mask.shape[1]):
            if mask[bi, ti]:
                rt, at = r[bi, ti].item(), a1[bi, ti].item()
                x = -rt * at if clip is None else -min(rt * at, min(max(rt, 1 - clip), 1 + clip) * at)
                vals.append(x)
        n_tok += len(vals)
        total += sum(vals)
        if vals:
            per_seq.append(sum(vals) / len(vals) if agg == "seq-mean-token-mean" else sum(vals))
    if agg == "token-mean":
        expected = total / n_tok if n_tok else 0.0
    else:
        expected = sum(per_seq) / len(per_seq) if per_seq else 0.0
    assert math.isclose(loss.item(), expected, rel_tol=1e-4, abs_tol=1e-5)
    if not mask.any():
        assert loss.item() == 0.0
