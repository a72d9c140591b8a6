"""The lean decode path (static KV cache + fused decode step) samples exactly what the plain HF
forward with a dynamic cache samples, for the Llama-family variants it claims (GQA, qkv bias,
q/k norms), and steps aside for anything else."""

from __future__ import annotations

import warnings

import pytest
import torch

from xopd import cpu
from xopd.cpu.decode import LANE_MIN_ROWS, lanes_for
from xopd.cpu.fast_decode import fast_decoder
from xopd.generation import sample
from xopd.generation.kv_cache import make_static_cache
from xopd.lab.tiny import build_tiny_tokenizer
from xopd.models.base import Prompt
from xopd.models.text_lm import TextLM


def fast_sample(*args, **kwargs):
    """``sample`` through the CPU kit's decode backend (the core alone decodes with the HF forward)."""
    with cpu.activated():
        return sample(*args, **kwargs)


def _model(kind: str) -> TextLM:
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    extra = {"qwen2": {}, "qwen3": {"head_dim": 16}, "llama": {"attention_bias": True}}[kind]
    cfg = AutoConfig.for_model(
        kind,
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )
    return TextLM(AutoModelForCausalLM.from_config(cfg).eval(), tok)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_fast_decode_matches_hf(kind):
    model = _model(kind)
    prompts = [Prompt(text=t) for t in ("what is two plus three", "repeat after me red cat", "count")]
    batch = model.embed_prompts(prompts)
    ref = sample(model, batch, 2, 12, temperature=1.0, row_seeds=[1, 2, 3], static_cache=False)
    fast = fast_sample(model, batch, 2, 12, temperature=1.0, row_seeds=[1, 2, 3])
    assert torch.equal(ref.ids, fast.ids) and torch.equal(ref.mask, fast.mask)
    torch.testing.assert_close(ref.logprobs, fast.logprobs, atol=2e-5, rtol=0)
    with torch.no_grad():  # and the fast path really was taken for this architecture
        cache = make_static_cache(model, 3, 32)
        model.forward_embeds(batch.embeds, batch.attention_mask, cache=cache, use_cache=True)
        assert fast_decoder(model.lm, cache, torch.zeros(3, 4, dtype=torch.long)) is not None


def test_fast_decode_with_lora_and_steps_aside_for_dropout():
    from peft import LoraConfig, inject_adapter_in_model

    from xopd.training.lora import apply_lora

    model = _model("llama")
    apply_lora(model, 2, 4, "q_proj,down_proj")
    with torch.no_grad():  # non-zero B so the adapters matter
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = model.embed_prompts([Prompt(text="hello there"), Prompt(text="count")])
    ref = sample(model, batch, 2, 10, row_seeds=[4, 5], static_cache=False)
    fast = fast_sample(model, batch, 2, 10, row_seeds=[4, 5])
    assert torch.equal(ref.ids, fast.ids)
    torch.testing.assert_close(ref.logprobs, fast.logprobs, atol=2e-5, rtol=0)
    with torch.no_grad():
        cache = make_static_cache(model, 2, 24)
        model.forward_embeds(batch.embeds, batch.attention_mask, cache=cache, use_cache=True)
        positions = torch.arange(4)[None].repeat(2, 1)
        assert fast_decoder(model.lm, cache, positions) is not None
        with warnings.catch_warnings():  # "already found a peft_config": a second adapter on purpose
            warnings.simplefilter("ignore")
            inject_adapter_in_model(LoraConfig(r=2, target_modules=["k_proj"], lora_dropout=0.1), model.lm)
        assert fast_decoder(model.lm, cache, positions) is None  # dropout: leave it to the HF forward


def test_decode_lanes_give_the_same_rollout():
    """With >= 2 CPU threads, per-prompt seeds and >= LANE_MIN_ROWS rows a lane, prompts are decoded in
    concurrent single-threaded lanes; the rollout must be exactly the one-lane rollout (ragged
    lengths padded back together)."""
    model = _model("llama")
    prompts = [Prompt(text=t) for t in ("one two", "red cat dog bird", "count", "what is five plus six")]
    batch = model.embed_prompts(prompts)
    n = 2 * LANE_MIN_ROWS // len(prompts)  # two lanes of exactly LANE_MIN_ROWS rows
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fast_sample(model, batch, n, 10, row_seeds=[7, 8, 9, 10])
        torch.set_num_threads(2)
        assert lanes_for(model, batch, n, [7, 8, 9, 10], 1.0, 0) == 2
        assert lanes_for(model, batch, n - 1, [7, 8, 9, 10], 1.0, 0) == 1  # too few rows a lane
        two = fast_sample(model, batch, n, 10, row_seeds=[7, 8, 9, 10])
        assert torch.get_num_threads() == 2  # restored after the lanes
    finally:
        torch.set_num_threads(threads)
    for f in ("ids", "mask", "prompt_index", "ended"):
        assert torch.equal(getattr(one, f), getattr(two, f)), f
    torch.testing.assert_close(one.logprobs, two.logprobs, atol=1e-6, rtol=0)


def _onednn_ops() -> bool:
    """This torch has the oneDNN ops the decode packing uses (else it decodes against dense weights)."""
    from xopd.cpu.onednn_linear import onednn_linear_available

    return onednn_linear_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear_both_ways(monkeypatch, bias):
    """The decode step's linear (oneDNN-packed on CPU, pre-transposed dense where switched off) is
    ``F.linear`` up to float rounding, with and without bias."""
    from xopd.cpu.fast_decode import ONEDNN_MIN_PARAMS, _Linear, _onednn_ok

    torch.manual_seed(0)
    w, b, x = torch.randn(48, 32), torch.randn(48) if bias else None, torch.randn(5, 32)
    ref = torch.nn.functional.linear(x, w, b)
    packed = _Linear(w, b, _onednn_ok(w, ONEDNN_MIN_PARAMS))
    assert packed.onednn == _onednn_ops()
    torch.testing.assert_close(packed(x), ref, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("XOPD_DECODE_ONEDNN", "0")
    dense = _Linear(w, b, _onednn_ok(w, ONEDNN_MIN_PARAMS))
    assert not dense.onednn
    torch.testing.assert_close(dense(x), ref, atol=1e-5, rtol=1e-5)


def test_fast_decode_with_onednn_packing_matches_hf(monkeypatch):
    """Packing is for big models that measured faster with it; forced on for a tiny one, the rollout is
    still HF's."""
    from xopd.cpu import fast_decode

    monkeypatch.setattr(fast_decode, "ONEDNN_MIN_PARAMS", 0)
    monkeypatch.setattr(fast_decode, "_packing_pays", lambda shapes, rows: True)
    model = _model("qwen2")
    batch = model.embed_prompts([Prompt(text="what is two plus three"), Prompt(text="count")])
    ref = sample(model, batch, 2, 10, row_seeds=[1, 2], static_cache=False)
    fast = fast_sample(model, batch, 2, 10, row_seeds=[1, 2])
    assert torch.equal(ref.ids, fast.ids)
    torch.testing.assert_close(ref.logprobs, fast.logprobs, atol=2e-5, rtol=0)


def test_onednn_packing_only_for_models_whose_weights_leave_the_cache():
    from xopd.cpu.fast_decode import ONEDNN_MIN_PARAMS, _onednn_ok

    w = torch.randn(8, 4)
    assert not _onednn_ok(w, ONEDNN_MIN_PARAMS - 1)
    assert _onednn_ok(w, ONEDNN_MIN_PARAMS) == _onednn_ops()
    model = _model("llama")  # tiny: decodes against dense weights
    batch = model.embed_prompts([Prompt(text="count")])
    with torch.no_grad():
        cache = make_static_cache(model, 1, 16)
        model.forward_embeds(batch.embeds, batch.attention_mask, cache=cache, use_cache=True)
        assert not fast_decoder(model.lm, cache, torch.zeros(1, 4, dtype=torch.long)).onednn


def test_fast_decode_takes_models_trained_with_onednn_linears():
    """``linear_kernel`` swaps nn.Linear for OneDNNLinear (same weights): the decode path must still run."""
    from xopd.cpu.onednn_linear import OneDNNLinear, use_onednn_linears

    model = _model("llama")
    batch = model.embed_prompts([Prompt(text="what is two plus three"), Prompt(text="count")])
    ref = sample(model, batch, 2, 8, temperature=1.0, row_seeds=[1, 2])
    for m in model.modules():  # the swap itself, whether or not this torch has the op
        if type(m) is torch.nn.Linear:
            m.__class__ = OneDNNLinear
    assert use_onednn_linears(model) == 0
    with torch.no_grad():
        cache = make_static_cache(model, 2, 32)
        model.forward_embeds(batch.embeds, batch.attention_mask, cache=cache, use_cache=True)
        assert fast_decoder(model.lm, cache, torch.zeros(2, 4, dtype=torch.long)) is not None
    fast = fast_sample(model, batch, 2, 8, temperature=1.0, row_seeds=[1, 2])
    assert torch.equal(ref.ids, fast.ids)
