"""espeak-ng TTS: real audio at 16 kHz, content-keyed cache, no shell, clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf

from xopd.data.tts import EspeakEngine, SynthJob, TTSError, Voice, synthesize_cached, synthesize_many
from xopd.data.tts import espeak as tts

HOSTILE = "$(touch pwned) `touch pwned2`; rm -rf x -- --help"


def _engine(backend: str = "auto") -> EspeakEngine:
    try:
        return EspeakEngine(backend=backend)
    except TTSError as e:  # a machine without espeak-ng: the rest of xopd still tests
        pytest.skip(str(e))


class Counting:
    """Wraps an engine and counts synth calls (to prove the cache is used)."""

    def __init__(self, inner: EspeakEngine) -> None:
        self.inner, self.calls = inner, 0
        self.name, self.sample_rate = inner.name, inner.sample_rate

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        self.calls += 1
        return self.inner.synth(text, voice)


def _f0(wav: np.ndarray, sr: int = 16000) -> float:
    """Median autocorrelation pitch of voiced 64 ms frames (enough to order voices)."""
    vals = []
    for i in range(0, len(wav) - 1024, 512):
        s = wav[i : i + 1024].astype(np.float64)
        if np.sqrt(np.mean(s**2)) < 0.03:
            continue
        ac = np.correlate(s, s, "full")[1023:]
        k = sr // 400 + int(np.argmax(ac[sr // 400 : sr // 50]))
        if ac[k] > 0.4 * ac[0]:
            vals.append(sr / k)
    return float(np.median(vals))


@pytest.mark.parametrize("backend", ["fork", "ctypes", "subprocess"])
def test_synth_is_real_16k_audio(backend):
    eng = _engine(backend)
    wav = eng.synth("Tom has 5 apples. He buys 3 more.", Voice("en-us+m3", 175, 50))
    assert eng.sample_rate == 16000 and wav.dtype == np.float32 and wav.ndim == 1
    assert 1.0 < wav.size / 16000 < 6.0
    assert np.abs(wav).max() > 0.1 and np.sqrt(np.mean(wav**2)) > 0.01
    assert np.abs(wav).max() <= 1.0


def test_synthesis_is_deterministic_and_voice_dependent():
    eng = _engine()
    a = eng.synth("The sky is blue.", Voice("en+f2", 160, 60))
    assert np.array_equal(a, eng.synth("The sky is blue.", Voice("en+f2", 160, 60)))
    assert not np.array_equal(
        a[: min(len(a), 8000)], eng.synth("The sky is blue.", Voice("en+m1", 160, 60))[:8000]
    )
    assert eng.synth_native("The sky is blue.", Voice("en+f2", 160, 60)).size == pytest.approx(
        a.size * 22050 / 16000, abs=2
    )


def test_rate_and_pitch_change_the_audio_as_labelled():
    """The audio_only labels (fast/slow, high/low) must be audible, not just metadata."""
    eng = _engine()
    text = "The old man found a red box in the garden."
    slow = eng.synth(text, Voice("en-us+m1", 100, 50)).size
    fast = eng.synth(text, Voice("en-us+m1", 260, 50)).size
    assert slow > 1.6 * fast
    low = _f0(eng.synth(text, Voice("en-us+m3", 175, 20)))
    high = _f0(eng.synth(text, Voice("en-us+f1", 175, 70)))
    assert low < 110 < 180 < high


def test_cache_reuses_files_and_keys_on_content(tmp_path):
    eng = Counting(_engine())
    v = Voice("en-us+m2", 180, 40)
    p1 = synthesize_cached(eng, "Spell the word cat.", v, tmp_path)
    p2 = synthesize_cached(eng, "Spell the word cat.", v, tmp_path)
    assert p1 == p2 and eng.calls == 1
    wav, sr = sf.read(str(p1), dtype="float32")
    assert sr == 16000 and sf.info(str(p1)).subtype == "PCM_16" and np.abs(wav).max() > 0.1
    noisy = synthesize_cached(eng, "Spell the word cat.", v, tmp_path, noise_snr_db=10.0, seed=1)
    noisy2 = synthesize_cached(eng, "Spell the word cat.", v, tmp_path, noise_snr_db=10.0, seed=2)
    other = synthesize_cached(eng, "Spell the word cat.", Voice("en-us+m2", 181, 40), tmp_path)
    assert len({p1, noisy, noisy2, other}) == 4 and eng.calls == 4
    n1, n2 = sf.read(str(noisy))[0], sf.read(str(noisy2))[0]
    assert not np.array_equal(n1, n2)
    # clean espeak audio starts in (near-)digital silence; noisy audio does not
    assert np.abs(wav[:50]).max() < 1e-3 < np.abs(n1[:50]).max()
    assert not list(tmp_path.rglob("*.tmp"))


def test_synthesize_many_parallel_matches_serial(tmp_path):
    eng = _engine()
    jobs = [
        SynthJob(f"Sort these numbers: {i}, {i + 3}.", Voice("en+f1", 150 + i, i), None, i) for i in range(70)
    ]
    serial = synthesize_many(eng, jobs, tmp_path / "a")
    parallel = synthesize_many(eng, jobs, tmp_path / "b", workers=2)
    assert [p.name for p in serial] == [p.name for p in parallel]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(serial, parallel))
    assert synthesize_many(eng, jobs, tmp_path / "a") == serial  # all cached


def test_threads_share_the_engine_safely():
    eng = _engine()
    voices = [Voice(f"en-us+m{i}", 150 + 10 * i, 10 * i) for i in range(1, 5)]
    want = [eng.synth("One two three four.", v) for v in voices]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, eng.synth("One two three four.", voices[i]))) for i in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[i], want[i]) for i in range(4))


@pytest.mark.parametrize("backend", ["fork", "ctypes", "subprocess"])
def test_hostile_text_is_only_spoken(backend, tmp_path, monkeypatch):
    eng = _engine(backend)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text("keep me")
    wav = eng.synth(HOSTILE, Voice("en-us", 300, 50))
    assert wav.size / 16000 > 1.0  # it read the whole thing aloud
    path = synthesize_cached(eng, HOSTILE, Voice("en-us", 300, 50), tmp_path / "cache")
    assert path.is_file()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert (tmp_path / "x").read_text() == "keep me"
    assert eng.synth("--help", Voice("en-us")).size > 1000 and eng.synth("a\x00b", Voice("en-us")).size > 1000


def test_bad_voices_raise_tts_error():
    eng = _engine()
    with pytest.raises(TTSError, match="no voice"):
        eng.synth("hi", Voice("xx-nope"))
    with pytest.raises(TTSError, match="variant"):
        eng.synth("hi", Voice("en-us+zz9"))
    with pytest.raises(TTSError, match="malformed"):
        eng.synth("hi", Voice("en-us; rm -rf /"))
    with pytest.raises(TTSError, match="rate"):
        eng.synth("hi", Voice("en-us", 5000))
    with pytest.raises(TTSError, match="pitch"):
        eng.synth("hi", Voice("en-us", 175, 120))
    with pytest.raises(TTSError, match="empty"):
        eng.synth("  ", Voice("en-us"))
    assert eng.synth("still works", Voice("en-us")).size > 0


def test_missing_espeak_says_how_to_install(monkeypatch):
    monkeypatch.setattr(tts, "_get_lib", lambda: None)
    monkeypatch.setattr(tts, "_get_server", lambda: None)
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(TTSError, match="apt-get install espeak-ng"):
        EspeakEngine()
    for backend in ("fork", "ctypes", "subprocess"):
        with pytest.raises(TTSError, match="apt-get install espeak-ng"):
            EspeakEngine(backend=backend)
