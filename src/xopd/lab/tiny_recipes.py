"""Tiny random checkpoints of the shipped recipes' classes (``configs/*-7b.yaml``, ``*-a3b.yaml``).

Each builder writes a student directory and a teacher directory in the layouts the real checkpoints
use, so the recipe tests, ``tests/gpu`` and ``benchmarks/gpu_check.py --scale tiny`` run the real
loading code (``from_pretrained`` on a local directory) without downloading anything:

* Qwen2-Audio-7B-Instruct + Qwen2-7B-Instruct  -> ``Qwen2AudioForConditionalGeneration`` + ``Qwen2ForCausalLM``
* Qwen2.5-Omni-7B (thinker) + Qwen2.5-7B       -> ``Qwen2_5OmniThinkerForConditionalGeneration`` + ``Qwen2ForCausalLM``
* Qwen3-Omni-30B-A3B (thinker) + Qwen3-30B-A3B -> ``Qwen3OmniMoeThinkerForConditionalGeneration`` + ``Qwen3MoeForCausalLM``

Sizes are tiny (width 32, 2 layers) but every contract is the real one: the audio special tokens,
M-RoPE sections, MoE routing, a vision tower the run never uses, a teacher with padded vocabulary rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

QWEN25_OMNI_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
QWEN3_OMNI_TOKENS = ["<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"]


def tokenizer_with(extra: list[str]):
    """The tiny BPE tokenizer plus ``extra`` special tokens (a recipe family's audio tokens)."""
    from tokenizers import AddedToken

    from xopd.lab.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra], special_tokens=True)
    return tok


def text_config(tok, **kw) -> dict:
    """A 2-layer, 32-wide text config with GQA (4 query heads, 2 KV heads) over ``tok``."""
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **kw,
    )


def save_teacher(model, tok, out: str | os.PathLike) -> str:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _audio_config(**kw) -> dict:
    return dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
                max_source_positions=1500, n_window=50, output_dim=32, **kw)


def _save_thinker(model, tok, out: Path) -> str:
    from transformers import GenerationConfig, WhisperFeatureExtractor

    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return str(out)


_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}


def build_qwen2_audio_pair(root: str | os.PathLike) -> tuple[str, str]:
    """Tiny Qwen2-Audio student + Qwen2 teacher (8 padded vocabulary rows, as real teachers have)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from xopd.lab.tiny import QWEN2_AUDIO_TOKENS, build_tiny_qwen2_audio

    root = Path(root)
    tok = tokenizer_with(QWEN2_AUDIO_TOKENS)
    build_tiny_qwen2_audio(root / "student", tokenizer=tok, seed=0)
    torch.manual_seed(1)
    teacher = Qwen2ForCausalLM(Qwen2Config(**text_config(tok) | {"vocab_size": len(tok) + 8}))
    return str(root / "student"), save_teacher(teacher, tok, root / "teacher")


def qwen25_omni_thinker_config(tok, num_mel_bins: int = 80):
    """A tiny Qwen2.5-Omni thinker config over ``tok`` (which must hold the three audio tokens)."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = tok.convert_tokens_to_ids(QWEN25_OMNI_TOKENS)
    return Qwen2_5OmniThinkerConfig(
        audio_config=_audio_config() | {"num_mel_bins": num_mel_bins},
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=text_config(tok, rope_parameters=_MROPE),
        audio_token_index=ids[1], audio_start_token_id=ids[0], audio_end_token_id=ids[2],
    )  # fmt: skip


def build_qwen25_omni_pair(root: str | os.PathLike) -> tuple[str, str]:
    """Tiny Qwen2.5-Omni thinker student (with its unused vision tower) + Qwen2 teacher."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

    root = Path(root)
    tok = tokenizer_with(QWEN25_OMNI_TOKENS)
    torch.manual_seed(0)
    cfg = qwen25_omni_thinker_config(tok)
    student = _save_thinker(Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval(), tok, root / "student")
    torch.manual_seed(1)
    return student, save_teacher(Qwen2ForCausalLM(Qwen2Config(**text_config(tok))), tok, root / "teacher")


def build_qwen3_omni_pair(root: str | os.PathLike) -> tuple[str, str]:
    """Tiny Qwen3-Omni-MoE thinker student (4 experts, top 2) + Qwen3-MoE teacher."""
    from transformers import (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    root = Path(root)
    tok = tokenizer_with(QWEN3_OMNI_TOKENS)
    ids = tok.convert_tokens_to_ids(QWEN3_OMNI_TOKENS)
    moe = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=8)
    torch.manual_seed(0)
    cfg = Qwen3OmniMoeThinkerConfig(
        audio_config=_audio_config(downsample_hidden_size=8, n_window_infer=100, conv_chunksize=50),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0]),
        text_config=text_config(tok, rope_parameters=_MROPE, **moe),
        audio_token_id=ids[1], audio_start_token_id=ids[0],
    )  # fmt: skip
    student = _save_thinker(Qwen3OmniMoeThinkerForConditionalGeneration(cfg).eval(), tok, root / "student")
    torch.manual_seed(1)
    teacher = Qwen3MoeForCausalLM(Qwen3MoeConfig(**text_config(tok, **moe)))
    return student, save_teacher(teacher, tok, root / "teacher")


#: recipe name (``configs/<name>.yaml``) -> builder of its tiny (student_dir, teacher_dir) pair
RECIPE_BUILDERS: dict[str, Callable[[str | os.PathLike], tuple[str, str]]] = {
    "qwen2-audio-7b": build_qwen2_audio_pair,
    "qwen2.5-omni-7b": build_qwen25_omni_pair,
    "qwen3-omni-30b-a3b": build_qwen3_omni_pair,
}
