"""Text prompts -> paired (speech S, text T) manifest: TTS, voice variation and the ASR back-check.

The paper builds its training pairs by synthesising speech for text prompts and keeping only the
pairs whose back-transcription by an ASR model is within 5 % WER of the text: a pair whose audio
does not say what its transcript says would teach the student to answer a question it never heard.
This module does the same with local engines (espeak-ng, or piper when installed) and any
Whisper-family Hugging Face directory.

Determinism: every row draws its voice, rate, pitch and noise from an RNG seeded by
``(seed, row id)``, so a row's audio does not depend on the order, the number of workers or on
which rows were already synthesised (a resumed run gives the same files). Audio files are named by
the TTS cache key (engine, text, voice, noise, seed), so a resumed run skips existing files and any
change makes a new file instead of reusing a stale one.

Why one module over 400 lines: prompt reading (JSONL/CSV/HF), voice planning, synthesis and the
ASR back-check are the stages of one command (``xopd synth``) that share its row bookkeeping.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xopd.data.audio import SAMPLE_RATE, load_audio
from xopd.data.manifest import CORE_FIELDS
from xopd.data.textnorm import normalize_for_wer, number_to_words, spell_numbers
from xopd.data.tts import (
    EspeakEngine,
    PiperEngine,
    SynthJob,
    TTSEngine,
    TTSError,
    Voice,
    cache_key,
    make_engine,
    synthesize_cached,
    synthesize_many,
)
from xopd.errors import DataError, ModelError
from xopd.metrics import wer

__all__ = [
    "DEFAULT_VOICES",
    "PiperEngine",
    "VoicePlan",
    "asr_backcheck",
    "make_engine",
    "normalize_for_wer",
    "number_to_words",
    "read_prompts",
    "spell_numbers",
    "synthesize_prompts",
]

DEFAULT_VOICES = ("en-us", "en-us+m3", "en-us+f2", "en+m1", "en+f3")
_ID_RE = re.compile(r"^[\w.\-:]{1,200}$")


# --------------------------------------------------------------------------------------- prompts
def _row_from(obj: Any, where: str, column: str, index: int, id_prefix: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with a {column!r} field, got {type(obj).__name__}")
    text = obj.get(column)
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"{where}: field {column!r} must be a non-empty string (got {text!r}); fix or drop the row"
        )
    row = {k: v for k, v in obj.items() if k != column}
    rid = row.get("id", f"{id_prefix}{index:05d}")
    if not isinstance(rid, str | int) or isinstance(rid, bool) or not _ID_RE.match(str(rid)):
        raise DataError(
            f"{where}: id {rid!r} must be 1-200 letters, digits or . _ - : (it names files and rows)"
        )
    row["id"] = str(rid)
    row["text"] = " ".join(text.split())
    for key in ("answer", "reference"):
        if isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool):
            row[key] = str(row[key])
    return row


def read_prompts(
    path: str | os.PathLike | None = None,
    *,
    hf_dataset: str | None = None,
    column: str = "text",
    split: str = "train",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Prompt rows ``{"id", "text", ...other fields}`` from a JSONL file or a ``datasets`` dataset.

    JSONL: one object per line with the text in ``column`` (other fields such as ``task``,
    ``answer``, ``rubric`` are carried into the manifest). ``hf_dataset``: a local directory
    written by ``save_to_disk`` (loaded with ``load_from_disk``) or a hub name (``load_dataset``,
    which needs network or a warm cache). Ids default to ``<stem>-NNNNN``; they must be unique.
    """
    rows: list[dict[str, Any]] = []
    if (path is None) == (hf_dataset is None):
        raise DataError("give exactly one of --input prompts.jsonl or --hf-dataset NAME_OR_PATH")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: prompts file not found; check the path")
        with open(p, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{lineno}: bad JSON ({e.msg}); write one object per line") from None
                rows.append(_row_from(obj, f"{p}:{lineno}", column, len(rows), f"{p.stem}-"))
                if limit and len(rows) >= limit:
                    break
    else:
        ds = _load_hf(hf_dataset, split)
        if column not in ds.column_names:
            raise DataError(f"dataset {hf_dataset!r} has no column {column!r}; columns are {ds.column_names}")
        name = Path(hf_dataset).name or "dataset"
        for i, obj in enumerate(ds):
            obj = {k: v for k, v in obj.items() if isinstance(v, str | int | float | bool) or v is None}
            rows.append(_row_from(obj, f"{hf_dataset} row {i}", column, i, f"{name}-"))
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise DataError(f"{path or hf_dataset}: no prompts found")
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise DataError(f"{path or hf_dataset}: id {r['id']!r} repeats; ids must be unique")
        seen.add(r["id"])
    return rows


def _load_hf(name: str, split: str):
    import datasets

    if Path(name).exists():
        try:
            ds = datasets.load_from_disk(name)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(
                f"{name}: not a dataset saved with save_to_disk ({str(e).splitlines()[0]})"
            ) from e
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name}: no split {split!r}; splits are {list(ds)} (use --split)")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # offline hub errors come in many classes
        raise DataError(f"cannot load dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from e


# ------------------------------------------------------------------------------------- voices
@dataclass(frozen=True)
class VoicePlan:
    """How each row's voice is drawn: names, rate/pitch ranges (inclusive) and noise SNRs (None = clean)."""

    voices: tuple[str, ...] = DEFAULT_VOICES
    rate: tuple[int, int] = (150, 190)
    pitch: tuple[int, int] = (35, 65)
    noise_snrs: tuple[float | None, ...] = (None,)

    def draw(self, seed: int, row_id: str) -> tuple[Voice, float | None]:
        """The row's voice and noise, a pure function of ``(seed, row_id)``."""
        rng = random.Random(f"xopd-synth:{seed}:{row_id}")
        voice = Voice(rng.choice(self.voices), rng.randint(*self.rate), rng.randint(*self.pitch))
        return voice, rng.choice(self.noise_snrs)


# ----------------------------------------------------------------------------------- back-check
def _load_whisper(model_dir: str | os.PathLike):
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    p = Path(model_dir)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{p}: --asr-filter needs a Hugging Face Whisper directory (no config.json there)")
    mtype = json.loads(cfg_file.read_text()).get("model_type")
    if mtype != "whisper":
        raise ModelError(
            f"{p}: model_type {mtype!r}; --asr-filter needs a Whisper-family model (model_type 'whisper')"
        )
    try:
        processor = AutoProcessor.from_pretrained(p)
        model = WhisperForConditionalGeneration.from_pretrained(p).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: cannot load Whisper model/processor: {str(e).splitlines()[0]}") from e
    return model, processor


def asr_backcheck(
    model_dir: str | os.PathLike,
    texts: Sequence[str],
    audio_paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 8,
    progress: bool = False,
    cache: dict[str, str] | None = None,
) -> list[tuple[str, float]]:
    """``(hypothesis, WER)`` for each (text, audio) pair, transcribed by the Whisper in ``model_dir``.

    Features are the model's own 30 s-padded log-mels (Whisper was trained on 30 s windows and
    hallucinates repetitions on unpadded input). WER uses :func:`normalize_for_wer` on both sides.
    ``cache`` maps an audio path to an earlier hypothesis (resume): hits are not re-transcribed.
    """
    import torch

    cache = {} if cache is None else cache
    todo = [i for i, a in enumerate(audio_paths) if str(a) not in cache]
    if todo:
        model, processor = _load_whisper(model_dir)
        fe, tok = processor.feature_extractor, processor.tokenizer
        limit = getattr(fe, "n_samples", 30 * SAMPLE_RATE)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="asr back-check", unit="utt")
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            wavs = [load_audio(audio_paths[i]) for i in idx]
            for i, w in zip(idx, wavs):
                if w.size > limit:
                    raise DataError(
                        f"{audio_paths[i]}: {w.size / SAMPLE_RATE:.1f} s is over Whisper's 30 s window"
                    )
            feats = fe(wavs, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            longest = max(len(texts[i].split()) for i in idx)
            with torch.no_grad():
                out = model.generate(feats.to(model.dtype), max_new_tokens=min(220, 3 * longest + 16))
            for i, hyp in zip(idx, tok.batch_decode(out, skip_special_tokens=True)):
                cache[str(audio_paths[i])] = hyp.strip()
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
    result = []
    for text, a in zip(texts, audio_paths):
        hyp = cache[str(a)]
        result.append((hyp, wer([normalize_for_wer(text)], [normalize_for_wer(hyp)])))
    return result


# ------------------------------------------------------------------------------------ pipeline
def _manifest_row(row: dict[str, Any], audio_rel: str, tts: dict[str, Any]) -> dict[str, Any]:
    out = {"id": row["id"], "audio": audio_rel, "text": row["text"]}
    for key in ("task", "answer", "reference"):
        if row.get(key) is not None:
            out[key] = row[key]
    for key, value in row.items():
        if key not in CORE_FIELDS and key != "tts":
            out[key] = value
    out["tts"] = tts
    return out


class _Drops:
    """Dropped row ids by reason, and a line of detail per row (the report's ``dropped*`` keys)."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {}
        self.details: dict[str, str] = {}

    def add(self, reason: str, row_id: str, detail: str) -> None:
        self.ids.setdefault(reason, []).append(row_id)
        self.details[row_id] = detail


def _check_voices(engine: TTSEngine, plan: VoicePlan) -> None:
    if isinstance(engine, EspeakEngine):
        missing = sorted(
            {v.split("+", 1)[1] for v in plan.voices if "+" in v}
            - {v.split("+", 1)[1] for v in plan.voices if "+" in v and engine.has_variant(v.split("+", 1)[1])}
        )
        if missing:
            raise TTSError(
                f"espeak-ng has no voice variant(s) {missing}; list them in {engine.data_path}/voices/!v"
            )


def _synthesize(engine: TTSEngine, rows: list[dict], jobs: list[SynthJob], audio_root: Path, drops: _Drops,
                progress: bool, workers: int) -> list[Path | None]:
    """Audio paths per row (cached); one bad row must not sink the batch: on an error, retry row by row
    and record the failures."""
    try:
        return synthesize_many(engine, jobs, audio_root, progress=progress, desc="tts", workers=workers)
    except TTSError:
        paths: list[Path | None] = []
        for r, j in zip(rows, jobs):
            try:
                paths.append(synthesize_cached(engine, j.text, j.voice, audio_root, j.noise_snr_db, j.seed))
            except TTSError as e:
                paths.append(None)
                drops.add("tts_error", r["id"], str(e))
        return paths


def _backcheck(out: Path, keep: list, asr_filter: str | os.PathLike, max_wer: float, drops: _Drops,
               progress: bool) -> tuple[list, dict[str, Any]]:
    """ASR back-check of the kept rows (cached per model): (the rows within ``max_wer``, its report)."""
    cache_file = out / ".asr_cache.json"
    cache_all = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    model_key = str(Path(asr_filter).resolve())
    cache = {k: v for k, v in cache_all.get(model_key, {}).items()}
    rel = [os.path.relpath(p, out) for _, p in keep]
    abs_cache = {str(out / k): v for k, v in cache.items()}
    results = asr_backcheck(
        asr_filter,
        [r["text"] for r, _ in keep],
        [str(out / x) for x in rel],
        progress=progress,
        cache=abs_cache,
    )
    cache_all[model_key] = {os.path.relpath(k, out): v for k, v in abs_cache.items()}
    cache_file.write_text(json.dumps(cache_all))
    lines, survivors, wers = [], [], []
    for (r, p), (hyp, w) in zip(keep, results):
        ok = w <= max_wer
        wers.append(w)
        lines.append(
            json.dumps(
                {"id": r["id"], "text": r["text"], "hypothesis": hyp, "wer": round(w, 4), "kept": ok},
                ensure_ascii=False,
            )
        )
        if ok:
            survivors.append((r, p))
        else:
            drops.add("wer_above_max", r["id"], f"WER {w:.3f} > {max_wer:g}: heard {hyp!r}")
    (out / "backcheck.jsonl").write_text("\n".join(lines) + "\n")
    report = {
        "model": str(asr_filter),
        "max_wer": max_wer,
        "mean_wer": float(np.mean(wers)),
        "median_wer": float(np.median(wers)),
        "checked": len(results),
        "passed": len(survivors),
        "per_row": "backcheck.jsonl",
    }
    return survivors, report


def _write_manifest(out: Path, keep: list, plan: VoicePlan, seed: int, name: str) -> list[dict[str, Any]]:
    """``out/manifest.jsonl`` (atomically) from the kept rows, each with its TTS settings; returns its rows."""
    manifest_rows = []
    for r, p in keep:
        v, snr = plan.draw(seed, r["id"])
        tts = {
            "engine": name,
            "voice": v.name,
            "rate": v.rate,
            "pitch": v.pitch,
            "noise_snr_db": snr,
            "seed": seed,
        }
        manifest_rows.append(_manifest_row(r, Path(os.path.relpath(p, out)).as_posix(), tts))
    tmp = out / ".manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in manifest_rows), encoding="utf-8")
    os.replace(tmp, out / "manifest.jsonl")
    return manifest_rows


def synthesize_prompts(
    rows: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    engine: TTSEngine | None = None,
    plan: VoicePlan | None = None,
    seed: int = 0,
    workers: int = 1,
    asr_filter: str | os.PathLike | None = None,
    max_wer: float = 0.05,
    max_seconds: float = 30.0,
    progress: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Synthesise ``rows`` into ``out_dir/audio``, back-check, write ``manifest.jsonl`` + report.

    Returns the report (also written to ``out_dir/synth_report.json``): counts of synthesised,
    reused, kept and dropped rows, drop reasons with ids, back-check WERs and timings. Per-row
    back-check results go to ``out_dir/backcheck.jsonl``.
    """
    rows = list(rows)
    engine = engine or make_engine("espeak")
    plan = plan or VoicePlan()
    out = Path(out_dir)
    audio_root = out / "audio"
    audio_root.mkdir(parents=True, exist_ok=True)
    _check_voices(engine, plan)
    draws = [plan.draw(seed, r["id"]) for r in rows]
    jobs = [SynthJob(r["text"], v, snr, seed) for r, (v, snr) in zip(rows, draws)]
    name = getattr(engine, "name", type(engine).__name__)
    t0 = time.perf_counter()
    keys = [cache_key(name, j.text, j.voice, j.noise_snr_db, j.seed) for j in jobs]
    existed = sum((audio_root / k[:2] / f"{k}.wav").is_file() for k in keys)
    drops = _Drops()
    paths = _synthesize(engine, rows, jobs, audio_root, drops, progress, workers)
    t_tts = time.perf_counter() - t0

    keep = []
    for r, p in zip(rows, paths):
        if p is None:
            continue
        dur = sf_seconds(p)
        if dur > max_seconds:
            drops.add("too_long", r["id"], f"{dur:.1f} s > {max_seconds:g} s")
            continue
        keep.append((r, p))

    t1 = time.perf_counter()
    backcheck: dict[str, Any] | None = None
    if asr_filter is not None and keep:
        keep, backcheck = _backcheck(out, keep, asr_filter, max_wer, drops, progress)
    t_asr = time.perf_counter() - t1
    manifest_rows = _write_manifest(out, keep, plan, seed, name)
    dropped, details = drops.ids, drops.details

    n_new = len([p for p in paths if p is not None]) - existed
    report = {
        "source": source,
        "engine": name,
        "seed": seed,
        "voices": list(plan.voices),
        "rate": list(plan.rate),
        "pitch": list(plan.pitch),
        "noise_snrs": list(plan.noise_snrs),
        "total": len(rows),
        "synthesized": max(n_new, 0),
        "reused": existed,
        "kept": len(manifest_rows),
        "dropped": {k: len(v) for k, v in sorted(dropped.items())},
        "dropped_ids": {k: v for k, v in sorted(dropped.items())},
        "drop_details": details,
        "backcheck": backcheck,
        "audio_seconds_kept": round(sum(sf_seconds(out / m["audio"]) for m in manifest_rows), 2),
        "seconds": {"tts": round(t_tts, 2), "asr": round(t_asr, 2)},
        "tts_utterances_per_second": round(max(n_new, 0) / t_tts, 2) if t_tts > 0 and n_new > 0 else None,
        "manifest": "manifest.jsonl",
    }
    (out / "synth_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def sf_seconds(path: str | os.PathLike) -> float:
    """Duration of an audio file from its header."""
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate
