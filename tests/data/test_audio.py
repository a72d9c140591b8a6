"""Audio loading: every file shape normalises to 16 kHz mono float32; bad files raise DataError."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from xopd.data.audio import SAMPLE_RATE, add_noise, load_audio, save_wav
from xopd.errors import DataError


def _tone(sr: int, seconds: float = 0.5, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("subtype", "sr", "channels"),
    [
        ("PCM_U8", 16000, 1),
        ("PCM_16", 16000, 1),
        ("PCM_24", 16000, 1),
        ("PCM_32", 16000, 1),
        ("FLOAT", 16000, 1),
        ("DOUBLE", 16000, 1),
        ("PCM_16", 16000, 2),
        ("PCM_16", 44100, 1),
        ("PCM_16", 8000, 1),
        ("FLOAT", 44100, 2),
    ],
)
def test_load_audio_normalises_format(tmp_path, subtype, sr, channels):
    x = _tone(sr)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / f"a_{subtype}_{sr}_{channels}.wav"
    sf.write(path, data, sr, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - SAMPLE_RATE * 0.5) <= 1
    assert np.abs(wav).max() <= 1.0
    # Amplitude survives the conversion (8-bit is coarse, resampling has edge effects).
    assert abs(np.abs(wav[200:-200]).max() - 0.5) < 0.02
    # Same tone, same content: compare with a directly generated 16 kHz tone.
    ref = _tone(SAMPLE_RATE)[: wav.size]
    assert np.abs(wav[400:-400] - ref[400:-400]).max() < 0.02


def test_stereo_is_averaged(tmp_path):
    left = _tone(16000, amp=0.4)
    sf.write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), left / 2, atol=1e-7)


def test_float_overrange_is_clipped_and_silence_valid(tmp_path):
    sf.write(tmp_path / "loud.wav", np.full(1600, 2.0, np.float32), 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "loud.wav").max() == 1.0
    sf.write(tmp_path / "quiet.wav", np.zeros(1600, np.float32), 16000)
    assert np.all(load_audio(tmp_path / "quiet.wav") == 0)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "header_only", "truncated_flac", "zero", "nan"])
def test_bad_files_raise_dataerror_naming_path(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not audio")
    elif case == "header_only":
        sf.write(path, _tone(16000), 16000)
        path.write_bytes(path.read_bytes()[:30])
    elif case == "truncated_flac":
        path = tmp_path / "t.flac"
        sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
        b = path.read_bytes()
        path.write_bytes(b[: len(b) // 2])
    elif case == "zero":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "nan":
        x = _tone(16000)
        x[10] = np.nan
        sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(DataError) as err:
        load_audio(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_max_seconds(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, seconds=1.0), 16000)
    assert load_audio(tmp_path / "a.wav", max_seconds=1.0).size == 16000
    with pytest.raises(DataError, match="limit"):
        load_audio(tmp_path / "a.wav", max_seconds=0.5)


def test_save_wav_roundtrip_atomic(tmp_path):
    x = _tone(16000)
    path = tmp_path / "sub" / "out.wav"
    save_wav(path, x)
    assert sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(load_audio(path), x, atol=1 / 32768 + 1e-6)
    assert os.listdir(path.parent) == ["out.wav"]  # no temp file left behind


def test_add_noise_snr_and_silence():
    rng = np.random.default_rng(0)
    x = _tone(16000, seconds=2.0)
    y = add_noise(x, 10.0, rng)
    noise = y - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.2
    assert y.dtype == np.float32
    silent = add_noise(np.zeros(16000, np.float32), 0.0, np.random.default_rng(1))
    # floor -60 dBFS at 0 dB SNR -> noise power 1e-6
    assert 0.8e-6 < np.mean(silent.astype(np.float64) ** 2) < 1.2e-6
    np.testing.assert_array_equal(
        add_noise(x, 5, np.random.default_rng(3)), add_noise(x, 5, np.random.default_rng(3))
    )
