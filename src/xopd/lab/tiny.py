"""Tiny, offline, seeded models and data for tests and ``configs/tiny.yaml``.

Everything here is built from configs on the spot (no downloads) and saved in the same standard
layouts real checkpoints use, so tests exercise the real loading code: the teacher is a plain HF
``LlamaForCausalLM`` directory, the student a :class:`SpeechLLM` directory whose LM is a copy of the
teacher's (the mini world's premise: same backbone, audio bolted on), and the data a JSONL manifest
of short synthetic wavs.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from xopd.utils.hf import quiet_hf

SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|audio|>", "<|user|>", "<|assistant|>", "<|system|>"]
PAD, EOS, AUDIO = SPECIAL_TOKENS[:3]

#: One user turn (optionally after a system turn) and the assistant prompt; assistant turns close with
#: eos so that SFT targets teach the model to stop.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|eos|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

DEFAULT_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "what is the sum of plus minus times divided by equals answer question please step first then so "
    "repeat reverse sort count say after me words letters list in order how many are there "
    "is speaker fast slow high low voice noise noisy clean man woman loud quiet sound audio "
    "transcribe transcript yes no a an and or it this that to of for with on at from "
    "red green blue yellow black white cat dog bird fish tree house car book sun moon "
    "apple banana orange water food big small hot cold new old good bad up down left right"
).split()


def build_tiny_tokenizer(
    words: list[str] | None = None, out_dir: str | os.PathLike | None = None, vocab_size: int = 512
):
    """A byte-level BPE trained locally on ``words`` (default: :data:`DEFAULT_WORDS`).

    Byte-level so that every string (newlines, digits, punctuation) round-trips exactly, digits
    split one per token like Llama/Qwen tokenizers. Special tokens get ids 0-5 in
    :data:`SPECIAL_TOKENS` order. BPE may stop short of ``vocab_size``: size models with ``len(tok)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = list(words) if words else list(DEFAULT_WORDS)
    rng = random.Random(0)
    corpus = [" ".join(words)] * 4 + ["0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - + * / ="]
    for _ in range(64):
        corpus.append(" ".join(rng.sample(words, min(8, len(words)))) + rng.choice([".", "?", "!", ""]))
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, eos_token=EOS, additional_special_tokens=SPECIAL_TOKENS[2:]
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.padding_side = "left"
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def tiny_llama(tokenizer, d: int, layers: int, heads: int, ffn: int, seed: int = 0, max_positions: int = 1024):
    """A randomly initialised ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary (eos/pad from it, no BOS),
    seeded: the one builder of the small Llamas that tests, the bench and the mini world use."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def build_tiny_teacher(out_dir: str | os.PathLike, tokenizer, d: int = 64, layers: int = 2, seed: int = 0):
    """A random ``LlamaForCausalLM`` (d x layers) saved with ``tokenizer`` and eos/pad generation config."""
    quiet_hf(offline=False)
    model = tiny_llama(tokenizer, d, layers, heads=max(1, d // 16), ffn=2 * d, seed=seed).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def tiny_whisper_config(
    d_enc: int = 32, enc_layers: int = 1, n_mels: int = 80, max_source_positions: int = 1500
):
    """A small ``WhisperConfig`` (the decoder fields are unused but must be valid for save/load)."""
    from transformers import WhisperConfig

    heads = max(1, d_enc // 16)
    return WhisperConfig(
        vocab_size=64,
        num_mel_bins=n_mels,
        d_model=d_enc,
        encoder_layers=enc_layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_enc,
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=4 * d_enc,
        max_source_positions=max_source_positions,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def build_tiny_student(
    out_dir: str | os.PathLike,
    teacher_dir: str | os.PathLike,
    d_enc: int = 32,
    enc_layers: int = 1,
    n_mels: int = 80,
    stack: int = 2,
    seed: int = 0,
    adapter: dict | None = None,
):
    """A :class:`SpeechLLM`: random tiny WhisperEncoder + projector + a copy of the teacher's LM
    (+ a tiny CTC adapter between them when ``adapter`` gives its keyword arguments)."""
    from xopd.models.encoder import AudioEncoder
    from xopd.models.speech_llm import SpeechLLM

    quiet_hf(offline=False)
    torch.manual_seed(seed)
    enc = AudioEncoder.from_config(tiny_whisper_config(d_enc, enc_layers, n_mels))
    model = SpeechLLM.compose(enc, teacher_dir, stack=stack, seed=seed, adapter=adapter)
    model.save_pretrained(out_dir)
    return model


def _sentences(n: int, rng: random.Random) -> list[dict]:
    colours = ["red", "green", "blue", "yellow", "black", "white", "cat", "dog", "bird", "fish"]
    rows = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(0, 6), rng.randint(0, 6)
            rows.append({"text": f"what is {a} plus {b}?", "task": "arithmetic", "answer": str(a + b)})
        else:
            w = rng.sample(colours, 2)
            rows.append(
                {"text": f"repeat after me {w[0]} {w[1]}", "task": "instruction", "answer": " ".join(w)}
            )
    return rows


def build_tiny_world(out_dir: str | os.PathLike, n: int = 8, seed: int = 0) -> dict[str, str]:
    """Teacher, student and a manifest of ``n`` short synthetic wavs under ``out_dir``.

    Returns paths: ``root``, ``teacher``, ``student``, ``manifest``, ``audio_dir``. Idempotent: a
    ``tiny_world.json`` marker is written last and a complete world is reused as is.
    """
    from xopd.data.audio import SAMPLE_RATE, save_wav

    root = Path(out_dir)
    paths = {
        "root": str(root),
        "teacher": str(root / "teacher"),
        "student": str(root / "student"),
        "manifest": str(root / "data" / "manifest.jsonl"),
        "audio_dir": str(root / "data" / "audio"),
    }
    marker = root / "tiny_world.json"
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("n") == n and done.get("seed") == seed and all(Path(p).exists() for p in paths.values()):
            return paths
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    build_tiny_teacher(paths["teacher"], tok, seed=seed)
    build_tiny_student(paths["student"], paths["teacher"], seed=seed)

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    rows = []
    for i, row in enumerate(_sentences(n, rng)):
        dur = float(nrng.uniform(0.3, 1.0))
        t = np.arange(int(dur * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = float(nrng.uniform(150.0, 400.0))
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) * np.hanning(t.size) + 0.02 * nrng.standard_normal(t.size)
        rel = f"audio/{i:04d}.wav"
        save_wav(root / "data" / rel, wav.astype(np.float32))
        rows.append({"id": f"tiny-{i:04d}", "audio": rel, **row})
    manifest = Path(paths["manifest"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    marker.write_text(json.dumps({"n": n, "seed": seed, **paths}, indent=2) + "\n")
    return paths


QWEN2_AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def build_tiny_qwen2_audio(
    out_dir: str | os.PathLike | None = None, tokenizer=None, seed: int = 0, n_mels: int = 80,
    width: int = 32, heads: int = 4, kv_heads: int = 2,
):
    """A random tiny ``Qwen2AudioForConditionalGeneration`` + processor, as a :class:`Qwen2AudioStudent`.
    ``width`` / ``heads`` / ``kv_heads`` shape its LM (vLLM's CPU attention needs a head size of >= 32).

    The tokenizer is the tiny BPE plus Qwen2-Audio's three audio special tokens. The audio tower
    keeps the real 1500-position (30 s) contract; it is only 16 wide, so that stays cheap.
    """
    from tokenizers import AddedToken
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from xopd.models.qwen2_audio import Qwen2AudioStudent

    quiet_hf(offline=False)
    tok = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    missing = [t for t in QWEN2_AUDIO_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    torch.manual_seed(seed)
    cfg = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "d_model": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "num_mel_bins": n_mels,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": None,
        },
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = Qwen2AudioForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=n_mels),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )
    student = Qwen2AudioStudent(model, processor)
    if out_dir is not None:
        student.save_pretrained(out_dir)
    return student
