"""Synthesis cached on disk by content (engine, text, voice, noise, seed), run in a process pool."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from xopd.data.audio import SAMPLE_RATE, add_noise, to_mono_16k
from xopd.data.tts.base import TTSEngine, Voice
from xopd.data.tts.espeak import EspeakEngine


# ------------------------------------------------------------------------------------ caching
def cache_key(engine_name: str, text: str, voice: Voice, noise_snr_db: float | None, seed: int) -> str:
    """sha256 over everything that changes the waveform (engine, text, voice, noise, seed)."""
    noise = None if noise_snr_db is None else float(noise_snr_db)
    payload = [
        engine_name,
        text,
        voice.name,
        int(voice.rate),
        int(voice.pitch),
        noise,
        int(seed),
        SAMPLE_RATE,
    ]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def _cache_path(engine: TTSEngine, cache_dir: str | os.PathLike, job: SynthJob) -> tuple[Path, str]:
    key = cache_key(
        getattr(engine, "name", type(engine).__name__), job.text, job.voice, job.noise_snr_db, job.seed
    )
    return Path(cache_dir) / key[:2] / f"{key}.wav", key


def _is_cached(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 44


def _store(path: Path, key: str, wav: np.ndarray, rate: int, noise_snr_db: float | None) -> None:
    """Resample to 16 kHz, add seeded noise, write PCM16 atomically.

    Noise is white Gaussian at ``noise_snr_db`` from an RNG seeded by the cache key: reproducible,
    yet different per utterance even when ``seed`` is the same. The WAV is built in memory and
    ``os.replace``-d into place: not ``xopd.data.audio.save_wav``, whose libsndfile flush syncs to
    disk (a cost on every file); a cache entry can be regenerated, so atomicity is enough.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if rate != SAMPLE_RATE:
        wav = to_mono_16k(wav, rate, SAMPLE_RATE, name=str(path))
    if noise_snr_db is not None:
        wav = add_noise(wav, float(noise_snr_db), np.random.default_rng(int(key[:16], 16)))
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class SynthJob:
    """One utterance to synthesise: what :func:`synthesize_cached` takes, minus engine and dir."""

    text: str
    voice: Voice
    noise_snr_db: float | None = None
    seed: int = 0


def synthesize_cached(
    engine: TTSEngine,
    text: str,
    voice: Voice,
    cache_dir: str | os.PathLike,
    noise_snr_db: float | None = None,
    seed: int = 0,
) -> Path:
    """Synthesise once into ``cache_dir/<k[:2]>/<k>.wav`` (16 kHz mono PCM16); return the path.

    ``k`` is the :func:`cache_key`, so a second run (or another process) reuses the file and any
    change of text/voice/noise/seed/engine makes a new one.
    """
    job = SynthJob(text, voice, noise_snr_db, seed)
    path, key = _cache_path(engine, cache_dir, job)
    if not _is_cached(path):
        _store(path, key, engine.synth(text, voice), int(engine.sample_rate), noise_snr_db)
    return path


def _run_jobs(engine: TTSEngine, jobs: Sequence[SynthJob], cache_dir: str | os.PathLike) -> int:
    """Synthesise ``jobs`` (all uncached) in order, pipelined where the engine can; return count."""
    utts = [(j.text, j.voice) for j in jobs]
    wavs = engine.synth_iter(utts) if hasattr(engine, "synth_iter") else (engine.synth(t, v) for t, v in utts)
    for job, wav in zip(jobs, wavs, strict=True):  # strict: runs the generator to its end
        path, key = _cache_path(engine, cache_dir, job)
        _store(path, key, wav, int(engine.sample_rate), job.noise_snr_db)
    return len(jobs)


def synthesize_many(
    engine: TTSEngine,
    jobs: Iterable[SynthJob],
    cache_dir: str | os.PathLike,
    progress: bool = False,
    desc: str = "tts",
    workers: int = 1,
) -> list[Path]:
    """:func:`synthesize_cached` over many jobs; returns the paths in job order.

    Cached jobs are skipped up front (a re-run costs one ``stat`` per file). ``workers > 1`` runs
    chunks in that many processes, each with its own espeak-ng (the C library is one global per
    process, so threads would only queue); only for :class:`EspeakEngine`.
    """
    jobs_list = list(jobs)
    paths = [_cache_path(engine, cache_dir, j)[0] for j in jobs_list]
    todo = list(dict.fromkeys(j for j, p in zip(jobs_list, paths) if not _is_cached(p)))  # de-duplicated
    chunks = [todo[i : i + 32] for i in range(0, len(todo), 32)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="utt")
    if workers > 1 and len(chunks) > 1 and isinstance(engine, EspeakEngine):
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        init = (engine.sample_rate, engine.backend, str(cache_dir))
        with ctx.Pool(min(workers, len(chunks)), _pool_init, init) as pool:
            for n in pool.imap_unordered(_pool_run, chunks):
                if bar is not None:
                    bar.update(n)
    else:
        for chunk in chunks:
            n = _run_jobs(engine, chunk, cache_dir)
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    return paths


_POOL: tuple[EspeakEngine, str] | None = None


def _pool_init(sample_rate: int, backend: str, cache_dir: str) -> None:
    global _POOL
    _POOL = (EspeakEngine(sample_rate, backend), cache_dir)


def _pool_run(chunk: list[SynthJob]) -> int:
    assert _POOL is not None
    return _run_jobs(_POOL[0], chunk, _POOL[1])
