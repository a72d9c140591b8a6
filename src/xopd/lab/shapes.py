"""Full-size shapes of the shipped recipes' models, as config.json directories (no weights).

What the memory planner (``xopd plan``) and ``benchmarks/gpu_check.py`` need when the real checkpoints
are not on this machine: the published architecture numbers of each model (width, depth, heads, KV
heads, FFN / experts, vocabulary, audio and vision towers), typed in from the models' config.json on
the Hugging Face hub. With the real checkpoint downloaded, point ``xopd plan`` at it instead.

``layers`` cuts the text decoder's depth (the GPU check's "reduced depth where memory needs it");
every per-layer shape stays full size.
"""

from __future__ import annotations

import os
from pathlib import Path

_QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
_QWEN3_30B_A3B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                      num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, num_experts=128,
                      num_experts_per_tok=8, vocab_size=151936, max_position_embeddings=32768,
                      tie_word_embeddings=False)
_WHISPER_LARGE_ENCODER = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                              num_mel_bins=128, max_source_positions=1500)


def _depth(cfg: dict, layers: int | None) -> dict:
    return {**cfg, "num_hidden_layers": layers} if layers else cfg


def qwen25_omni_7b_thinker(layers: int | None = None):
    from transformers import Qwen2_5OmniThinkerConfig

    text = _depth(_QWEN25_7B, layers) | {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                             "mrope_section": [16, 24, 24]}}
    return Qwen2_5OmniThinkerConfig(
        text_config=text,
        audio_config=_WHISPER_LARGE_ENCODER | {"output_dim": 3584, "n_window": 100},
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31]),
    )


def qwen3_omni_30b_a3b_thinker(layers: int | None = None):
    from transformers import Qwen3OmniMoeThinkerConfig

    text = _depth(_QWEN3_30B_A3B, layers) | {"vocab_size": 152064, "rope_parameters": {
        "rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [24, 20, 20]}}
    return Qwen3OmniMoeThinkerConfig(
        text_config=text,
        audio_config=_WHISPER_LARGE_ENCODER | {"output_dim": 2048, "n_window": 50, "downsample_hidden_size": 480},
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048),
    )


def qwen2_audio_7b(layers: int | None = None):
    from transformers import Qwen2AudioConfig

    text = _depth(dict(model_type="qwen2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=156032,
                       max_position_embeddings=8192, tie_word_embeddings=False), layers)
    return Qwen2AudioConfig(text_config=text, audio_config={"model_type": "qwen2_audio_encoder",
                                                            **_WHISPER_LARGE_ENCODER})


def qwen2_7b(layers: int | None = None):
    from transformers import Qwen2Config

    return Qwen2Config(**_depth(_QWEN25_7B, layers))


def qwen3_30b_a3b(layers: int | None = None):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**_depth(_QWEN3_30B_A3B, layers))


#: recipe -> (student config, teacher config) builders, each taking an optional reduced depth
RECIPE_SHAPES = {
    "qwen2-audio-7b": (qwen2_audio_7b, qwen2_7b),
    "qwen2.5-omni-7b": (qwen25_omni_7b_thinker, qwen2_7b),
    "qwen3-omni-30b-a3b": (qwen3_omni_30b_a3b_thinker, qwen3_30b_a3b),
}


def write_shape_dirs(recipe: str, root: str | os.PathLike, layers: int | None = None) -> tuple[str, str]:
    """``root/student`` and ``root/teacher``, each holding only the config.json of the full-size shape."""
    student_cfg, teacher_cfg = RECIPE_SHAPES[recipe]
    out = []
    for name, build in (("student", student_cfg), ("teacher", teacher_cfg)):
        d = Path(root) / name
        build(layers).save_pretrained(d)
        out.append(str(d))
    return out[0], out[1]
