"""Qwen2-Audio adapter on a tiny random config: our embedding path equals the model's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xopd.errors import ModelError
from xopd.lab.tiny import build_tiny_qwen2_audio
from xopd.models.base import Prompt, position_ids_from_mask
from xopd.models.loading import load_student
from xopd.models.qwen2_audio import Qwen2AudioStudent


def _wav(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def q2a(tmp_path_factory) -> tuple[Qwen2AudioStudent, str]:
    out = tmp_path_factory.mktemp("q2a")
    return build_tiny_qwen2_audio(out, seed=0).eval(), str(out)


PROMPTS = [
    Prompt(None, _wav(0.5, 0), "S"),
    Prompt("what is 2 plus 3?"),
    Prompt("repeat after me", _wav(1.0, 1), "S"),
]


def test_embed_prompts_speech_and_text(q2a):
    model, _ = q2a
    with torch.no_grad():
        pb = model.embed_prompts(PROMPTS)
    # processor's count: mel frames l -> (((l - 1) // 2 + 1) - 2) // 2 + 1 pooled encoder frames
    n_audio = [(((n // 160 - 1) // 2 + 1) - 2) // 2 + 1 for n in (8000, 16000)]
    assert n_audio == [12, 25]  # 25 audio tokens per second
    lens = pb.attention_mask.sum(1).tolist()
    assert lens[0] == len(model.prompt_ids(PROMPTS[0], n_audio[0]))
    assert lens[1] == len(model.chat_ids("what is 2 plus 3?"))
    assert lens[2] == len(model.prompt_ids(PROMPTS[2], n_audio[1]))
    assert model.prompt_ids(PROMPTS[0], 12).count(model.audio_token_id) == 12
    assert pb.embeds.shape == (3, max(lens), 32)


def test_logits_equal_model_own_forward(q2a):
    model, _ = q2a
    tok = model.tokenizer
    _, n_tok = model.encode_audio([PROMPTS[0].audio, PROMPTS[2].audio])
    ids = [
        model.prompt_ids(PROMPTS[0], int(n_tok[0])),
        model.prompt_ids(PROMPTS[1]),
        model.prompt_ids(PROMPTS[2], int(n_tok[1])),
    ]
    width = max(map(len, ids))
    input_ids = torch.full((3, width), tok.pad_token_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    feats, fmask = model._features([PROMPTS[0].audio, PROMPTS[2].audio])
    assert feats.shape[-1] == 3000  # that model's contract: 30 s
    with torch.no_grad():
        ref = model.model(
            input_ids=input_ids,
            input_features=feats,
            attention_mask=mask,
            feature_attention_mask=fmask,
            position_ids=position_ids_from_mask(mask),
        ).logits
        pb = model.embed_prompts(PROMPTS)
        ours, _ = model.forward_embeds(pb.embeds, pb.attention_mask)
        last, _ = model.forward_embeds(pb.embeds, pb.attention_mask, logits_to_keep=4)
    assert torch.equal(pb.attention_mask, mask)
    m = mask.bool()
    torch.testing.assert_close(ours[m], ref[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, ours[:, -4:], atol=1e-6, rtol=0)


def test_causal_lm_view_shares_weights_and_state_dict_is_clean(q2a):
    model, _ = q2a
    lm = model.causal_lm()
    assert lm.get_input_embeddings() is model.model.get_input_embeddings()
    assert lm.get_output_embeddings() is model.model.get_output_embeddings()
    assert not any(k.startswith("_lm_view") for k in model.state_dict())
    assert model.vocab_size == len(model.tokenizer)
    assert model.eos_token_ids == [model.tokenizer.eos_token_id]


def test_save_load_round_trip_and_dispatch(q2a, tmp_path):
    model, path = q2a
    again = load_student(path)
    assert isinstance(again, Qwen2AudioStudent)
    again.eval()
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with torch.no_grad():
        p1, p2 = model.embed_prompts(PROMPTS), again.embed_prompts(PROMPTS)
        l1, _ = model.forward_embeds(p1.embeds, p1.attention_mask)
        l2, _ = again.forward_embeds(p2.embeds, p2.attention_mask)
    assert torch.equal(l1, l2)
    model.save_pretrained(tmp_path / "copy")
    assert Qwen2AudioStudent.from_pretrained(tmp_path / "copy").audio_token_id == model.audio_token_id


def test_freeze_and_too_long_audio(q2a):
    model, _ = q2a
    model.freeze()
    assert not any(p.requires_grad for p in model.model.model.audio_tower.parameters())
    assert not any(p.requires_grad for p in model.model.model.multi_modal_projector.parameters())
    assert all(p.requires_grad for p in model.causal_lm().parameters())
    with pytest.raises(ModelError, match="at most 30 s"):
        model.embed_prompts([Prompt(None, np.zeros(16000 * 31, dtype=np.float32), "S")])
