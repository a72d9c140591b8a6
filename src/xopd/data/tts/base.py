"""The TTS interface: a voice, the engine protocol, and the error every backend raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from xopd.errors import XopdError

_VOICE_RE = re.compile(r"^[A-Za-z0-9_/\-]+(\+[A-Za-z0-9_\-]+)?$")


class TTSError(XopdError):
    """TTS is unavailable or was asked something impossible (missing espeak-ng, unknown voice)."""


@dataclass(frozen=True)
class Voice:
    """One speaking voice: espeak-ng voice[+variant] name, rate in words/min, pitch 0-99.

    ``name`` is what ``espeak-ng -v`` takes, e.g. ``"en-us+m3"`` or ``"en+f2"``.
    """

    name: str
    rate: int = 175
    pitch: int = 50

    def validate(self) -> Voice:
        """Raise :class:`TTSError` for a malformed name or out-of-range rate/pitch; return self."""
        if not _VOICE_RE.match(self.name):
            raise TTSError(f"voice name {self.name!r} is malformed; use e.g. 'en-us' or 'en-us+m3'")
        if not 80 <= int(self.rate) <= 450:
            raise TTSError(f"voice {self.name}: rate {self.rate} wpm outside espeak-ng's 80-450")
        if not 0 <= int(self.pitch) <= 99:
            raise TTSError(f"voice {self.name}: pitch {self.pitch} outside 0-99")
        return self

    @property
    def variant(self) -> str | None:
        """The ``+variant`` part (``"m3"``), or None for the base voice."""
        return self.name.split("+", 1)[1] if "+" in self.name else None


@runtime_checkable
class TTSEngine(Protocol):
    """Anything that turns text into mono float32 audio at ``sample_rate`` Hz.

    ``name`` identifies the engine (and version) in cache keys, so a different synthesiser never
    reuses another's files.
    """

    name: str
    sample_rate: int

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """Return ``[n]`` float32 samples in [-1, 1] at ``self.sample_rate``."""
        ...
