"""benchmarks/s_bound.py: its bare functional Llama computes what HF's LlamaForCausalLM computes, so the
probe's timing comparison compares the same arithmetic."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "s_bound", Path(__file__).resolve().parents[3] / "benchmarks" / "s_bound.py")
s_bound = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(s_bound)


def test_bare_forward_equals_hf_with_left_padding():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    lm = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    emb = lm.get_input_embeddings()(ids)
    with torch.no_grad():
        ref = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False).logits
        got = s_bound._bare_forward(lm, emb, mask, pos)
    keep = mask.bool()  # padded query positions are garbage in both (never scored)
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
