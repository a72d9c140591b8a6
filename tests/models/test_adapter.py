"""CTC adapter: frame maths, greedy decoding, CTC compression, and its life inside a SpeechLLM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xopd.lab.tiny import build_tiny_student
from xopd.models.adapter import CTCAdapter
from xopd.models.base import Prompt
from xopd.models.speech_llm import SpeechLLM


def _adapter(**kw) -> CTCAdapter:
    torch.manual_seed(0)
    return CTCAdapter(d_in=8, vocab_size=5, d_model=16, layers=1, heads=2, ffn=32, stack=2, dropout=0.0, **kw).eval()


def _logits_for(labels: list[int], vocab: int = 5) -> torch.Tensor:
    """[1, T, vocab + 1] logits whose argmax per frame is ``labels``."""
    out = torch.full((1, len(labels), vocab + 1), -5.0)
    for t, lab in enumerate(labels):
        out[0, t, lab] = 5.0
    return out


def test_greedy_merges_repeats_and_drops_blanks():
    ad = _adapter()
    b = ad.blank
    logits = _logits_for([b, 1, 1, b, 1, 2, 2, b, b, 3])
    assert ad.greedy(logits, torch.tensor([10])) == [[1, 1, 2, 3]]
    assert ad.greedy(logits, torch.tensor([4])) == [[1]]  # frames past the length are ignored
    assert ad.segments(logits, torch.tensor([10])) == [[(1, 3, 1), (4, 5, 1), (5, 7, 2), (9, 10, 3)]]


def test_frames_stack_and_padding_does_not_leak():
    ad = _adapter()
    x = torch.randn(2, 9, 8)
    lengths = torch.tensor([5, 9])
    states, logits, n = ad.frames(x, lengths)
    assert states.shape == (2, 5, 16) and logits.shape == (2, 5, 6) and n.tolist() == [3, 5]
    alone, _, _ = ad.frames(x[:1, :5], torch.tensor([5]))
    torch.testing.assert_close(states[0, :3], alone[0], atol=1e-5, rtol=0)


def test_ctc_compression_gives_one_state_per_recognised_token():
    ad = _adapter()
    x = torch.randn(1, 20, 8)
    states, logits, n = ad.frames(x, torch.tensor([20]))
    segs = ad.segments(logits, n)[0]
    res = ad(x, torch.tensor([20]))
    out, out_len = res.states, res.lengths
    assert int(out_len[0]) == max(1, len(segs))
    assert res.token_ids.shape[:2] == out.shape[:2]
    torch.testing.assert_close(res.token_weights.sum(-1)[0, : int(out_len[0])], torch.ones(int(out_len[0])))
    if segs:  # the top posterior token of a run is the run's label
        assert res.token_ids[0, 0, 0].item() == segs[0][2]
    if segs:  # each output is the mean of its run's states (duration embedding starts at zero)
        s, e, _ = segs[0]
        torch.testing.assert_close(out[0, 0], states[0, s:e].mean(0), atol=1e-5, rtol=0)


def test_compression_falls_back_to_one_state_when_nothing_is_heard():
    ad = _adapter()
    with torch.no_grad():
        ad.head.bias.fill_(0.0)
        ad.head.bias[ad.blank] = 100.0  # every frame is blank
    x = torch.randn(2, 12, 8)
    res = ad(x, torch.tensor([12, 6]))
    out, n = res.states, res.lengths
    assert n.tolist() == [1, 1]
    states, _, _ = ad.frames(x, torch.tensor([12, 6]))
    torch.testing.assert_close(out[1, 0], states[1, :3].mean(0), atol=1e-5, rtol=0)


def test_no_compression_passes_frames_through():
    ad = _adapter(compress="none")
    x = torch.randn(1, 10, 8)
    res = ad(x, torch.tensor([10]))
    out, n = res.states, res.lengths
    states, _, _ = ad.frames(x, torch.tensor([10]))
    assert n.tolist() == [5]
    torch.testing.assert_close(out, states)


def test_ctc_loss_matches_torch_reference():
    ad = _adapter()
    logits = torch.randn(2, 6, 6)
    lengths = torch.tensor([6, 4])
    targets = [[1, 2, 2], [3]]
    got = ad.ctc_loss(logits, lengths, targets)
    ref = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.tensor([1, 2, 2, 3]), lengths,
                                       torch.tensor([3, 1]), blank=5, reduction="mean")
    torch.testing.assert_close(got, ref)


def test_bad_adapter_settings_are_rejected():
    with pytest.raises(ValueError, match="compress"):
        CTCAdapter(8, 5, compress="zip")
    with pytest.raises(ValueError, match="d_model % heads"):
        CTCAdapter(8, 5, d_model=10, heads=3)


# -- inside a SpeechLLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctc_student_dir(tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctc_student") / "student"
    build_tiny_student(out, tiny_teacher_dir, adapter={"d_model": 16, "layers": 1, "heads": 2, "ffn": 32})
    return out


def _wav(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def test_speech_llm_with_adapter_round_trips_exactly(ctc_student_dir, tmp_path):
    a = SpeechLLM.from_pretrained(ctc_student_dir).eval()
    cfg = json.loads((ctc_student_dir / "xopd_config.json").read_text())
    assert cfg["adapter"]["type"] == "ctc" and cfg["adapter"]["vocab_size"] == len(a.tokenizer)
    assert a.projector.stack == 1  # the adapter already stacks frames
    a.save_pretrained(tmp_path / "again")
    b = SpeechLLM.from_pretrained(tmp_path / "again").eval()
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    prompts = [Prompt(None, audio=_wav(0.6, 1), view="S"), Prompt("what is 2 plus 3?")]
    with torch.no_grad():
        pa, pb = a.embed_prompts(prompts), b.embed_prompts(prompts)
    torch.testing.assert_close(pa.embeds, pb.embeds)
    assert a.hear([_wav(0.6, 1)]) == b.hear([_wav(0.6, 1)])


def test_s_prompt_length_follows_what_is_heard(ctc_student_dir):
    m = SpeechLLM.from_pretrained(ctc_student_dir).eval()
    wav = _wav(0.8, 2)
    with torch.no_grad():
        hidden, h_len = m.encode_hidden([wav])
        _, logits, n = m.adapter.frames(hidden, h_len)
        heard = len(m.adapter.segments(logits, n)[0])
        batch = m.embed_prompts([Prompt(None, audio=wav, view="S")])
    text_only = len(m.chat_ids(m.audio_token))  # the chat template around the one placeholder
    assert int(batch.attention_mask.sum()) == text_only - 1 + max(1, heard)
    assert int(batch.attention_mask.sum()) <= text_only - 1 + m.audio_positions(wav.size)


def test_freeze_covers_the_adapter(ctc_student_dir):
    m = SpeechLLM.from_pretrained(ctc_student_dir)
    m.freeze(encoder=True, projector=True, lm=True, adapter=False)
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"adapter"}
    m.freeze()  # default: the paper's setting, only the LM trains
    assert not any(p.requires_grad for p in m.adapter.parameters())


def _count_adapter_calls(m: SpeechLLM) -> list[int]:
    calls = [0]
    m.adapter.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_frozen_adapter_output_is_reused_for_the_same_clips_and_only_then(ctc_student_dir):
    """X-OPD embeds its spoken prompts for the rollout and again for the update: a frozen adapter runs
    once for both, and the second embedding (with grad) equals the first bit for bit."""
    m = SpeechLLM.from_pretrained(ctc_student_dir).eval()
    m.freeze()
    calls = _count_adapter_calls(m)
    prompts = [Prompt(None, audio=_wav(0.6, 1), view="S"), Prompt(None, audio=_wav(0.9, 2), view="S")]
    with torch.no_grad():
        first = m.embed_prompts(prompts)
    again = m.embed_prompts(prompts)  # grad on: the LM's embeddings train, the adapter does not
    assert calls[0] == 1
    assert torch.equal(first.embeds, again.embeds.detach()) and again.embeds.requires_grad
    m.embed_prompts(prompts[:1])  # other clips: computed
    assert calls[0] == 2

    with torch.no_grad():  # new adapter weights (load_state_dict, an optimizer step): computed again
        m.adapter.head.bias.add_(0.5)
    changed = m.embed_prompts(prompts[:1])
    assert calls[0] == 3
    m._adapter_memo = None
    assert torch.equal(changed.embeds, m.embed_prompts(prompts[:1]).embeds)

    m.freeze(adapter=False)  # a trainable adapter is never memoised
    m.embed_prompts(prompts)
    m.embed_prompts(prompts)
    assert calls[0] == 6


def test_adapter_memo_is_cleared_by_a_dtype_move(ctc_student_dir):
    m = SpeechLLM.from_pretrained(ctc_student_dir).eval()
    m.freeze()
    calls = _count_adapter_calls(m)
    prompts = [Prompt(None, audio=_wav(0.6, 1), view="S")]
    with torch.no_grad():
        m.embed_prompts(prompts)
        m.to(torch.float64)  # .to() swaps the weights' storage without bumping their version counters
        out = m.embed_prompts(prompts)
    assert calls[0] == 2 and out.embeds.dtype == torch.float64
