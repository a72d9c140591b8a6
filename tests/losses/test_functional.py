"""Unit tests for xopd.losses.functional: hand values, references, masking, chunking, vocab mismatch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xopd.losses import (
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
)

NEG_INF = float("-inf")
LN = math.log


def _t(x, **kw) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, **kw)


def _rand(*shape: int, seed: int = 0, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(*shape, generator=g)).requires_grad_(grad)


def _grad(fn, *leaves: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(fn().sum(), leaves))


MASK = torch.tensor([[True, True, False, True], [False, True, True, False], [False, False, False, False]])


# ------------------------------------------------------------------------- hand-computed values
def test_gather_logprobs_hand_values():
    logits = _t([[[LN(1), LN(2), LN(3)]] * 3])  # softmax = [1/6, 2/6, 3/6]
    ids = torch.tensor([[0, 1, 2]])
    out = gather_logprobs(logits, ids)
    torch.testing.assert_close(out, _t([[-1.791759469, -1.098612289, -0.693147181]]))
    # temperature 2 on logits [0, 2 ln 3] -> softmax([0, ln 3]) = [1/4, 3/4]
    out_t = gather_logprobs(_t([[[0.0, 2 * LN(3)]]]), torch.tensor([[1]]), temperature=2.0)
    torch.testing.assert_close(out_t, _t([[LN(0.75)]]))


def test_divergences_hand_values():
    s = _t([[[0.0, 0.0]]])  # p_S = [0.5, 0.5]
    t = _t([[[0.0, LN(3)]]])  # p_T = [0.25, 0.75]
    m = torch.ones(1, 1, dtype=torch.bool)
    torch.testing.assert_close(reverse_kl(s, t, m), _t([[0.14384103622589042]]))
    torch.testing.assert_close(forward_kl(s, t, m), _t([[0.13081203594113697]]))
    torch.testing.assert_close(generalized_jsd(s, t, m, beta=0.5), _t([[0.033822075568605205]]))
    torch.testing.assert_close(entropy_from_logits(_t([[[1.0, 1.0, 1.0]]])), _t([[LN(3)]]))
    # top-2 of teacher p_T = [1/8, 2/8, 5/8] renormalised -> [5/7, 2/7]; student uniform over 3
    t3, s3 = _t([[[LN(1), LN(2), LN(5)]]]), _t([[[0.0, 0.0, 0.0]]])
    torch.testing.assert_close(forward_kl_topk(s3, t3, m, k=2), _t([[0.5003427000828525]]))


def test_advantage_hand_values():
    teacher, student = _t([[LN(0.5), 5.0]]), _t([[LN(0.25), NEG_INF]])
    m = torch.tensor([[True, False]])
    torch.testing.assert_close(k1_advantage(teacher, student, m), _t([[LN(2), 0.0]]))
    torch.testing.assert_close(k3_advantage(teacher, student, m), _t([[-0.3068528194400547, 0.0]]))
    torch.testing.assert_close(advantage(teacher, student, m, "k3"), k3_advantage(teacher, student, m))


def test_advantages_are_detached_and_k3_nonpositive_and_finite():
    s = _rand(3, 4, seed=1, grad=True)
    t = _rand(3, 4, seed=2) * 30  # large gaps: k3 must not overflow
    for fn in (k1_advantage, k3_advantage):
        a = fn(t, s, MASK)
        assert not a.requires_grad and torch.isfinite(a).all()
    assert (k3_advantage(t, s, MASK) <= 0).all()
    with pytest.raises(ValueError, match="k1, k3"):
        advantage(t, s, MASK, "k2")


def test_aggregate_modes_hand_values():
    x = _t([[1.0, 2.0, float("inf")], [4.0, float("nan"), 0.0], [9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # 0/1 int mask, third sequence empty
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(2.75)
    assert aggregate(x, m, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(3.5)
    assert aggregate(x, m).item() == pytest.approx(2.75)
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean, seq-mean-token-sum"):
        aggregate(x, m, "mean")


def test_masked_mean():
    x = _t([[1.0, 3.0, float("inf")], [2.0, 2.0, 2.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, m, dim=-1), _t([2.0, 0.0]))
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


# ------------------------------------------------------------------------- policy gradient
def test_policy_gradient_ratio_one_is_reinforce():
    logits = _rand(3, 4, 5, seed=3, grad=True)
    ids = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(4))
    adv = _rand(3, 4, seed=5)
    for clip in (None, 0.2):
        for agg in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum"):
            lp = gather_logprobs(logits, ids)
            loss, stats = policy_gradient_loss(lp, lp.detach(), adv, MASK, clip_eps=clip, agg=agg)
            (g,) = torch.autograd.grad(loss, logits)
            (g_ref,) = torch.autograd.grad(aggregate(-adv * gather_logprobs(logits, ids), MASK, agg), logits)
            torch.testing.assert_close(g, g_ref)
            assert stats["ratio_mean"].item() == pytest.approx(1.0)
            assert stats["clip_frac"].item() == 0.0


def test_policy_gradient_clip_hand_values():
    ratio = _t([[1.5, 0.5, 1.1, 1.5]])
    old = _t([[-1.0, -2.0, -0.5, -3.0]])
    lp = (old + ratio.log()).requires_grad_(True)
    adv = _t([[1.0, -1.0, 1.0, -1.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    # per token: -1.2 (clipped), 0.8 (clipped), -1.1, 1.5 (pessimistic, unclipped)
    loss, stats = policy_gradient_loss(lp, old, adv, m, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(1.15)
    assert stats["adv_mean"].item() == pytest.approx(0.0)
    loss, stats = policy_gradient_loss(lp, old, adv, m, clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 0.8 - 1.1 + 1.5) / 4, abs=1e-6)
    (g,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(g, _t([[0.0, 0.0, -1.1 / 4, 1.5 / 4]]))  # clipped tokens: no grad
    loss_nc, stats_nc = policy_gradient_loss(lp, old, adv, m)
    assert loss_nc.item() == pytest.approx((-1.5 + 0.5 - 1.1 + 1.5) / 4, abs=1e-6)
    assert stats_nc["clip_frac"].item() == 0.0
    with pytest.raises(ValueError):
        policy_gradient_loss(lp, old, adv, m, clip_eps_high=0.28)


def test_policy_gradient_garbage_at_masked_positions():
    lp = _t([[-1.0, NEG_INF], [NEG_INF, NEG_INF]]).requires_grad_(True)
    old = _t([[-1.2, -3.0], [NEG_INF, 0.0]])
    adv = _t([[0.5, float("inf")], [NEG_INF, 1.0]])
    m = torch.tensor([[True, False], [False, False]])
    loss, stats = policy_gradient_loss(lp, old, adv, m, clip_eps=0.2)
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and g[0, 1] == 0 and (g[1] == 0).all()
    assert all(torch.isfinite(v) for v in stats.values())


# ------------------------------------------------------------------------- references
def test_gather_logprobs_and_sft_match_torch():
    logits = _rand(3, 4, 6, seed=6)
    ids = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(7))
    ref = F.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits, ids), ref)
    ref_t = F.log_softmax(logits / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits, ids, temperature=0.7), ref_t)
    labels = torch.where(MASK, ids, -100)
    ce = F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), reduction="none").reshape(3, 4)
    torch.testing.assert_close(sft_cross_entropy(logits, labels, MASK), ce)
    torch.testing.assert_close(sft_cross_entropy(logits, labels, torch.ones(3, 4)), ce)  # -100 ignored
    ce_ls = F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(sft_cross_entropy(logits, labels, MASK, label_smoothing=0.1), ce_ls.reshape(3, 4))


def test_kl_references():
    s, t = _rand(3, 4, 7, seed=8), _rand(3, 4, 7, seed=9)
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    rkl_ref = F.kl_div(lt, ls, log_target=True, reduction="none").sum(-1) * MASK
    fkl_ref = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1) * MASK
    torch.testing.assert_close(reverse_kl(s, t, MASK), rkl_ref)
    torch.testing.assert_close(forward_kl(s, t, MASK), fkl_ref)
    torch.testing.assert_close(forward_kl_topk(s, t, MASK, k=7), fkl_ref)
    torch.testing.assert_close(forward_kl_topk(s, t, MASK, k=100), fkl_ref)
    torch.testing.assert_close(generalized_jsd(s, t, MASK, beta=0.0), fkl_ref)
    torch.testing.assert_close(generalized_jsd(s, t, MASK, beta=1.0), rkl_ref)
    # TRL's mixture formula for 0 < beta < 1
    beta = 0.3
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), 0)
    kl_t = F.kl_div(lm, lt, log_target=True, reduction="none").sum(-1)
    kl_s = F.kl_div(lm, ls, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(
        generalized_jsd(s, t, MASK, beta=beta), (beta * kl_t + (1 - beta) * kl_s) * MASK
    )
    # symmetric at beta = 0.5
    torch.testing.assert_close(generalized_jsd(s, t, MASK), generalized_jsd(t, s, MASK))
    # top-k is >= 0 and shrinks to the full KL as k grows to V
    assert (forward_kl_topk(s, t, MASK, k=2) >= 0).all()


def test_identical_distributions_give_zero():
    x = _rand(3, 4, 5, seed=10)
    for fn in (reverse_kl, forward_kl, generalized_jsd):
        torch.testing.assert_close(fn(x, x.clone(), MASK), torch.zeros(3, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(forward_kl_topk(x, x.clone(), MASK, k=5), torch.zeros(3, 4), atol=1e-6, rtol=0)


def test_teacher_gets_no_gradient():
    s, t = _rand(2, 3, 5, seed=11, grad=True), _rand(2, 3, 5, seed=12, grad=True)
    m = torch.ones(2, 3)
    for fn in (reverse_kl, forward_kl, generalized_jsd):
        fn(s, t, m).sum().backward()
    forward_kl_topk(s, t, m, k=2).sum().backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------- chunking
DIVERGENCES = [
    lambda s, t, m, c: reverse_kl(s, t, m, temperature=0.8, chunk_size=c),
    lambda s, t, m, c: forward_kl(s, t, m, chunk_size=c),
    lambda s, t, m, c: forward_kl_topk(s, t, m, k=3, chunk_size=c),
    lambda s, t, m, c: generalized_jsd(s, t, m, beta=0.3, temperature=1.5, chunk_size=c),
]


@pytest.mark.parametrize("chunk", [1, 5, 12, 100])
def test_chunked_equals_unchunked(chunk):
    s, t = _rand(3, 4, 9, seed=13, grad=True), _rand(3, 4, 9, seed=14)
    ids = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(15))
    cases = [
        lambda c: gather_logprobs(s, ids, temperature=0.7, chunk_size=c),
        lambda c: entropy_from_logits(s, chunk_size=c),
        lambda c: sft_cross_entropy(s, ids, MASK, chunk_size=c),
        lambda c: sft_cross_entropy(s, ids, MASK, chunk_size=c, label_smoothing=0.1),
    ] + [lambda c, f=f: f(s, t, MASK, c) for f in DIVERGENCES]
    for fn in cases:
        torch.testing.assert_close(fn(chunk), fn(None))
        torch.testing.assert_close(_grad(lambda fn=fn: fn(chunk), s), _grad(lambda fn=fn: fn(None), s))
    with torch.no_grad():
        torch.testing.assert_close(cases[0](chunk), cases[0](None))


def test_bad_chunk_size_and_args():
    s, t = _rand(2, 3, 4, seed=16), _rand(2, 3, 4, seed=17)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError):
        reverse_kl(s, t, m, chunk_size=0)
    with pytest.raises(ValueError):
        generalized_jsd(s, t, m, beta=1.5)
    with pytest.raises(ValueError):
        forward_kl_topk(s, t, m, k=0)
    with pytest.raises(ValueError):
        reverse_kl(s, t, torch.ones(2, 4))
    with pytest.raises(ValueError):
        gather_logprobs(s, torch.full((2, 3), 4))  # id out of range
    with pytest.raises(ValueError):
        gather_logprobs(s, torch.zeros(2, 3, dtype=torch.long), temperature=0.0)


# ------------------------------------------------------------------------- masking / -inf / NaN safety
def test_all_masked_gives_exact_zero_and_finite_grads():
    s = torch.full((2, 3, 5), NEG_INF).requires_grad_(True)
    t = torch.full((2, 3, 5), NEG_INF)
    m = torch.zeros(2, 3, dtype=torch.bool)
    ids = torch.full((2, 3), -100)
    outs = [fn(s, t, m, 2) for fn in DIVERGENCES] + [
        gather_logprobs(s, ids, mask=m),
        entropy_from_logits(s, mask=m),
        sft_cross_entropy(s, ids, m),
    ]
    for out in outs:
        for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum"):
            loss = aggregate(out, m, mode)
            (g,) = torch.autograd.grad(loss, s, retain_graph=True)
            assert loss.item() == 0.0 and torch.isfinite(g).all()
    lp = gather_logprobs(s, ids, mask=m)
    loss, stats = policy_gradient_loss(lp, torch.full((2, 3), NEG_INF), torch.full((2, 3), NEG_INF), m, 0.2)
    (g,) = torch.autograd.grad(loss, s)
    assert loss.item() == 0.0 and torch.isfinite(g).all()
    assert all(v.item() == 0.0 for v in stats.values())


def test_inf_logits_on_masked_rows_and_banned_vocab():
    s, t = _rand(3, 4, 6, seed=18), _rand(3, 4, 6, seed=19)
    s[~MASK] = NEG_INF  # padded positions: whole row -inf
    t[~MASK] = float("nan")
    s[..., 5] = NEG_INF  # a banned token for the student everywhere
    t[..., 5] = NEG_INF  # ... and for the teacher
    s.requires_grad_(True)
    ids = torch.where(MASK, torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(20)), -100)
    s_ok, t_ok = s.detach()[..., :5], t[..., :5]  # reference: the 5 real tokens
    for fn in DIVERGENCES:
        out = fn(s, t, MASK, 3)
        (g,) = torch.autograd.grad(out.sum(), s)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
        torch.testing.assert_close(out[MASK], fn(s_ok, t_ok, MASK, None)[MASK])
        assert (out[~MASK] == 0).all()
    for out in (
        gather_logprobs(s, ids, mask=MASK),
        entropy_from_logits(s, mask=MASK),
        sft_cross_entropy(s, ids, MASK),
    ):
        (g,) = torch.autograd.grad(out.sum(), s)
        assert torch.isfinite(out).all() and torch.isfinite(g).all() and (out[~MASK] == 0).all()


def test_teacher_inf_where_student_has_mass_is_finite():
    s, t = _rand(2, 3, 5, seed=21, grad=True), _rand(2, 3, 5, seed=22)
    t[..., 4] = NEG_INF
    m = torch.ones(2, 3)
    for fn in DIVERGENCES:
        out = fn(s, t, m, None)
        (g,) = torch.autograd.grad(out.sum(), s)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()


def test_vocab_mismatch_truncates_to_common_vocab():
    s, t7 = _rand(2, 3, 7, seed=23, grad=True), _rand(2, 3, 7, seed=24)
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    for pad in (NEG_INF, 50.0):  # padding rows: -inf or garbage
        t9 = torch.cat([t7, torch.full((2, 3, 2), pad)], -1)
        for fn in DIVERGENCES:
            torch.testing.assert_close(fn(s, t9, m, 2), fn(s, t7, m, None))
            assert torch.isfinite(fn(s, t9, m, None)).all()
        # student with the larger (padded) vocab
        s9 = torch.cat([s, torch.full((2, 3, 2), pad)], -1)
        for fn in DIVERGENCES:
            torch.testing.assert_close(fn(s9, t7, m, None), fn(s, t7, m, None))


def test_half_precision_is_upcast():
    s, t = _rand(2, 3, 8, seed=25), _rand(2, 3, 8, seed=26)
    m = torch.ones(2, 3)
    out = reverse_kl(s.bfloat16(), t.bfloat16(), m)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reverse_kl(s.bfloat16().float(), t.bfloat16().float(), m))


def test_truncated_is_weight_hand_values():
    from xopd.losses import truncated_is_weight

    trainer = torch.tensor([[0.0, math.log(3.0), 5.0]])
    engine = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    w = truncated_is_weight(trainer, engine, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[0.5, 2.0, 0.0]]))  # 1/2; 3 capped at 2; masked 0
    assert truncated_is_weight(trainer, engine, torch.zeros_like(mask), cap=2.0).sum() == 0
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weight(trainer, engine, mask, cap=0.0)
