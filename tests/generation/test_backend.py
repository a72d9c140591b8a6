"""Decode backends plug into sample(): the core decodes alone; a registered backend takes the calls it
accepts and must return what the core would."""

from __future__ import annotations

import torch

from xopd import cpu
from xopd.generation import backend, decode, sample
from xopd.generation.backend import SampleSpec
from xopd.lab.tiny import build_tiny_tokenizer, tiny_llama
from xopd.models.base import Prompt
from xopd.models.text_lm import TextLM


def _model() -> TextLM:
    tok = build_tiny_tokenizer()
    return TextLM(tiny_llama(tok, 32, 2, 2, 64, seed=0).eval(), tok)


class _Recorder:
    def __init__(self, accept: bool) -> None:
        self.accept, self.calls, self.released = accept, 0, 0

    def accepts(self, model, prompts) -> bool:
        return self.accept

    def sample(self, model, prompts, spec, generator, row_seeds, static_cache):
        self.calls += 1
        return decode(model, prompts, spec, generator, row_seeds, static_cache)

    def release_memory(self) -> None:
        self.released += 1


def test_no_backend_by_default_and_registered_ones_take_accepted_calls():
    model = _model()
    batch = model.embed_prompts([Prompt(text="count"), Prompt(text="red cat")])
    assert not [b for b in backend.registered_backends() if isinstance(b, cpu.CPUDecodeBackend)]
    plain = sample(model, batch, 2, 6, row_seeds=[1, 2])
    no, yes = _Recorder(False), _Recorder(True)
    backend.register_backend(no)
    backend.register_backend(yes)
    try:
        got = sample(model, batch, 2, 6, row_seeds=[1, 2])
        backend.release_memory()
    finally:
        backend.unregister_backend(yes)
        backend.unregister_backend(no)
    assert (yes.calls, no.calls, yes.released) == (1, 0, 1)
    assert torch.equal(got.ids, plain.ids) and torch.equal(got.logprobs, plain.logprobs)


def test_cpu_kit_backend_is_scoped_and_returns_the_core_rollout():
    model = _model()
    batch = model.embed_prompts([Prompt(text="what is two plus three"), Prompt(text="count")])
    plain = decode(model, batch, SampleSpec(2, 8), row_seeds=[3, 4])
    before = backend.registered_backends()
    with cpu.activated(cpu.CPUConfig(fast_decode=True)) as kit:
        assert backend.pick_backend(model, batch) is kit
        fast = sample(model, batch, 2, 8, row_seeds=[3, 4])
    assert backend.registered_backends() == before
    assert torch.equal(fast.ids, plain.ids)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=2e-5, rtol=0)


def test_checking_for_finished_rows_less_often_gives_the_same_rollout():
    """GPUs check "all rows done?" every 16 steps instead of every step (no per-token host sync); the
    steps run past the end are cut, so the rollout is identical."""
    from xopd.generation.sampling import FINISHED_CHECK_EVERY

    model = _model()
    tok = model.tokenizer
    prompts = model.embed_prompts([Prompt("one two three"), Prompt("four")])
    spec = SampleSpec(n=3, max_new_tokens=40, temperature=1.0, top_p=1.0, top_k=0, vocab_limit=3)  # eos likely
    assert tok.eos_token_id < 3 and FINISHED_CHECK_EVERY["cpu"] == 1
    with torch.no_grad():
        outs = [decode(model, prompts, spec, row_seeds=[5, 6], check_every=k) for k in (1, 4, 16)]
    ref = outs[0]
    assert ref.ids.shape[1] < 40 and bool(ref.ended.all())  # every row ended early: the cut matters
    for o in outs[1:]:
        assert torch.equal(o.ids, ref.ids) and torch.equal(o.mask, ref.mask) and torch.equal(o.ended, ref.ended)
        assert torch.equal(o.logprobs, ref.logprobs)


def test_finished_rows_leaving_the_decode_batch_give_the_same_rollout():
    """Off CPU, finished rows leave the batch at a check once at most half of it still generates
    (``COMPACT_BELOW``): each row keeps its own seeds, positions, mask and KV cache, so the rollout is the
    one of the full batch, with a static and with a dynamic cache, sampled and greedy."""
    from xopd.generation.sampling import COMPACT_BELOW

    model = _model()
    prompts = model.embed_prompts([Prompt("one two three"), Prompt("four"), Prompt("red cat")])
    assert COMPACT_BELOW["cpu"] == 0.0  # the demo's CPU path never compacts
    for temperature, vocab_limit in ((1.0, 4), (0.0, None)):  # both: rows end at different steps
        spec = SampleSpec(n=3, max_new_tokens=30, temperature=temperature, top_p=1.0, top_k=0,
                          vocab_limit=vocab_limit)
        for static in (True, False):
            with torch.no_grad():
                ref = decode(model, prompts, spec, row_seeds=[5, 6, 7], static_cache=static, check_every=2,
                             compact_below=0.0)
                got = decode(model, prompts, spec, row_seeds=[5, 6, 7], static_cache=static, check_every=2,
                             compact_below=1.0)
            assert len(set(ref.mask.sum(1).tolist())) > 1  # rows finished at different steps
            assert torch.equal(got.ids, ref.ids) and torch.equal(got.mask, ref.mask), (temperature, static)
            assert torch.equal(got.ended, ref.ended)
            torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-5, rtol=0)
