"""Shared-prompt scoring: n responses scored against ONE forward of their prompt give the same log-probs
and gradients as repeating the prompt n times (issue: compute each prompt once for its n samples)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from xopd import cpu
from xopd.algos.base import make_prompts
from xopd.data.manifest import read_manifest
from xopd.generation import response_logits, response_logprobs, sample
from xopd.models import load_student, load_teacher
from xopd.models.base import Prompt


def _rollout(model, batch, n, seed=0, max_new=9):
    return sample(model, batch, n=n, max_new_tokens=max_new, temperature=1.0, generator=torch.Generator().manual_seed(seed))


def _check(model, prompts, n, *, grads: bool):
    batch = model.embed_prompts(prompts)
    ro = _rollout(model, batch, n)
    params = [p for p in model.parameters() if p.requires_grad]
    w = torch.randn(ro.ids.shape[0], ro.ids.shape[1], generator=torch.Generator().manual_seed(3))

    def run(shared: bool):
        model.zero_grad(set_to_none=True)
        b = model.embed_prompts(prompts)
        if shared:
            lp = response_logprobs(model, b, ro.ids, ro.mask, n=n)
        else:
            lp = response_logprobs(model, b.repeat_interleave(n), ro.ids, ro.mask)
        if grads:
            (lp * w).sum().backward()
        return lp.detach(), [None if p.grad is None else p.grad.clone() for p in params]

    lp_s, g_s = run(True)
    lp_r, g_r = run(False)
    torch.testing.assert_close(lp_s, lp_r, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_s, ro.logprobs, atol=2e-5, rtol=1e-4)  # == what sampling kept (pi_old)
    if grads:
        assert any(g is not None for g in g_s)
        for a, b in zip(g_s, g_r, strict=True):
            if a is None:
                assert b is None
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def world(tiny_world):
    examples, _ = read_manifest(tiny_world["manifest"])
    return tiny_world, examples[:4]  # mixed lengths: left padding in every batch


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("view", ["S", "T"])
def test_speech_llm_shared_equals_repeated(world, n, view):
    tw, examples = world
    student = load_student(tw["student"]).eval()
    student.requires_grad_(False)
    student.causal_lm().requires_grad_(True)
    student.projector.requires_grad_(True)  # gradients must also reach the prompt's trainable inputs
    _check(student, make_prompts(examples, view), n, grads=True)


@pytest.mark.parametrize("n", [2, 4])
def test_text_teacher_shared_equals_repeated(world, n):
    tw, examples = world
    teacher = load_teacher(tw["teacher"])
    with torch.no_grad():
        _check(teacher, make_prompts(examples, "T"), n, grads=False)


def test_lora_student_shared_equals_repeated(world):
    from xopd.training.lora import apply_lora

    tw, examples = world
    student = load_student(tw["student"]).eval()
    apply_lora(student, r=4, alpha=8, targets="q_proj,v_proj", seed=0)
    student.requires_grad_(False)
    for name, p in student.causal_lm().named_parameters():
        p.requires_grad_("lora_" in name)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, p in student.causal_lm().named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    _check(student, make_prompts(examples, "S"), 4, grads=True)


def test_qwen2_audio_shared_equals_repeated(tmp_path):
    import numpy as np

    from xopd.lab.tiny import build_tiny_qwen2_audio

    student = build_tiny_qwen2_audio().eval()
    student.requires_grad_(False)
    student.causal_lm().requires_grad_(True)
    rng = np.random.default_rng(0)
    prompts = [Prompt(None, audio=(0.1 * rng.standard_normal(16000 * s // 4)).astype(np.float32), view="S")
               for s in (2, 3)] + [Prompt("what is 2 plus 3?")]
    _check(student, prompts, 3, grads=True)


def test_gradient_checkpointing_falls_back_to_repeating(world, capsys):
    tw, examples = world
    student = load_student(tw["student"]).eval()
    batch = student.embed_prompts(make_prompts(examples, "T"))
    ro = _rollout(student, batch, 2)
    want = response_logits(student, batch, ro.ids, ro.mask, n=2)
    student.causal_lm().gradient_checkpointing_enable()
    got = response_logits(student, batch, ro.ids, ro.mask, n=2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prompts x n=3"):
        response_logits(student, batch, ro.ids, ro.mask, n=3)


@pytest.mark.parametrize("static", [True, False])
def test_unshared_prefill_samples_the_same_responses(world, static):
    """``shared_prompt: false`` (what benchmarks compare against) prefills every sample's own copy of its
    prompt: more FLOPs, the same per-prompt-seeded samples and log-probs."""
    tw, examples = world
    teacher = load_teacher(tw["teacher"]).eval()
    prompts = make_prompts(examples, "T")
    outs = []
    for shared in (True, False):
        teacher.shared_prompt_ok = shared
        # static: the CPU kit's decode path (static cache, lean decode step); else the HF forward, dynamic cache
        with torch.no_grad(), cpu.activated() if static else contextlib.nullcontext():
            outs.append(sample(teacher, teacher.embed_prompts(prompts), n=3, max_new_tokens=7, temperature=1.0,
                               row_seeds=[11, 12, 13, 14], static_cache=static))
    teacher.shared_prompt_ok = True
    a, b = outs
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
