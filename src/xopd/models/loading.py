"""``load_student(path)``: one entry point that picks the right model class from a directory.

Users point xopd at a directory; they should not have to know which wrapper it needs. Dispatch:

- ``xopd_config.json`` present            -> :class:`~xopd.models.speech_llm.SpeechLLM`
- ``config.json`` with model_type ``qwen2_audio`` -> :class:`~xopd.models.qwen2_audio.Qwen2AudioStudent`
- model_type ``qwen2_5_omni[_thinker]`` / ``qwen3_omni_moe[_thinker]`` -> :class:`~xopd.models.qwen_omni.OmniThinkerStudent`
- any other ``config.json``               -> :class:`~xopd.models.text_lm.TextLM` (a text-only student)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xopd.errors import ModelError
from xopd.models.base import PolicyModel

OMNI_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker", "qwen3_omni_moe", "qwen3_omni_moe_thinker")
SPEECH_LLM_TYPES = {"qwen2_audio": "qwen2_audio", **dict.fromkeys(OMNI_TYPES, "qwen_omni")}


def student_kind(path: str | os.PathLike) -> str:
    """``"speech_llm"``, ``"qwen2_audio"`` or ``"text_lm"`` for a model directory (ModelError if none)."""
    from xopd.models.speech_llm import XOPD_CONFIG

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model directory not found; check the path")
    if not p.is_dir():
        raise ModelError(f"{p}: expected a model directory, found a file")
    if (p / XOPD_CONFIG).is_file():
        return "speech_llm"
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelError(
            f"{p}: neither {XOPD_CONFIG} (xopd SpeechLLM) nor config.json (Hugging Face model) found; "
            "point to a directory written by save_pretrained"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise ModelError(f"{cfg_file}: not valid JSON ({e})") from e
    mtype = cfg.get("model_type")
    if mtype in SPEECH_LLM_TYPES:
        return SPEECH_LLM_TYPES[mtype]
    if mtype in {"whisper", "qwen2_audio_encoder"} or not mtype:
        raise ModelError(
            f"{cfg_file}: model_type {mtype!r} is not a supported student; use an xopd SpeechLLM directory, "
            "a Qwen2-Audio directory or a causal LM (build a SpeechLLM with SpeechLLM.compose)"
        )
    return "text_lm"


def load_student(path: str | os.PathLike, *, trust_remote_code: bool = False, **kw) -> PolicyModel:
    """Load a student of any supported kind; ``kw`` (dtype, device, frozen) go to its ``from_pretrained``."""
    kind = student_kind(path)
    if kind == "speech_llm":
        from xopd.models.speech_llm import SpeechLLM

        return SpeechLLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    if kind == "qwen2_audio":
        from xopd.models.qwen2_audio import Qwen2AudioStudent

        return Qwen2AudioStudent.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    if kind == "qwen_omni":
        from xopd.models.qwen_omni import OmniThinkerStudent

        return OmniThinkerStudent.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    from xopd.models.text_lm import TextLM

    return TextLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
