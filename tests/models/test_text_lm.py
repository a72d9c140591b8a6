"""TextLM (teacher / text student) and the shared PolicyModel helpers in base.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xopd.errors import ModelError
from xopd.models.base import Prompt, causal_lm_forward, left_pad, render_chat_ids
from xopd.models.text_lm import TextLM, load_teacher


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir) -> TextLM:
    return load_teacher(tiny_teacher_dir)


def test_teacher_is_frozen_eval_with_own_template(teacher):
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    ids = teacher.chat_ids("what is 2 plus 3?")
    text = teacher.tokenizer.decode(ids)
    assert text == "<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n"
    assert teacher.eos_token_ids == [teacher.tokenizer.eos_token_id]
    assert teacher.pad_token_id == teacher.tokenizer.pad_token_id
    assert teacher.vocab_size == len(teacher.tokenizer)
    sys_ids = teacher.chat_ids("hi", system="be brief")
    assert teacher.tokenizer.decode(sys_ids).startswith("<|system|>\nbe brief\n<|user|>")


def test_embed_prompts_left_pads_chat_ids(teacher):
    prompts = [Prompt("what is 2 plus 3?"), Prompt("repeat after me red blue green")]
    with torch.no_grad():
        pb = teacher.embed_prompts(prompts)
    emb = teacher.lm.get_input_embeddings().weight
    for i, p in enumerate(prompts):
        ids = teacher.chat_ids(p.text)
        assert int(pb.attention_mask[i].sum()) == len(ids)
        torch.testing.assert_close(pb.embeds[i, -len(ids) :], emb[ids])
        assert pb.embeds[i, : pb.embeds.shape[1] - len(ids)].abs().sum() == 0


def test_left_padding_does_not_change_logits(teacher):
    """Positions come from the mask, so a prompt's logits do not depend on its batch's padding."""
    short, long = Prompt("what is 2 plus 3?"), Prompt("repeat after me red blue green yellow cat dog")
    with torch.no_grad():
        alone = teacher.embed_prompts([short])
        both = teacher.embed_prompts([short, long])
        la, _ = teacher.forward_embeds(alone.embeds, alone.attention_mask)
        lb, _ = teacher.forward_embeds(both.embeds, both.attention_mask)
        lk, _ = causal_lm_forward(teacher.lm, both.embeds, both.attention_mask, logits_to_keep=2)
    n = la.shape[1]
    torch.testing.assert_close(lb[0, -n:], la[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lk, lb[:, -2:], atol=1e-6, rtol=0)


def test_kv_cache_step_matches_full_forward(teacher):
    with torch.no_grad():
        pb = teacher.embed_prompts([Prompt("what is 2 plus 3?"), Prompt("repeat after me red")])
        _, cache = teacher.forward_embeds(pb.embeds, pb.attention_mask, use_cache=True)
        nxt = torch.tensor([[7], [9]])
        mask = torch.cat([pb.attention_mask, torch.ones(2, 1, dtype=torch.long)], 1)
        step, _ = teacher.forward_embeds(teacher.embed_tokens(nxt), mask, cache=cache, use_cache=True)
        full, _ = teacher.forward_embeds(torch.cat([pb.embeds, teacher.embed_tokens(nxt)], 1), mask)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_user_errors_are_model_errors(teacher, tmp_path):
    with pytest.raises(ModelError, match="cannot take audio"):
        teacher.embed_prompts([Prompt("hi", np.zeros(1600, dtype=np.float32), "S")])
    with pytest.raises(ModelError, match="no config.json"):
        TextLM.from_pretrained(tmp_path)
    tok = teacher.tokenizer
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ModelError, match="chat_template"):
            render_chat_ids(tok, "hi")
    finally:
        tok.chat_template = saved
    with pytest.raises(ValueError):
        left_pad([])


def test_save_round_trip(teacher, tmp_path):
    teacher.save_pretrained(tmp_path / "t")
    again = TextLM.from_pretrained(tmp_path / "t")
    assert again.training is True or again.training is False
    sd1, sd2 = teacher.state_dict(), again.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert again.chat_ids("hi") == teacher.chat_ids("hi")


def test_rendered_prompt_ids_are_memoised_by_everything_they_depend_on(tiny_teacher_dir):
    from xopd.models.base import _RENDERED, render_messages_ids

    tok = load_teacher(tiny_teacher_dir).tokenizer
    msgs = [{"role": "user", "content": "what is 2 plus 3?"}]
    fresh = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
    ids = render_messages_ids(tok, msgs)
    assert ids == list(fresh) and len(_RENDERED[tok]) == 1
    ids.append(-1)  # the caller's list is its own: the memo is not changed through it
    assert render_messages_ids(tok, msgs) == list(fresh) and len(_RENDERED[tok]) == 1
    saved, tok.chat_template = tok.chat_template, "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    try:  # another template renders anew
        assert tok.decode(render_messages_ids(tok, msgs)) == "[what is 2 plus 3?]"
    finally:
        tok.chat_template = saved
    listy = [{"role": "user", "content": "hi", "extra": ["not", "hashable"]}]
    assert render_messages_ids(tok, listy) == render_messages_ids(tok, [{"role": "user", "content": "hi"}])
