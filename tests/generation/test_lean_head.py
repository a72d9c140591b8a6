"""Sampled-token log-probs from a chunked LM head (issue 28): equal to the full-logits path (values and
gradients, 1e-5) for every student class and the teacher, shared prompt or not, with checkpointing on
and off; and no ``[rows, length, vocab]`` tensor is kept for backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xopd.generation import response_logprobs, sample
from xopd.generation.lean_head import lean_head_ok, lean_response_logprobs
from xopd.models import load_student, load_teacher
from xopd.models.base import Prompt
from xopd.training.memory import enable_gradient_checkpointing, mark_checkpointed_layers


def _prompts(spoken: bool) -> list[Prompt]:
    rng = np.random.default_rng(0)
    text = [Prompt("what is two plus three?"), Prompt("say the colours of the sky please")]
    if not spoken:
        return text
    return [Prompt(None, audio=(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32), view="S")
            for s in (0.7, 1.3)] + text


def _both(model, prompts, ro, n, vocab_limit, temperature):
    outs = []
    for lean in (False, True):
        model.zero_grad(set_to_none=True)
        batch = model.embed_prompts(prompts)
        if lean:
            lp = lean_response_logprobs(model, batch, ro.ids, ro.mask, temperature=temperature, chunk=5,
                                        vocab_limit=vocab_limit, n=n)
        else:
            lp = response_logprobs(model, batch, ro.ids, ro.mask, temperature=temperature, vocab_limit=vocab_limit,
                                   n=n)
        (lp * torch.linspace(-1, 1, lp.numel()).reshape(lp.shape)).sum().backward()
        outs.append((lp.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    return outs


def _check(model, prompts, checkpointing: bool = False):
    model.eval()
    model.requires_grad_(False)
    model.causal_lm().requires_grad_(True)
    if checkpointing:
        enable_gradient_checkpointing(model)
        mark_checkpointed_layers(model)
    assert lean_head_ok(model)
    vocab_limit = model.vocab_size - 3
    for n in (1, 3):
        with torch.no_grad():
            ro = sample(model, model.embed_prompts(prompts), n=n, max_new_tokens=6, temperature=1.0,
                        generator=torch.Generator().manual_seed(n), vocab_limit=vocab_limit)
        (lp_full, g_full), (lp_lean, g_lean) = _both(model, prompts, ro, n, vocab_limit, temperature=0.7)
        torch.testing.assert_close(lp_lean, lp_full, atol=1e-5, rtol=0)
        assert g_full.keys() == g_lean.keys() and g_full
        for k in g_full:
            torch.testing.assert_close(g_lean[k], g_full[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_speech_llm(tiny_world, checkpointing):
    _check(load_student(tiny_world["student"]), _prompts(False) + _prompts(True)[:1], checkpointing)


def test_teacher(tiny_world):
    _check(load_teacher(tiny_world["teacher"]), _prompts(False))


def test_qwen2_audio():
    from xopd.lab.tiny import build_tiny_qwen2_audio

    _check(build_tiny_qwen2_audio(), _prompts(True))


@pytest.mark.parametrize("recipe", ["qwen2.5-omni-7b", "qwen3-omni-30b-a3b"])
def test_omni_thinkers(recipe, tmp_path):
    from xopd.lab.tiny_recipes import RECIPE_BUILDERS

    _check(load_student(RECIPE_BUILDERS[recipe](tmp_path)[0]), _prompts(True), checkpointing=True)


def test_no_full_logits_are_kept_for_backward(tiny_world):
    teacher = load_teacher(tiny_world["teacher"])
    teacher.requires_grad_(True)
    prompts = _prompts(False)
    with torch.no_grad():
        ro = sample(teacher, teacher.embed_prompts(prompts), n=4, max_new_tokens=8, temperature=1.0,
                    generator=torch.Generator().manual_seed(0))
    rows, length, vocab = ro.ids.shape[0], ro.ids.shape[1], teacher.vocab_size
    sizes: list[int] = []  # elements of each saved tensor over the vocabulary

    def pack(t):
        if t.dim() and t.shape[-1] == vocab:
            sizes.append(t.numel())
        return t

    for lean in (False, True):
        sizes.clear()
        batch = teacher.embed_prompts(prompts)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if lean:
                lean_response_logprobs(teacher, batch, ro.ids, ro.mask, chunk=4, n=4)
            else:
                response_logprobs(teacher, batch, ro.ids, ro.mask, n=4)
        biggest = max(sizes, default=0)
        if lean:  # the chunks' logits are recomputed in backward, not kept (the head weight is [V, D])
            assert biggest <= vocab * teacher.causal_lm().config.hidden_size, (biggest, rows, length, vocab)
        else:
            assert biggest >= rows * length * vocab  # the full path does keep [rows, length, vocab]


def test_post_processed_logits_are_refused(tiny_world):
    teacher = load_teacher(tiny_world["teacher"])
    teacher.causal_lm().config.final_logit_softcapping = 30.0
    assert not lean_head_ok(teacher)
