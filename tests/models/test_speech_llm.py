"""SpeechLLM: encoder parity with stock Whisper, length handling, splicing, save/load, compose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xopd.errors import ModelError
from xopd.lab.tiny import build_tiny_tokenizer, tiny_whisper_config
from xopd.models.base import Prompt
from xopd.models.encoder import AudioEncoder
from xopd.models.loading import load_student, student_kind
from xopd.models.projector import FrameStackProjector
from xopd.models.speech_llm import SpeechLLM
from xopd.models.text_lm import TextLM


def _wav(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def student(tiny_student_dir) -> SpeechLLM:
    return SpeechLLM.from_pretrained(tiny_student_dir).eval()


# -- encoder / projector ------------------------------------------------------------------------------
def test_encoder_matches_stock_whisper_on_full_length_input():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    stock = WhisperEncoder(tiny_whisper_config(d_enc=32, enc_layers=2, max_source_positions=16)).eval()
    enc = AudioEncoder(stock)
    x = torch.randn(3, 80, 32)
    with torch.no_grad():
        ref = stock(x).last_hidden_state
        ours, lens = enc(x, torch.tensor([32, 32, 32]))
        ours_nolen, _ = enc(x)
    assert ours.shape == ref.shape == (3, 16, 32)
    assert lens.tolist() == [16, 16, 16]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_nolen, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("short", [7, 10])  # odd and even mel lengths (conv2 boundary)
def test_encoder_padding_does_not_leak(short):
    torch.manual_seed(0)
    enc = AudioEncoder.from_config(
        tiny_whisper_config(d_enc=32, enc_layers=2, max_source_positions=64)
    ).eval()
    a, b = torch.randn(1, 80, short), torch.randn(1, 80, 40)
    batch = torch.zeros(2, 80, 40)
    batch[0, :, :short] = a[0]
    batch[0, :, short:] = 3.0  # non-zero garbage beyond the length must not matter
    batch[1] = b[0]
    with torch.no_grad():
        alone, la = enc(a, torch.tensor([short]))
        both, lb = enc(batch, torch.tensor([short, 40]))
    n = (short + 1) // 2
    assert la.tolist() == [n] and lb.tolist() == [n, 20]
    torch.testing.assert_close(both[0, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_encoder_rejects_too_long_and_wrong_mels():
    enc = AudioEncoder.from_config(tiny_whisper_config(max_source_positions=8))
    with pytest.raises(ModelError, match="mel frames"):
        enc(torch.randn(1, 80, 17))
    with pytest.raises(ModelError, match="mel bins"):
        enc(torch.randn(1, 40, 8))


def test_projector_stacks_and_pads_to_multiple():
    torch.manual_seed(0)
    proj = FrameStackProjector(4, 6, stack=3, hidden=5)
    h = torch.randn(2, 7, 4)
    out, lens = proj(h, torch.tensor([7, 4]))
    assert out.shape == (2, 3, 6) and lens.tolist() == [3, 2]
    stacked = h[0, 0:3].reshape(-1)
    torch.testing.assert_close(out[0, 0], proj.fc2(proj.act(proj.fc1(stacked))))
    last = torch.cat([h[0, 6], torch.zeros(8)])  # frame 6, then two zero frames
    torch.testing.assert_close(out[0, 2], proj.fc2(proj.act(proj.fc1(last))))
    alone, _ = proj(h[1:, :4], torch.tensor([4]))
    torch.testing.assert_close(out[1, :2], alone[0], atol=1e-6, rtol=0)
    assert FrameStackProjector.from_config(proj.config_dict()).config_dict() == proj.config_dict()


# -- SpeechLLM ----------------------------------------------------------------------------------------
def test_clip_alone_equals_clip_in_batch_with_longer_one(student):
    a, b = _wav(0.37, 1), _wav(0.9, 2)
    with torch.no_grad():
        alone = student.embed_prompts([Prompt(None, a, "S")])
        batch = student.embed_prompts([Prompt(None, a, "S"), Prompt(None, b, "S")])
    n = int(alone.attention_mask.sum())
    assert int(batch.attention_mask[0].sum()) == n
    torch.testing.assert_close(batch.embeds[0, -n:], alone.embeds[0], atol=1e-5, rtol=0)
    assert batch.attention_mask[0, :-n].sum() == 0


def test_mixed_batch_layout_and_text_view_matches_text_lm(student, tiny_teacher_dir):
    a, b = _wav(0.5, 3), _wav(0.8, 4)
    prompts = [Prompt(None, a, "S"), Prompt("what is 2 plus 3?"), Prompt("repeat after me", b, "S")]
    with torch.no_grad():
        pb = student.embed_prompts(prompts)
        teacher_t = TextLM.from_pretrained(tiny_teacher_dir).embed_prompts([prompts[1]])
    tmpl = len(student.chat_ids(student.audio_token))  # template tokens incl. the placeholder
    expect_s0 = tmpl - 1 + student.audio_positions(a.size)
    expect_s2 = (
        len(student.chat_ids(student.audio_token + "\nrepeat after me")) - 1 + student.audio_positions(b.size)
    )
    assert pb.attention_mask.sum(1).tolist() == [
        expect_s0,
        len(student.chat_ids("what is 2 plus 3?")),
        expect_s2,
    ]
    n = int(teacher_t.attention_mask.sum())
    torch.testing.assert_close(pb.embeds[1, -n:], teacher_t.embeds[0], atol=0, rtol=0)
    # audio frames sit exactly where the placeholder was, text around it is the LM's own embedding
    ids = student.chat_ids(student.audio_token)
    k = ids.index(student.audio_token_id)
    row = pb.embeds[0, -expect_s0:]
    emb = student.lm.get_input_embeddings().weight
    torch.testing.assert_close(row[:k], emb[ids[:k]])
    torch.testing.assert_close(row[k + student.audio_positions(a.size) :], emb[ids[k + 1 :]])
    audio, nf = student.encode_audio([a])
    torch.testing.assert_close(row[k : k + int(nf[0])], audio[0, : int(nf[0])], atol=1e-6, rtol=0)


def test_save_load_round_trip_is_exact(student, tmp_path):
    prompts = [Prompt(None, _wav(0.6, 5), "S"), Prompt("what is 1 plus 1?")]
    student.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "xopd_config.json").read_text())
    assert cfg["model_type"] == "xopd_speech_llm" and cfg["audio_token"] == "<|audio|>"
    assert cfg["projector"]["stack"] == 2 and cfg["features"]["n_mels"] == 80
    for f in (
        "encoder/config.json",
        "encoder/model.safetensors",
        "lm/config.json",
        "lm/model.safetensors",
        "projector.safetensors",
        "tokenizer.json",
    ):
        assert (tmp_path / "s" / f).is_file(), f
    again = SpeechLLM.from_pretrained(tmp_path / "s").eval()
    sd1, sd2 = student.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with torch.no_grad():
        p1, p2 = student.embed_prompts(prompts), again.embed_prompts(prompts)
        l1, _ = student.forward_embeds(p1.embeds, p1.attention_mask)
        l2, _ = again.forward_embeds(p2.embeds, p2.attention_mask)
    assert torch.equal(l1, l2)
    assert again.eos_token_ids == student.eos_token_ids
    assert isinstance(load_student(tmp_path / "s"), SpeechLLM)


def test_template_without_placeholder_is_a_clear_error(student):
    saved = student.tokenizer.chat_template
    student.tokenizer.chat_template = "{% for m in messages %}<|user|>\nhello\n{% endfor %}<|assistant|>\n"
    try:
        with pytest.raises(ModelError, match="placeholder"):
            student.embed_prompts([Prompt(None, _wav(0.3, 0), "S")])
        student.embed_prompts([Prompt("hi")])  # the text view does not need it
    finally:
        student.tokenizer.chat_template = saved
    with pytest.raises(ModelError, match="placeholder"):
        student.embed_prompts([Prompt("say <|audio|> twice", _wav(0.3, 0), "S")])


def test_freeze_defaults_train_only_the_lm(student):
    student.freeze()
    assert not any(p.requires_grad for p in student.encoder.parameters())
    assert not any(p.requires_grad for p in student.projector.parameters())
    assert all(p.requires_grad for p in student.lm.parameters())
    student.freeze(encoder=False, projector=False, lm=True)
    assert all(p.requires_grad for p in student.projector.parameters())
    assert not any(p.requires_grad for p in student.lm.parameters())
    student.freeze()


def test_compose_from_whisper_dir_adds_placeholder_and_resizes(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperForConditionalGeneration

    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(tiny_whisper_config(d_enc=32, max_source_positions=64))
    whisper.save_pretrained(tmp_path / "whisper")
    # the LM's tokenizer has no "<|speech|>": compose must add it and grow the embeddings by one row
    tok2 = build_tiny_tokenizer(["hello", "world"], vocab_size=300)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok2),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    lm.save_pretrained(tmp_path / "lm")
    tok2.save_pretrained(tmp_path / "lm")
    m = SpeechLLM.compose(tmp_path / "whisper", tmp_path / "lm", stack=4, audio_token="<|speech|>", seed=0)
    assert m.audio_token_id == len(tok2) and len(m.tokenizer) == len(tok2) + 1
    assert m.lm.get_input_embeddings().weight.shape[0] == len(tok2) + 1
    torch.testing.assert_close(m.encoder.whisper.conv1.weight, whisper.model.encoder.conv1.weight)
    pb = m.embed_prompts([Prompt(None, _wav(0.5, 1), "S")])
    assert int(pb.attention_mask.sum()) == len(m.chat_ids("<|speech|>")) - 1 + m.audio_positions(8000)
    m.save_pretrained(tmp_path / "student")
    assert SpeechLLM.from_pretrained(tmp_path / "student").audio_token_id == m.audio_token_id
    assert AudioEncoder.from_pretrained(tmp_path / "whisper").d_model == 32
    assert AudioEncoder.from_module(whisper).whisper is whisper.model.encoder
    assert AudioEncoder.from_module(whisper.model.encoder).whisper is whisper.model.encoder
    with pytest.raises(ModelError, match="not a Whisper encoder"):
        AudioEncoder.from_module(torch.nn.Linear(2, 2))


def test_load_student_dispatch_and_errors(tiny_teacher_dir, tmp_path):
    assert isinstance(load_student(tiny_teacher_dir), TextLM)
    with pytest.raises(ModelError, match="not found"):
        load_student(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_student(tmp_path / "empty")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelError, match="not a supported student"):
        student_kind(tmp_path / "w")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "xopd_config.json").write_text(json.dumps({"model_type": "something_else"}))
    with pytest.raises(ModelError, match="model_type"):
        load_student(bad)


def test_tiny_world_is_complete_deterministic_and_idempotent(tiny_world):
    import soundfile as sf

    from xopd.lab.tiny import build_tiny_world

    rows = [json.loads(line) for line in open(tiny_world["manifest"])]
    assert len(rows) == 8
    for r in rows:
        assert set(r) == {"id", "audio", "text", "task", "answer"}
        info = sf.info(str(Path(tiny_world["manifest"]).parent / r["audio"]))
        assert info.samplerate == 16000 and 0.3 <= info.duration <= 1.0
    marker = Path(tiny_world["root"]) / "tiny_world.json"
    before = marker.stat().st_mtime_ns
    assert build_tiny_world(tiny_world["root"], n=8, seed=0) == tiny_world
    assert marker.stat().st_mtime_ns == before
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab() and a.pad_token_id == 0 and a.eos_token_id == 1
    text = "what is 12 plus 3?\nrepeat after me red blue"
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text


def test_encoder_cache_matches_uncached(tiny_student_dir):
    import numpy as np
    import torch

    from xopd.models.speech_llm import SpeechLLM

    model = SpeechLLM.from_pretrained(tiny_student_dir).eval()
    model.freeze(encoder=True, projector=False, lm=True)
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (4000, 9000, 6000)]
    with torch.no_grad():
        ref, ref_n = model.encode_audio(wavs)
        model.enable_encoder_cache(shared=False)
        first, n1 = model.encode_audio(wavs)
        again, n2 = model.encode_audio(wavs[::-1])
    assert len(model._encoder_cache) == 3
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    assert n1.tolist() == ref_n.tolist() == n2.tolist()[::-1]
    torch.testing.assert_close(again[0, : int(n2[0])], ref[2, : int(ref_n[2])], atol=1e-5, rtol=1e-5)


def test_encoder_cache_is_shared_and_can_store_fp16(tiny_student_dir):
    import numpy as np
    import torch

    from xopd.models.encoder_cache import clear_shared_encoder_caches
    from xopd.models.speech_llm import SpeechLLM

    clear_shared_encoder_caches()
    a = SpeechLLM.from_pretrained(tiny_student_dir).eval()
    b = SpeechLLM.from_pretrained(tiny_student_dir).eval()
    for m in (a, b):
        m.freeze(encoder=True, projector=True, lm=True)
    rng = np.random.default_rng(1)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (4000, 7000)]
    with torch.no_grad():
        ref, ref_n = a.encode_audio(wavs)
        a.enable_encoder_cache()
        b.enable_encoder_cache()
        assert a._encoder_cache is b._encoder_cache  # same frozen tower -> one cache per process
        a.encode_audio(wavs)
        assert len(b._encoder_cache) == 2
        torch.testing.assert_close(b.encode_audio(wavs)[0], ref, atol=1e-5, rtol=1e-5)
        half = SpeechLLM.from_pretrained(tiny_student_dir).eval().enable_encoder_cache(dtype="float16")
        assert half._encoder_cache is not a._encoder_cache  # a dtype has its own cache
        out, n = half.encode_audio(wavs)
    assert all(v.dtype == torch.float16 for v in half._encoder_cache.values())
    assert out.dtype == ref.dtype and n.tolist() == ref_n.tolist()
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    clear_shared_encoder_caches()


def test_encoder_cache_file_round_trip(tiny_student_dir, tmp_path):
    """A saved cache, loaded into a fresh process-private cache, gives the clips back bit for bit."""
    import numpy as np
    import pytest
    import torch

    from xopd.errors import ModelError
    from xopd.models.speech_llm import SpeechLLM

    rng = np.random.default_rng(2)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (5000, 3000)]
    a = SpeechLLM.from_pretrained(tiny_student_dir).eval()
    a.freeze(encoder=True)  # only a frozen tower's output may be cached
    a.enable_encoder_cache(shared=False)
    with pytest.raises(ModelError, match="not enabled"):
        SpeechLLM.from_pretrained(tiny_student_dir).save_encoder_cache(tmp_path / "x.safetensors")
    trainable = SpeechLLM.from_pretrained(tiny_student_dir).eval().enable_encoder_cache(shared=False)
    with torch.no_grad():
        trainable.encode_audio(wavs)  # a trainable tower bypasses the cache ...
    with pytest.raises(ModelError, match="nothing is cached"):  # ... so saving says why it has nothing
        trainable.save_encoder_cache(tmp_path / "x.safetensors")
    with torch.no_grad():
        ref, ref_n = a.encode_audio(wavs)
    assert a.save_encoder_cache(tmp_path / "cache.safetensors") == 2
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary left behind
    b = SpeechLLM.from_pretrained(tiny_student_dir).eval().enable_encoder_cache(shared=False)
    assert b.load_encoder_cache(tmp_path / "cache.safetensors") == 2
    assert b.load_encoder_cache(tmp_path / "cache.safetensors") == 0  # already there
    for k, v in a._encoder_cache.items():
        assert torch.equal(b._encoder_cache[k], v)
    half = SpeechLLM.from_pretrained(tiny_student_dir).eval().enable_encoder_cache(shared=False, dtype="float16")
    with pytest.raises(ModelError, match="stored as"):
        half.load_encoder_cache(tmp_path / "cache.safetensors")


def test_models_compose_cli_with_a_posterior_ctc_adapter(tmp_path, capsys):
    """`xopd models compose --adapter ctc --lm_input posterior --acoustic_prefix K` writes a student whose
    adapter settings survive from_pretrained; contradictory flags are a one-line usage error."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperForConditionalGeneration

    from xopd.cli import main

    torch.manual_seed(0)
    WhisperForConditionalGeneration(tiny_whisper_config(d_enc=32, max_source_positions=64)).save_pretrained(
        tmp_path / "whisper")
    tok = build_tiny_tokenizer(["hello", "world"], vocab_size=300)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    base = ["models", "compose", "--encoder", str(tmp_path / "whisper"), "--lm", str(tmp_path / "lm")]
    assert main([*base, "--out", str(tmp_path / "s"), "--adapter", "ctc", "--adapter_dim", "32",
                 "--adapter_layers", "1", "--lm_input", "posterior", "--acoustic_prefix", "2"]) == 0
    m = SpeechLLM.from_pretrained(tmp_path / "s")
    assert m.adapter is not None and m.adapter.lm_input == "posterior" and m.adapter.acoustic_prefix == 2
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--adapter", "ctc", "--compress", "none",
                 "--lm_input", "posterior"]) == 2
    assert "needs --compress ctc" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
