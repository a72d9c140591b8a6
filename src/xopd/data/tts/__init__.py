"""Text-to-speech for the mini world and ``xopd synth``, cached on disk.

Why espeak-ng by default: a real formant synthesiser that installs from Debian in seconds, with voices
(``en-us``, ``en``) and variants (``m1``..``m8``, ``f1``..``f5``) whose rate and pitch are set per
utterance, so a speech student hears genuine acoustic variation. piper-tts gives a neural voice.

Modules: ``base`` (Voice, the engine protocol, TTSError), ``espeak`` (ctypes binding, fork server,
subprocess backend), ``piper``, ``cache`` (content-keyed disk cache and the process pool).
"""

from __future__ import annotations

from xopd.data.tts.base import TTSEngine, TTSError, Voice
from xopd.data.tts.cache import SynthJob, cache_key, synthesize_cached, synthesize_many
from xopd.data.tts.espeak import EspeakEngine
from xopd.data.tts.piper import PiperEngine, make_engine

__all__ = [
    "EspeakEngine",
    "PiperEngine",
    "SynthJob",
    "TTSEngine",
    "TTSError",
    "Voice",
    "cache_key",
    "make_engine",
    "synthesize_cached",
    "synthesize_many",
]
