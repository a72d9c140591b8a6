"""Audio I/O: one place that turns any sound file into 16 kHz mono float32.

Every model in xopd (Whisper-style encoders, the mini-world student) expects 16 kHz mono audio in
[-1, 1]. Files come from TTS, corpora and users in every shape (8-bit, 24-bit, float, stereo,
44.1 kHz), so loading normalises them all and turns every way a file can be unusable into a
one-line :class:`~xopd.errors.DataError` that names the path, instead of a crash inside the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from xopd.errors import DataError

SAMPLE_RATE = 16000

__all__ = ["SAMPLE_RATE", "add_noise", "decode_audio_bytes", "load_audio", "save_wav", "to_mono_16k"]


def to_mono_16k(
    wav: np.ndarray, source_rate: int, sample_rate: int = SAMPLE_RATE, *, name: str = "<array>"
) -> np.ndarray:
    """Average channels, resample to ``sample_rate`` and check samples are finite.

    ``wav`` is ``[n]`` or ``[n, channels]`` (soundfile's layout). Returns ``[n']`` float32 in
    [-1, 1]. Shared by :func:`load_audio` and in-memory datasets so both paths agree exactly.
    """
    arr = np.asarray(wav)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{name}: audio samples have dtype {arr.dtype}; expected numbers")
    if arr.ndim == 2:
        arr = arr.astype(np.float64).mean(axis=1)
    elif arr.ndim != 1:
        raise DataError(f"{name}: audio has shape {arr.shape}; expected [samples] or [samples, channels]")
    arr = arr.astype(np.float32, copy=False)
    if arr.size == 0:
        raise DataError(f"{name}: audio has zero samples; re-export or drop this file")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: audio contains NaN/inf samples; re-export the file")
    if source_rate <= 0:
        raise DataError(f"{name}: invalid sampling rate {source_rate}")
    if source_rate != sample_rate:
        arr = soxr.resample(arr, source_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        if arr.size == 0:
            raise DataError(f"{name}: audio is too short to resample to {sample_rate} Hz")
    # Float files may exceed full scale and sinc resampling rings past it on clipped input:
    # clip like a DAC would, so downstream code can rely on [-1, 1].
    return np.clip(arr, -1.0, 1.0)


def load_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> np.ndarray:
    """Read any soundfile-supported file as ``[n]`` float32 mono in [-1, 1] at ``sample_rate``.

    Channels are averaged, the rate converted with soxr (HQ). Raises :class:`DataError` naming
    the path for a missing/empty/unreadable/non-audio/corrupt file, zero samples, NaN/inf samples
    or a duration over ``max_seconds`` (checked from the header first so long files are not
    decoded). Silence and clipping are valid audio. A WAV truncated mid-data loads as the part
    that is there (libsndfile trims the frame count); a truncated compressed file raises.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: audio file not found; check the path")
    if not p.is_file():
        raise DataError(f"{p}: audio path is not a regular file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: audio file is empty (0 bytes); re-export or drop it")
    try:
        info = sf.info(str(p))
        if max_seconds is not None and info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
            raise DataError(
                f"{p}: audio is {info.frames / info.samplerate:.2f} s, over the {max_seconds:g} s limit; "
                "trim it or raise max_seconds"
            )
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except DataError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, EOFError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{p}: unreadable or not audio ({msg}); re-export as WAV/FLAC") from e
    wav = to_mono_16k(data, sr, sample_rate, name=str(p))
    if max_seconds is not None and wav.size / sample_rate > max_seconds:
        raise DataError(
            f"{p}: audio is {wav.size / sample_rate:.2f} s, over the {max_seconds:g} s limit; "
            "trim it or raise max_seconds"
        )
    return wav


def decode_audio_bytes(data: bytes, name: str = "<bytes>", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an encoded audio file held in memory (WAV, FLAC, OGG, MP3: whatever libsndfile reads;
    the 1.1+ libsndfile that soundfile wheels bundle decodes MP3) to ``[n]`` float32 mono at ``sample_rate``.

    This is how audio embedded in parquet / Arrow datasets (``{"bytes", "path"}`` cells) is read.
    Raises :class:`DataError` naming ``name`` when the bytes are empty or not decodable.
    """
    import io

    if not data:
        raise DataError(f"{name}: audio bytes are empty")
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name}: audio bytes unreadable ({msg})") from e
    return to_mono_16k(wav, sr, sample_rate, name=name)


def save_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``[n]`` (or ``[n, channels]``) float audio as 16-bit PCM WAV, atomically.

    Writes a temporary file in the destination folder and ``os.replace``-s it, so a crash or a
    concurrent reader never sees a half-written file (readers may run while TTS synthesis writes).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(wav, dtype=np.float32)
    if arr.size == 0:
        raise DataError(f"{p}: refusing to write zero samples")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{p}: refusing to write NaN/inf samples")
    arr = np.clip(arr, -1.0, 1.0)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        sf.write(tmp, arr, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_noise(
    wav: np.ndarray, snr_db: float, rng: np.random.Generator, *, floor_db: float = -60.0
) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the signal's mean power.

    The signal power is floored at ``floor_db`` dBFS (mean-square, default -60 dB) so silence
    gets a faint, deterministic-level noise rather than none (SNR of silence is undefined). The
    result is float32 clipped to [-1, 1]; with ``rng`` seeded the output is reproducible.
    """
    x = np.asarray(wav, dtype=np.float32)
    power = max(float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0, 10.0 ** (floor_db / 10.0))
    noise_std = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise = rng.standard_normal(x.shape).astype(np.float32) * np.float32(noise_std)
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32, copy=False)
