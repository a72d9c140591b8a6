"""Multi-turn prompts (Prompt.history): rendered through each model's chat template, audio per turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xopd.errors import ModelError
from xopd.models.base import Prompt, Turn, render_chat_ids, render_messages_ids
from xopd.models.speech_llm import SpeechLLM
from xopd.models.text_lm import TextLM


def _wav(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def student(tiny_student_dir) -> SpeechLLM:
    return SpeechLLM.from_pretrained(tiny_student_dir).eval()


HISTORY_T = [Turn("user", "what is two plus three?"), Turn("assistant", "five"), Turn("user", "and times two?"),
             Turn("assistant", "ten")]  # fmt: skip


def test_turn_and_prompt_validation() -> None:
    with pytest.raises(ValueError, match="role"):
        Turn("system", "x")
    with pytest.raises(ValueError, match="assistant turn needs text"):
        Turn("assistant", None, _wav(0.1, 0))
    with pytest.raises(ValueError, match="user turn needs text or audio"):
        Turn("user", " ")
    with pytest.raises(ValueError, match="history must be text only"):
        Prompt("next?", view="T", history=[Turn("user", audio=_wav(0.1, 0))])


def test_text_history_is_the_chat_template_of_the_whole_conversation(tiny_teacher_dir) -> None:
    teacher = TextLM.from_pretrained(tiny_teacher_dir)
    p = Prompt("and minus one?", view="T", history=HISTORY_T, system="be brief")
    want = render_messages_ids(teacher.tokenizer, [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is two plus three?"}, {"role": "assistant", "content": "five"},
        {"role": "user", "content": "and times two?"}, {"role": "assistant", "content": "ten"},
        {"role": "user", "content": "and minus one?"},
    ])  # fmt: skip
    assert teacher.text_prompt_ids(p) == want
    assert len(want) > len(teacher.chat_ids("and minus one?", "be brief"))
    with torch.no_grad():
        pb = teacher.embed_prompts([p, Prompt("hi")])
    emb = teacher.causal_lm().get_input_embeddings()
    assert torch.equal(pb.embeds[0, -len(want) :], emb(torch.tensor(want)))
    # no history: exactly the single-turn rendering
    assert teacher.text_prompt_ids(Prompt("hi", system="s")) == render_chat_ids(teacher.tokenizer, "hi", "s")


def test_speech_history_splices_each_clip_at_its_own_placeholder(student) -> None:
    a1, a2, a3 = _wav(0.4, 1), _wav(0.7, 2), _wav(0.5, 3)
    p = Prompt(None, a3, "S", history=[Turn("user", audio=a1), Turn("assistant", "five"),
                                       Turn("user", "note this", a2), Turn("assistant", "ten")])  # fmt: skip
    with torch.no_grad():
        pb = student.embed_prompts([Prompt("hello"), p])
        frames, n = student.encode_audio([a1, a2, a3])
    tok, ph = student.tokenizer, student.audio_token
    ids = render_messages_ids(tok, [
        {"role": "user", "content": ph}, {"role": "assistant", "content": "five"},
        {"role": "user", "content": f"{ph}\nnote this"}, {"role": "assistant", "content": "ten"},
        {"role": "user", "content": ph},
    ])  # fmt: skip
    where = [k for k, i in enumerate(ids) if i == student.audio_token_id]
    assert len(where) == 3
    emb = student.lm.get_input_embeddings()
    e = emb(torch.tensor(ids))
    pieces, prev = [], 0
    for j, k in enumerate(where):
        pieces += [e[prev:k], frames[j, : int(n[j])]]
        prev = k + 1
    want = torch.cat([*pieces, e[prev:]]).detach()
    L = want.shape[0]
    assert int(pb.attention_mask[1].sum()) == L
    torch.testing.assert_close(pb.embeds[1, -L:], want, rtol=1e-5, atol=1e-6)
    # the T view of the same conversation is the text model's rendering of the transcripts
    t = Prompt("next?", view="T", history=HISTORY_T)
    assert student.text_prompt_ids(t) == render_messages_ids(tok, [
        {"role": "user", "content": "what is two plus three?"}, {"role": "assistant", "content": "five"},
        {"role": "user", "content": "and times two?"}, {"role": "assistant", "content": "ten"},
        {"role": "user", "content": "next?"},
    ])  # fmt: skip


def test_single_turn_speech_prompt_is_rendered_as_before(student) -> None:
    a = _wav(0.6, 4)
    with torch.no_grad():
        pb = student.embed_prompts([Prompt("say it", a, "S")])
        frames, n = student.encode_audio([a])
    ids = torch.tensor(render_chat_ids(student.tokenizer, f"{student.audio_token}\nsay it"))
    k = int((ids == student.audio_token_id).nonzero()[0])
    e = student.lm.get_input_embeddings()(ids)
    want = torch.cat([e[:k], frames[0, : int(n[0])], e[k + 1 :]]).detach()
    assert torch.equal(pb.embeds[0], want)


def test_text_lm_rejects_audio_in_history(tiny_teacher_dir) -> None:
    teacher = TextLM.from_pretrained(tiny_teacher_dir)
    with pytest.raises(ModelError, match="cannot take audio"):
        teacher.embed_prompts([Prompt(None, _wav(0.2, 0), "S", history=[Turn("user", "x")])])


def test_qwen2_audio_numbers_and_expands_every_audio_turn(tmp_path) -> None:
    from xopd.lab.tiny import build_tiny_qwen2_audio

    model = build_tiny_qwen2_audio(tmp_path / "q", seed=0).eval()
    a1, a2 = _wav(0.5, 5), _wav(1.0, 6)
    p = Prompt("and now?", a2, "S", history=[Turn("user", audio=a1), Turn("assistant", "ok")])
    ids = model.prompt_ids(p, [12, 25])
    assert ids.count(model.audio_token_id) == 37
    text = model.tokenizer.decode(ids)
    assert "Audio 1:" in text and "Audio 2:" in text and "ok" in text
    with torch.no_grad():
        pb = model.embed_prompts([p])
        frames, n = model.encode_audio([a1, a2])
    assert [int(x) for x in n] == [12, 25]
    assert int(pb.attention_mask.sum()) == len(ids)
    first = ids.index(model.audio_token_id)
    torch.testing.assert_close(pb.embeds[0, first : first + 12], frames[0, :12])
    second = ids.index(model.audio_token_id, first + 12)
    torch.testing.assert_close(pb.embeds[0, second : second + 25], frames[1, :25])
