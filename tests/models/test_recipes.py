"""The paper-scale recipes (configs/*.yaml) run 1 X-OPD step through `xopd train` on tiny random
configs of the same transformers classes: Qwen2-Audio + Qwen2, Qwen2.5-Omni thinker + Qwen2,
Qwen3-Omni thinker + Qwen3-MoE. Also the usual mistakes fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xopd.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QWEN25_OMNI_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
QWEN3_OMNI_TOKENS = ["<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"]


def _tokenizer(extra: list[str]):
    from tokenizers import AddedToken

    from xopd.lab.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra], special_tokens=True)
    return tok


def _text_cfg(tok, **kw) -> dict:
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


def _save_teacher(model, tok, out: Path) -> str:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _audio_cfg(**kw) -> dict:
    return dict(
        d_model=16,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        num_mel_bins=80,
        max_source_positions=1500,
        n_window=50,
        output_dim=32,
        **kw,
    )


def build_qwen2_audio(root: Path) -> tuple[str, str]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from xopd.lab.tiny import QWEN2_AUDIO_TOKENS, build_tiny_qwen2_audio

    tok = _tokenizer(QWEN2_AUDIO_TOKENS)
    build_tiny_qwen2_audio(root / "student", tokenizer=tok, seed=0)
    torch.manual_seed(1)
    teacher = Qwen2ForCausalLM(Qwen2Config(**_text_cfg(tok) | {"vocab_size": len(tok) + 8}))  # padded rows
    return str(root / "student"), _save_teacher(teacher, tok, root / "teacher")


def _save_thinker(model, tok, out: Path) -> str:
    from transformers import GenerationConfig, WhisperFeatureExtractor

    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return str(out)


def build_qwen25_omni(root: Path) -> tuple[str, str]:
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = _tokenizer(QWEN25_OMNI_TOKENS)
    ids = tok.convert_tokens_to_ids(QWEN25_OMNI_TOKENS)
    torch.manual_seed(0)
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=_audio_cfg(),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=_text_cfg(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [1, 1, 2]}),
        audio_token_index=ids[1], audio_start_token_id=ids[0], audio_end_token_id=ids[2],
    )  # fmt: skip
    student = _save_thinker(Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval(), tok, root / "student")
    torch.manual_seed(1)
    return student, _save_teacher(Qwen2ForCausalLM(Qwen2Config(**_text_cfg(tok))), tok, root / "teacher")


def build_qwen3_omni(root: Path) -> tuple[str, str]:
    from transformers import (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    tok = _tokenizer(QWEN3_OMNI_TOKENS)
    ids = tok.convert_tokens_to_ids(QWEN3_OMNI_TOKENS)
    moe = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=8)
    torch.manual_seed(0)
    cfg = Qwen3OmniMoeThinkerConfig(
        audio_config=_audio_cfg(downsample_hidden_size=8, n_window_infer=100, conv_chunksize=50),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0]),
        text_config=_text_cfg(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [1, 1, 2]}, **moe),
        audio_token_id=ids[1], audio_start_token_id=ids[0],
    )  # fmt: skip
    student = _save_thinker(Qwen3OmniMoeThinkerForConditionalGeneration(cfg).eval(), tok, root / "student")
    torch.manual_seed(1)
    teacher = Qwen3MoeForCausalLM(Qwen3MoeConfig(**_text_cfg(tok, **moe)))
    return student, _save_teacher(teacher, tok, root / "teacher")


ONE_STEP = ["--max_steps", "1", "--batch_size", "2", "--micro_batch_size", "2", "--n_samples", "2",
            "--max_new_tokens", "4", "--dtype", "float32", "--device", "cpu", "--gradient_checkpointing", "false",
            "--warmup_steps", "0", "--eval_prompts", "2", "--save_every", "1", "--report_to", "jsonl",
            "--progress", "false", "--logprob_chunk", "0", "--lr", "1e-3"]  # fmt: skip


@pytest.mark.parametrize(
    ("recipe", "build"),
    [("qwen2-audio-7b", build_qwen2_audio), ("qwen2.5-omni-7b", build_qwen25_omni),
     ("qwen3-omni-30b-a3b", build_qwen3_omni)],
)  # fmt: skip
def test_recipe_runs_one_xopd_step(recipe, build, tmp_path: Path, tiny_manifest: str) -> None:
    from xopd.models import load_student

    student, teacher = build(tmp_path)
    out = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(CONFIGS / f"{recipe}.yaml"),
        "--student_path",
        student,
        "--teacher_path",
        teacher,
        "--manifest",
        tiny_manifest,
        "--eval_manifest",
        tiny_manifest,
        "--output_dir",
        str(out),
        *ONE_STEP,
    ]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if r.get("step") == 1 and "loss" in r][0]
    assert step["skipped_update"] is False and step["response_len_S"] > 0 and step["response_len_T"] > 0
    assert any("eval_reverse_kl_S" in r for r in rows)
    before, after = load_student(student), load_student(out / "checkpoint-1" / "model")
    assert type(before) is type(after)
    lm_b, lm_a = before.causal_lm().get_output_embeddings(), after.causal_lm().get_output_embeddings()
    assert not torch.equal(lm_b.weight, lm_a.weight)  # the backbone trained ...
    enc = [n for n, _ in before.named_parameters() if "audio_tower.layers.0" in n][0]
    assert torch.equal(
        dict(before.named_parameters())[enc], dict(after.named_parameters())[enc]
    )  # ... the tower not


def test_recipes_are_valid_train_configs() -> None:
    from xopd.config import load_config
    from xopd.training.config import TrainConfig

    for name in ("qwen2-audio-7b", "qwen2.5-omni-7b", "qwen3-omni-30b-a3b"):
        cfg = load_config(TrainConfig, str(CONFIGS / f"{name}.yaml"), {})
        assert (cfg.algo, cfg.lam, cfg.n_samples, cfg.lr, cfg.batch_size) == ("xopd", 0.5, 4, 2e-6, 256)
        assert cfg.train_lm and not cfg.train_encoder and not cfg.train_projector


def test_vocab_mismatch_is_one_clear_line(tmp_path: Path, tiny_world, capsys) -> None:
    """A teacher whose tokenizer differs beyond padding is refused before any training."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from xopd.lab.tiny import build_tiny_tokenizer

    other = build_tiny_tokenizer(words=["completely", "different", "words", "here"] * 3)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**_text_cfg(other)))
    tdir = _save_teacher(teacher, other, tmp_path / "teacher")
    argv = [
        "train",
        "--student_path",
        tiny_world["student"],
        "--teacher_path",
        tdir,
        "--manifest",
        tiny_world["manifest"],
        "--output_dir",
        str(tmp_path / "run"),
        *ONE_STEP,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xopd train: error:") and "tokenizers disagree" in err and "teacher" in err
