"""Text-to-speech for the mini world: espeak-ng behind one small interface, cached on disk.

Why espeak-ng: it is a real formant synthesiser that installs from Debian in seconds, has many
voices (``en-us``, ``en`` ...) and variants (``m1``..``m8``, ``f1``..``f5``) whose rate and pitch
can be set per utterance, so a speech student hears genuine acoustic variation, not a lookup table.

Two backends, same output:

* ``ctypes`` on ``libespeak-ng.so.1`` in synchronous mode with a callback that collects the int16
  samples (~4 ms per short question, no process start-up). espeak keeps global state (one voice,
  one callback), so every call holds a module-level lock.
* ``subprocess`` with an argument list (never a shell) and ``--`` before the text, used when the
  library cannot be loaded but the ``espeak-ng`` program exists.

Text is never interpreted: it goes to espeak as a C string / one argv element with SSML and
phoneme input off, so ``$(...)``, backticks or ``--help`` are simply read aloud.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf

from xopd.data.audio import SAMPLE_RATE, add_noise, to_mono_16k
from xopd.errors import XopdError

__all__ = [
    "EspeakEngine",
    "SynthJob",
    "TTSEngine",
    "TTSError",
    "Voice",
    "cache_key",
    "synthesize_cached",
    "synthesize_many",
]

_INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
_VOICE_RE = re.compile(r"^[A-Za-z0-9_/\-]+(\+[A-Za-z0-9_\-]+)?$")

# espeak-ng's C enums (speak_lib.h): audio output mode, parameters, position type and text flags.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1


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


# ----------------------------------------------------------------------------- ctypes backend
_LOCK = threading.Lock()
_CALLBACK_T = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Lib:
    """Process-wide handle on libespeak-ng (it is a global singleton in C, so we are one too)."""

    def __init__(self) -> None:
        lib = None
        for cand in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng")):
            if cand:
                try:
                    lib = ctypes.CDLL(cand)
                    break
                except OSError:
                    continue
        if lib is None:
            raise OSError("libespeak-ng not found")
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_T]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        # 1000 ms buffers: ~5x fewer callbacks than the 200 ms default for short prompts.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 1000, None, 0)
        if rate <= 0:
            raise OSError("espeak_Initialize failed (espeak-ng-data missing?)")
        self.lib, self.sample_rate = lib, int(rate)
        data = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data)) or b"?").decode()
        self.data_path = Path(data.value.decode()) if data.value else None
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK_T(self._collect)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._cb)
        self._voice: str | None = None

    def _collect(self, wav, n, _events) -> int:  # called by espeak inside espeak_Synth
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at the native rate. Caller must hold ``_LOCK``."""
        if voice.name != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                self._voice = None
                raise TTSError(f"espeak-ng has no voice {voice.name!r}; list them with `espeak-ng --voices=en`")
            self._voice = voice.name
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(voice.rate), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(voice.pitch), 0)
        self._chunks = []
        buf = text.encode("utf-8")
        err = self.lib.espeak_Synth(buf, len(buf) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if err != 0:
            raise TTSError(f"espeak_Synth failed with code {err} for voice {voice.name}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_LIB: _Lib | None = None
_LIB_ERROR: str | None = None


def _get_lib() -> _Lib | None:
    global _LIB, _LIB_ERROR
    if _LIB is None and _LIB_ERROR is None:
        try:
            _LIB = _Lib()
        except OSError as e:
            _LIB_ERROR = str(e)
    return _LIB


# ------------------------------------------------------------------------- subprocess backend
def _parse_wav_stream(raw: bytes) -> tuple[np.ndarray, int]:
    """Decode espeak-ng's ``--stdout`` WAV, whose size fields are bogus (it streams)."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise TTSError("espeak-ng --stdout did not return a WAV stream")
    pos, rate = 12, 22050
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if cid == b"fmt ":
            rate = int.from_bytes(raw[pos + 12 : pos + 16], "little")
        elif cid == b"data":
            body = raw[pos + 8 :]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").copy(), rate
        pos += 8 + size
    raise TTSError("espeak-ng --stdout WAV has no data chunk")


class EspeakEngine:
    """espeak-ng synthesis, resampled (soxr) from the native 22050 Hz to ``sample_rate``.

    ``backend``: ``"auto"`` (ctypes if the library loads, else the program), ``"ctypes"`` or
    ``"subprocess"``. Raises :class:`TTSError` with an install hint when espeak-ng is missing.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, backend: str = "auto") -> None:
        if backend not in ("auto", "ctypes", "subprocess"):
            raise TTSError(f"TTS backend {backend!r} unknown; use auto, ctypes or subprocess")
        self.sample_rate = int(sample_rate)
        self._lib = _get_lib() if backend in ("auto", "ctypes") else None
        self._exe = shutil.which("espeak-ng")
        if self._lib is not None:
            self.backend, self.native_rate = "ctypes", self._lib.sample_rate
            version, data = self._lib.version, self._lib.data_path
        elif backend == "ctypes":
            raise TTSError(f"cannot load libespeak-ng ({_LIB_ERROR}); {_INSTALL_HINT}")
        elif self._exe is not None:
            self.backend, self.native_rate = "subprocess", 22050
            version, data = self._program_info()
        else:
            raise TTSError(f"espeak-ng is not installed (no libespeak-ng.so.1, no espeak-ng program); {_INSTALL_HINT}")
        self.version, self.data_path = version, data
        self.name = f"espeak-ng-{version}"

    def _program_info(self) -> tuple[str, Path | None]:
        out = subprocess.run([self._exe, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"speech:\s*(\S+).*?Data at:\s*(\S+)", out, re.S)
        return (m.group(1), Path(m.group(2))) if m else ("?", None)

    def has_variant(self, variant: str) -> bool:
        """True if ``voices/!v/<variant>`` exists (espeak silently ignores unknown variants)."""
        return self.data_path is None or (self.data_path / "voices" / "!v" / variant).is_file()

    def synth_native(self, text: str, voice: Voice) -> np.ndarray:
        """``[n]`` int16 samples at ``self.native_rate`` (22050 Hz for espeak-ng)."""
        voice.validate()
        if voice.variant is not None and not self.has_variant(voice.variant):
            raise TTSError(f"espeak-ng has no variant {voice.variant!r} (voice {voice.name}); see {self.data_path}/voices/!v")
        text = text.replace("\x00", " ")  # C strings end at NUL; never let text be cut silently
        if not text.strip():
            raise TTSError(f"cannot synthesise empty text (voice {voice.name})")
        if self._lib is not None:
            with _LOCK:
                samples = self._lib.synth(text, voice)
        else:
            cmd = [self._exe, "-v", voice.name, "-s", str(int(voice.rate)), "-p", str(int(voice.pitch))]
            proc = subprocess.run([*cmd, "--stdout", "--", text], capture_output=True, check=False, timeout=120)
            if proc.returncode != 0:
                msg = proc.stderr.decode(errors="replace").strip().splitlines()
                raise TTSError(f"espeak-ng failed for voice {voice.name}: {msg[-1] if msg else proc.returncode}")
            samples, self.native_rate = _parse_wav_stream(proc.stdout)
        if samples.size == 0:
            raise TTSError(f"espeak-ng produced no audio for {text[:40]!r} (voice {voice.name})")
        return samples

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """``[n]`` float32 in [-1, 1] at ``self.sample_rate``."""
        pcm = self.synth_native(text, voice).astype(np.float32) / 32768.0
        return to_mono_16k(pcm, self.native_rate, self.sample_rate, name=f"tts:{voice.name}")

    def synth_16k(self, text: str, voice: Voice) -> np.ndarray:
        """Same as :meth:`synth` but always at 16 kHz, whatever ``sample_rate`` is."""
        pcm = self.synth_native(text, voice).astype(np.float32) / 32768.0
        return to_mono_16k(pcm, self.native_rate, SAMPLE_RATE, name=f"tts:{voice.name}")


# ------------------------------------------------------------------------------------ caching
def cache_key(engine_name: str, text: str, voice: Voice, noise_snr_db: float | None, seed: int) -> str:
    """sha256 over everything that changes the waveform (engine, text, voice, noise, seed)."""
    noise = None if noise_snr_db is None else float(noise_snr_db)
    payload = [engine_name, text, voice.name, int(voice.rate), int(voice.pitch), noise, int(seed), SAMPLE_RATE]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def synthesize_cached(
    engine: TTSEngine,
    text: str,
    voice: Voice,
    cache_dir: str | os.PathLike,
    noise_snr_db: float | None = None,
    seed: int = 0,
) -> Path:
    """Synthesise once into ``cache_dir/<k[:2]>/<k>.wav`` (16 kHz PCM16) and return the path.

    The file name is the :func:`cache_key`, so a second run (or another process) reuses it and any
    change in text/voice/noise/seed/engine makes a new file. Noise is white Gaussian at
    ``noise_snr_db``, drawn from an RNG seeded by the key: reproducible, yet different per
    utterance even when ``seed`` is the same. Writes are atomic (tmp + ``os.replace``).
    """
    name = getattr(engine, "name", type(engine).__name__)
    key = cache_key(name, text, voice, noise_snr_db, seed)
    path = Path(cache_dir) / key[:2] / f"{key}.wav"
    if path.is_file() and path.stat().st_size > 44:
        return path
    rate = int(engine.sample_rate)
    wav = np.asarray(engine.synth(text, voice), dtype=np.float32)
    if rate != SAMPLE_RATE:
        wav = to_mono_16k(wav, rate, SAMPLE_RATE, name=f"tts:{voice.name}")
    if noise_snr_db is not None:
        wav = add_noise(wav, float(noise_snr_db), np.random.default_rng(int(key[:16], 16)))
    _write_wav_atomic(path, wav)
    return path


def _write_wav_atomic(path: Path, wav: np.ndarray) -> None:
    """PCM16 WAV via an in-memory buffer, then tmp + ``os.replace``.

    Not ``xopd.data.audio.save_wav``: libsndfile's flush on a real file syncs to disk (~3 ms per
    file, half the cost of synthesis); a cache entry can always be regenerated, so atomicity
    (no half-written file is ever visible) is enough here.
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class SynthJob:
    """One utterance to synthesise (what :func:`synthesize_cached` takes, minus engine/dir)."""

    text: str
    voice: Voice
    noise_snr_db: float | None = None
    seed: int = 0


def synthesize_many(
    engine: TTSEngine,
    jobs: Iterable[SynthJob],
    cache_dir: str | os.PathLike,
    progress: bool = False,
    desc: str = "tts",
    workers: int = 1,
) -> list[Path]:
    """:func:`synthesize_cached` over many jobs; returns paths in job order.

    Cached jobs are skipped up front (a re-run costs one ``stat`` per file). ``workers > 1``
    synthesises the rest in that many processes, each with its own espeak-ng (the C library is
    one global per process, so threads would only queue on the lock); only for
    :class:`EspeakEngine`, other engines run in-process.
    """
    jobs_list: Sequence[SynthJob] = list(jobs)
    name = getattr(engine, "name", type(engine).__name__)
    root = Path(cache_dir)
    paths = [root / k[:2] / f"{k}.wav" for k in (cache_key(name, j.text, j.voice, j.noise_snr_db, j.seed) for j in jobs_list)]
    todo = [i for i, p in enumerate(paths) if not (p.is_file() and p.stat().st_size > 44)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="utt")
    if workers > 1 and len(todo) >= 64 and isinstance(engine, EspeakEngine):
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        args = [(root, jobs_list[i]) for i in todo]
        with ctx.Pool(workers, _pool_init, (engine.sample_rate, engine.backend)) as pool:
            for _ in pool.imap_unordered(_pool_run, args, chunksize=16):
                if bar is not None:
                    bar.update(1)
    else:
        for i in todo:
            j = jobs_list[i]
            synthesize_cached(engine, j.text, j.voice, root, j.noise_snr_db, j.seed)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return paths


_POOL_ENGINE: EspeakEngine | None = None


def _pool_init(sample_rate: int, backend: str) -> None:
    global _POOL_ENGINE
    _POOL_ENGINE = EspeakEngine(sample_rate, backend)


def _pool_run(arg: tuple[Path, SynthJob]) -> Path:
    root, j = arg
    assert _POOL_ENGINE is not None
    return synthesize_cached(_POOL_ENGINE, j.text, j.voice, root, j.noise_snr_db, j.seed)
