"""No silent wrong path under gradient checkpointing (issue 28): scoring n responses against one shared
prompt equals scoring each response with its own copy of the prompt (fp32, 1e-5), with checkpointing
off and on, for every student class and for the teacher. Checkpointed layers drop their KV cache, so
there the scorer falls back to repeating the prompts, and says so once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xopd.generation import logits as logits_mod
from xopd.generation import response_logprobs, sample
from xopd.models import load_student, load_teacher
from xopd.models.base import Prompt
from xopd.training.memory import enable_gradient_checkpointing, mark_checkpointed_layers

N = 3


def _prompts(spoken: bool) -> list[Prompt]:
    rng = np.random.default_rng(0)
    text = [Prompt("what is two plus three?"), Prompt("say the colours of the sky please")]
    if not spoken:
        return text
    wavs = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.7, 1.3)]
    return [Prompt(None, audio=w, view="S") for w in wavs] + text


def _scores(model, prompts, ro, shared: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    batch = model.embed_prompts(prompts)
    if shared:
        lp = response_logprobs(model, batch, ro.ids, ro.mask, n=N)
    else:
        lp = response_logprobs(model, batch.repeat_interleave(N), ro.ids, ro.mask)
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(3))
    (lp * w).sum().backward()
    return lp.detach(), [None if p.grad is None else p.grad.clone() for p in params]


def _check(model, prompts, capsys) -> None:
    model.eval()
    model.requires_grad_(False)
    model.causal_lm().requires_grad_(True)
    with torch.no_grad():
        ro = sample(model, model.embed_prompts(prompts), n=N, max_new_tokens=6, temperature=1.0,
                    generator=torch.Generator().manual_seed(0))
    ref_lp, ref_g = _scores(model, prompts, ro, shared=False)
    lp, g = _scores(model, prompts, ro, shared=True)  # checkpointing off: one prompt forward, cache kept
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)

    enable_gradient_checkpointing(model)
    assert mark_checkpointed_layers(model) > 0  # as the trainer does each step: layers really recompute
    assert logits_mod.checkpointing_active(model.causal_lm())
    logits_mod._FALLBACK_SAID.discard(type(model).__name__)
    capsys.readouterr()
    for _ in range(2):
        lp_c, g_c = _scores(model, prompts, ro, shared=True)
        torch.testing.assert_close(lp_c, ref_lp, atol=1e-5, rtol=0)
        for a, b in zip(g_c, ref_g, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    err = capsys.readouterr().err
    assert err.count("scoring repeats each prompt per sample (gradient checkpointing") == 1, err
    for a, b in zip(g, ref_g, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # no backward, no recompute: the shared path is taken again, and is right
        assert not logits_mod.checkpointing_active(model.causal_lm())


def test_speech_llm(tiny_world, capsys):
    _check(load_student(tiny_world["student"]), _prompts(spoken=False) + _prompts(True)[:2], capsys)


def test_text_teacher(tiny_world, capsys):
    teacher = load_teacher(tiny_world["teacher"])
    _check(teacher, _prompts(spoken=False), capsys)


def test_qwen2_audio(capsys):
    from xopd.lab.tiny import build_tiny_qwen2_audio

    _check(build_tiny_qwen2_audio(), _prompts(spoken=True), capsys)


@pytest.mark.parametrize("recipe", ["qwen2.5-omni-7b", "qwen3-omni-30b-a3b"])
def test_omni_thinkers(recipe, tmp_path, capsys):
    from xopd.lab.tiny_recipes import RECIPE_BUILDERS

    student_dir, _ = RECIPE_BUILDERS[recipe](tmp_path)
    _check(load_student(student_dir), _prompts(spoken=True), capsys)


def test_a_cacheless_lm_is_caught_not_scored_without_its_prompt(tiny_world, capsys, monkeypatch):
    """A wrapper that checkpoints in a way the layer scan cannot see still drops the cache: the shared
    path notices the missing cache and repeats the prompts instead of scoring responses alone."""
    teacher = load_teacher(tiny_world["teacher"])
    prompts = _prompts(spoken=False)
    with torch.no_grad():
        batch = teacher.embed_prompts(prompts)
        ro = sample(teacher, batch, n=N, max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(0))
        want = response_logprobs(teacher, batch.repeat_interleave(N), ro.ids, ro.mask)
        real = teacher.forward_embeds

        def no_cache(*a, **kw):  # what a checkpointed LM gives: a cache object with nothing in it
            from transformers import DynamicCache

            out, cache = real(*a, **kw)
            return out, DynamicCache() if cache is not None else None

        monkeypatch.setattr(teacher, "forward_embeds", no_cache)
        logits_mod._FALLBACK_SAID.discard(type(teacher).__name__)
        got = response_logprobs(teacher, batch, ro.ids, ro.mask, n=N)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert "returned no KV cache" in capsys.readouterr().err
