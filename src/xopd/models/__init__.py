"""Models: every policy (student or teacher) behind one :class:`PolicyModel` interface.

Imports are lazy so that ``import xopd.models`` stays cheap (transformers loads on first use).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PolicyModel": "xopd.models.base",
    "Prompt": "xopd.models.base",
    "Turn": "xopd.models.base",
    "PromptBatch": "xopd.models.base",
    "left_pad": "xopd.models.base",
    "causal_lm_forward": "xopd.models.base",
    "render_chat_ids": "xopd.models.base",
    "TextLM": "xopd.models.text_lm",
    "load_teacher": "xopd.models.text_lm",
    "AudioEncoder": "xopd.models.encoder",
    "FrameStackProjector": "xopd.models.projector",
    "SpeechLLM": "xopd.models.speech_llm",
    "Qwen2AudioStudent": "xopd.models.qwen2_audio",
    "AlignmentReport": "xopd.models.alignment",
    "check_tokenizer_alignment": "xopd.models.alignment",
    "assert_same_response_length": "xopd.models.alignment",
    "load_student": "xopd.models.loading",
    "student_kind": "xopd.models.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xopd.models' has no attribute {name!r}")
