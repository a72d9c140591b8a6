"""Property test: ``response_logprobs`` on a tiny TextLM over random left-padded prompts, right-padded
responses (fully masked rows included), temperatures, chunk sizes and vocab limits is finite, has
finite gradients, and equals a per-row reference that runs each unpadded sequence alone."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xopd.generation import response_logprobs
from xopd.models.base import left_pad
from xopd.models.text_lm import TextLM

V = 24


@lru_cache(maxsize=1)
def _model() -> TextLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return TextLM(LlamaForCausalLM(cfg).eval(), tokenizer=None)


@st.composite
def cases(draw):
    b = draw(st.integers(1, 3))
    length = draw(st.integers(1, 5))
    prompt_lens = draw(st.lists(st.integers(1, 5), min_size=b, max_size=b))
    resp_lens = draw(st.lists(st.integers(0, length), min_size=b, max_size=b))  # 0: fully masked row
    vocab_limit = draw(st.one_of(st.none(), st.integers(V // 2, V)))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        length=length,
        prompt_lens=prompt_lens,
        resp_lens=resp_lens,
        temperature=draw(st.floats(0.3, 3.0)),
        chunk=draw(st.one_of(st.none(), st.integers(1, 4))),
        vocab_limit=vocab_limit,
    )


def _reference(
    model: TextLM, prompt: torch.Tensor, resp: torch.Tensor, temperature: float, limit: int
) -> torch.Tensor:
    """log p(resp_t | prompt, resp_<t) from one unpadded forward: ``[P], [l] -> [l]``."""
    seq = torch.cat([prompt, resp])
    logits = model.lm(input_ids=seq[None]).logits[0, len(prompt) - 1 : len(seq) - 1, :limit]
    return F.log_softmax(logits.double() / temperature, -1).gather(-1, resp[:, None]).squeeze(-1)


@settings(max_examples=30, deadline=None)
@given(cases())
def test_response_logprobs_matches_per_row_reference(case):
    model = _model()
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(case["seed"])
    limit = case["vocab_limit"] or V
    prompts = [torch.randint(0, V, (p,), generator=g) for p in case["prompt_lens"]]
    b, length = len(prompts), case["length"]
    mask = torch.arange(length)[None, :] < torch.tensor(case["resp_lens"])[:, None]  # right padding
    ids = torch.randint(0, limit, (b, length), generator=g)  # garbage (in-vocab, like pad) where masked
    batch = left_pad([model.embed_tokens(p) for p in prompts])

    out = response_logprobs(
        model,
        batch,
        ids,
        mask,
        temperature=case["temperature"],
        chunk_size=case["chunk"],
        vocab_limit=case["vocab_limit"],
    )
    assert out.shape == (b, length) and torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    with torch.no_grad():
        for i, (p, n) in enumerate(zip(prompts, case["resp_lens"])):
            if n:
                ref = _reference(model, p, ids[i, :n], case["temperature"], limit)
                torch.testing.assert_close(out[i, :n].double(), ref, atol=2e-5, rtol=1e-4)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(gr).all() for gr in grads)
