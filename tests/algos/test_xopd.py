"""The X-OPD objective wiring: view weights, lambda edge cases skip the unused view entirely."""

from __future__ import annotations

import pytest
import torch

from xopd.algos.xopd import XOPD, view_weights
from xopd.data.manifest import read_manifest
from xopd.models import check_tokenizer_alignment, load_student, load_teacher
from xopd.training.config import TrainConfig


def test_view_weights():
    assert view_weights(0.5) == [("S", 0.5), ("T", 0.5)]
    assert view_weights(0.0) == [("S", 1.0)]
    assert view_weights(1.0) == [("T", 1.0)]


def _algo(tiny_world, **kw):
    student = load_student(tiny_world["student"]).eval()
    teacher = load_teacher(tiny_world["teacher"])
    rep = check_tokenizer_alignment(student.tokenizer, teacher.tokenizer, student.vocab_size, teacher.vocab_size)
    cfg = TrainConfig(student_path="x", teacher_path="y", manifest="z", max_new_tokens=6, n_samples=2, **kw)
    examples, _ = read_manifest(tiny_world["manifest"])
    return XOPD(cfg, student, teacher, rep.shared_vocab_size), examples[:2]


@pytest.mark.parametrize("lam,views", [(0.0, {"S"}), (1.0, {"T"}), (0.5, {"S", "T"})])
def test_lambda_edges_skip_unused_view(tiny_world, lam, views, monkeypatch):
    algo, examples = _algo(tiny_world, lam=lam)
    seen = []
    orig = algo.student.embed_prompts

    def spy(prompts):
        seen.extend(p.view for p in prompts)
        return orig(prompts)

    monkeypatch.setattr(algo.student, "embed_prompts", spy)
    out = algo.step(examples, torch.Generator().manual_seed(0))
    assert set(seen) == views
    assert torch.isfinite(out.loss)
    assert out.loss.requires_grad
    assert {f"reverse_kl_{v}" for v in views} <= set(out.metrics)


@pytest.mark.parametrize("loss", ["pg", "reverse_kl", "jsd", "topk_forward_kl"])
def test_every_loss_backpropagates(tiny_world, loss):
    algo, examples = _algo(tiny_world, loss=loss, topk=5)
    out = algo.step(examples, torch.Generator().manual_seed(0))
    out.loss.backward()
    grads = [p.grad for p in algo.student.causal_lm().parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_pg_loss_at_ratio_one_is_minus_mean_advantage(tiny_world):
    """With one update per batch r == 1, so L = -lam*mean(A_im) - (1-lam)*mean(A_cm) (k1)."""
    algo, examples = _algo(tiny_world, lam=0.5, agg="token-mean")
    out = algo.step(examples, torch.Generator().manual_seed(3))
    expect = 0.5 * out.metrics["reverse_kl_S"] + 0.5 * out.metrics["reverse_kl_T"]
    assert float(out.loss.detach()) == pytest.approx(expect, abs=1e-5)


def test_lean_head_step_equals_the_full_logits_step(tiny_world):
    """``lean_head: on`` (auto's choice on CUDA) gives the pg step's loss, metrics and gradients of the
    full-logits path; a loss that needs full logits keeps them."""
    runs = []
    for lean in ("off", "on"):
        algo, examples = _algo(tiny_world, lean_head=lean, logprob_chunk=7)
        student = algo.student
        out = algo.step(examples, torch.Generator().manual_seed(0))
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
        runs.append((float(out.loss.detach()), out.metrics, grads))
    (l0, m0, g0), (l1, m1, g1) = runs
    assert l1 == pytest.approx(l0, abs=1e-6)
    assert m1.keys() == m0.keys() and all(m1[k] == pytest.approx(m0[k], abs=1e-5) for k in m0)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss", ["pg", "topk_forward_kl"])
def test_one_rollout_of_two_micro_batches_equals_two_rollouts(tiny_world, loss):
    """``prepare`` over two micro-batches (``rollout_batch_size``) gives each the samples, pi_old and
    teacher scores of a rollout of its own (per-prompt seeds), and the same loss."""
    from xopd.generation import StepGenerator, derive_seed

    algo, _ = _algo(tiny_world, loss=loss, topk=5, lam=0.5)
    examples, _ = read_manifest(tiny_world["manifest"])
    parts, seeds = [examples[0:2], examples[2:4]], [[derive_seed(0, 0, p) for p in r] for r in ((0, 1), (2, 3))]
    gen = StepGenerator()
    gen.prompt_seeds = seeds[0] + seeds[1]
    together = algo.prepare(parts, gen)
    for part, s, prep in zip(parts, seeds, together):
        gen.prompt_seeds = s
        alone = algo.prepare([part], gen)[0]
        assert torch.equal(prep.ro.ids, alone.ro.ids) and torch.equal(prep.ro.mask, alone.ro.mask)
        assert torch.equal(prep.ro.prompt_index, alone.ro.prompt_index)
        torch.testing.assert_close(prep.ro.logprobs, alone.ro.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(prep.teacher_lp, alone.teacher_lp, atol=1e-5, rtol=0)
        assert [p.view for p in prep.student_prompts] == [p.view for p in alone.student_prompts]
        a = algo.step(part, gen, prepared=prep)
        b = algo.step(part, gen, prepared=alone)
        assert float(a.loss.detach()) == pytest.approx(float(b.loss.detach()), abs=1e-5) and a.tokens == b.tokens
