"""JSONL manifests of (id, audio, transcript, task, answer) and their validation.

A manifest is the contract between data synthesis, training and evaluation: one JSON object per
line, audio paths relative to the manifest's folder (so a data folder can be moved or shipped
whole). Real corpora always contain a few bad rows; by default they are skipped and counted by
reason (a :class:`SkipReport`) so one broken file does not kill a run, while ``strict=True`` stops
at the first one with ``file:line``, the field and the fix.

Why one module over 400 lines: every rule a row must pass (fields, audio, lengths, ids) and the
skip-and-count bookkeeping live together so that the one place that reads user manifests is one file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from xopd.data.audio import SAMPLE_RATE, load_audio, save_wav, to_mono_16k
from xopd.errors import DataError

__all__ = [
    "CORE_FIELDS",
    "Example",
    "SkipReport",
    "examples_from_hf_dataset",
    "read_manifest",
    "write_manifest",
]

CORE_FIELDS = ("id", "audio", "text", "task", "answer", "reference")
#: Shortest usable clip at 16 kHz: one 10 ms log-mel hop (shorter audio fails at feature extraction).
MIN_AUDIO_SAMPLES = 160


@dataclass
class Example:
    """One spoken prompt: speech S (``audio`` file or in-memory ``waveform``) and transcript T."""

    id: str
    text: str
    audio: str | None = None  # absolute path
    task: str | None = None
    answer: str | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    waveform: np.ndarray | None = field(default=None, repr=False, compare=False)  # 16 kHz mono
    #: an encoded audio file held in memory (audio embedded in parquet / Arrow datasets), decoded on use
    audio_bytes: bytes | None = field(default=None, repr=False, compare=False)

    def load_waveform(self, max_seconds: float | None = None) -> np.ndarray:
        """``[n]`` float32 16 kHz mono: the in-memory waveform if set, else the encoded bytes, else the file."""
        if self.waveform is None and self.audio_bytes is not None:
            from xopd.data.audio import decode_audio_bytes

            wav = decode_audio_bytes(self.audio_bytes, f"example {self.id!r}")
            if max_seconds is not None and wav.size / SAMPLE_RATE > max_seconds:
                raise DataError(
                    f"example {self.id!r}: audio is {wav.size / SAMPLE_RATE:.2f} s, over the {max_seconds:g} s limit"
                )
            return wav
        if self.waveform is not None:
            if max_seconds is not None and self.waveform.size / SAMPLE_RATE > max_seconds:
                raise DataError(
                    f"example {self.id!r}: audio is {self.waveform.size / SAMPLE_RATE:.2f} s, "
                    f"over the {max_seconds:g} s limit"
                )
            return self.waveform
        if self.audio is None:
            raise DataError(f"example {self.id!r} has no audio (neither a file nor a waveform)")
        return load_audio(self.audio, max_seconds=max_seconds)


@dataclass
class SkipReport:
    """Rows skipped while reading data, by reason, with their ids (or ``line N``) and details."""

    counts: dict[str, int] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, id: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.ids.setdefault(reason, []).append(id)
        self.details.setdefault(reason, []).append(detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. ``skipped 3 rows: audio_missing=2 (a, b), empty_text=1 (c)``."""
        if not self.total:
            return "skipped 0 rows"
        parts = []
        for reason, n in sorted(self.counts.items()):
            shown = self.ids[reason][:3]
            more = ", ..." if len(self.ids[reason]) > 3 else ""
            parts.append(f"{reason}={n} ({', '.join(shown)}{more})")
        return f"skipped {self.total} rows: " + ", ".join(parts)

    def to_json(self) -> str:
        return json.dumps(
            {"total": self.total, "counts": self.counts, "ids": self.ids, "details": self.details}
        )


class _BadRow(Exception):
    def __init__(self, reason: str, field_name: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.reason, self.field, self.problem, self.fix = reason, field_name, problem, fix


def _opt_str(obj: dict, key: str, *, numbers: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _BadRow("wrong_type", key, f"'{key}' is {type(value).__name__}", f"make '{key}' a string")


def _parse_row(
    obj: Any,
    root: Path,
    *,
    check_audio: bool,
    max_audio_seconds: float | None,
    max_text_chars: int,
    require_audio: bool,
) -> Example:
    if not isinstance(obj, dict):
        raise _BadRow(
            "wrong_type", "<row>", f"row is a JSON {type(obj).__name__}", "write one object per line"
        )
    if "id" not in obj or obj["id"] is None:
        raise _BadRow("missing_field", "id", "no 'id'", "add a unique string 'id'")
    if not isinstance(obj["id"], str) or not obj["id"].strip():
        raise _BadRow("wrong_type", "id", f"'id' is {obj['id']!r}", "make 'id' a non-empty string")
    if "text" not in obj or obj["text"] is None:
        raise _BadRow("missing_field", "text", "no 'text'", "add the transcript as 'text'")
    text = obj["text"]
    if not isinstance(text, str):
        raise _BadRow("wrong_type", "text", f"'text' is {type(text).__name__}", "make 'text' a string")
    if not text.strip():
        raise _BadRow("empty_text", "text", "'text' is empty", "add the transcript or drop the row")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRow(
            "not_utf8", "text", "'text' has invalid unicode (lone surrogate)", "fix the escape"
        ) from None
    if len(text) > max_text_chars:
        raise _BadRow(
            "text_too_long",
            "text",
            f"'text' has {len(text)} chars > {max_text_chars}",
            "shorten or raise the limit",
        )
    audio_abs = None
    rel = obj.get("audio")
    if rel is None:
        if require_audio and obj.get("text_only") is not True:  # text_only rows: text SFT data, no audio
            raise _BadRow(
                "missing_field", "audio", "no 'audio'", "add 'audio': a path relative to the manifest"
            )
    else:
        if not isinstance(rel, str) or not rel.strip():
            raise _BadRow("wrong_type", "audio", f"'audio' is {rel!r}", "make 'audio' a relative path string")
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
            raise _BadRow(
                "path_escapes", "audio", f"'audio' {rel!r} leaves the manifest folder",
                "put the audio under the manifest's folder and use a relative path",
            )  # fmt: skip
        audio_abs = str(root / norm)
        if check_audio:
            _check_audio_file(audio_abs, rel, max_audio_seconds)
    meta = {k: v for k, v in obj.items() if k not in CORE_FIELDS}
    return Example(
        id=obj["id"],
        text=text,
        audio=audio_abs,
        task=_opt_str(obj, "task"),
        answer=_opt_str(obj, "answer", numbers=True),
        reference=_opt_str(obj, "reference", numbers=True),
        meta=meta,
    )


def _check_audio_file(path: str, rel: str, max_seconds: float | None) -> None:
    """Cheap header check (soundfile.info): exists, parses, has frames, within the length limit."""
    if not os.path.isfile(path):
        raise _BadRow(
            "audio_missing", "audio", f"audio file {rel!r} not found", "fix the path or drop the row"
        )
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("empty file")
        info = sf.info(path)
        if info.frames <= 0 or info.samplerate <= 0:
            raise ValueError("no samples")
    except (sf.SoundFileError, RuntimeError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _BadRow(
            "audio_corrupt", "audio", f"audio file {rel!r} unreadable ({msg})", "re-export it as WAV/FLAC"
        ) from None
    if info.frames * SAMPLE_RATE < MIN_AUDIO_SAMPLES * info.samplerate:
        raise _BadRow(
            "audio_too_short", "audio", f"audio {rel!r} is {1000 * info.frames / info.samplerate:.1f} ms",
            "drop the row or re-export the clip (at least 10 ms)",
        )  # fmt: skip
    if max_seconds is not None and info.frames / info.samplerate > max_seconds:
        raise _BadRow(
            "audio_too_long", "audio", f"audio {rel!r} is {info.frames / info.samplerate:.2f} s > {max_seconds:g} s",
            "trim it or raise max_audio_seconds",
        )  # fmt: skip


def read_manifest(
    path: str | os.PathLike,
    *,
    strict: bool = False,
    check_audio: bool = True,
    max_audio_seconds: float | None = 30.0,
    max_text_chars: int = 4000,
    require_audio: bool = True,
) -> tuple[list[Example], SkipReport]:
    """Read a JSONL manifest into Examples, skipping (or, if ``strict``, raising on) bad rows.

    Fields: ``id`` (unique str), ``audio`` (path relative to the manifest folder, never escaping
    it), ``text`` (non-empty transcript), optional ``task``/``answer``/``reference`` (numbers are
    accepted for answer/reference and stringified); other keys go to ``meta``. Blank lines are
    ignored. Skip reasons: not_utf8, malformed_json, wrong_type, missing_field, duplicate_id,
    path_escapes, audio_missing, audio_corrupt, audio_too_short, audio_too_long, empty_text,
    text_too_long.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: manifest not found; check the path")
    root = p.resolve().parent
    report = SkipReport()
    examples: list[Example] = []
    seen: set[str] = set()
    n_rows = 0
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            n_rows += 1
            row_id = f"line {lineno}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _BadRow(
                        "not_utf8", "<line>", "line is not valid UTF-8", "re-save as UTF-8"
                    ) from None
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _BadRow(
                        "malformed_json", "<line>", f"bad JSON ({e.msg})", "one JSON object per line"
                    ) from None
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    row_id = obj["id"]
                ex = _parse_row(
                    obj,
                    root,
                    check_audio=check_audio,
                    max_audio_seconds=max_audio_seconds,
                    max_text_chars=max_text_chars,
                    require_audio=require_audio,
                )
                if ex.id in seen:
                    raise _BadRow("duplicate_id", "id", f"id {ex.id!r} repeats", "make ids unique")
            except _BadRow as bad:
                if strict:
                    where = f"{p}:{lineno}" + (f" (id {row_id!r})" if row_id != f"line {lineno}" else "")
                    raise DataError(f"{where}: field '{bad.field}': {bad.problem}; fix: {bad.fix}") from None
                report.add(bad.reason, row_id, f"{p.name}:{lineno}: {bad.problem}")
                continue
            seen.add(ex.id)
            examples.append(ex)
    if n_rows == 0:
        raise DataError(f"{p}: manifest is empty; expected one JSON object per line")
    if not examples:
        err = DataError(f"{p}: no usable rows ({report.summary()}); fix the rows or the paths")
        err.skips = report  # type: ignore[attr-defined]  # full list of ids for `xopd data check`
        raise err
    return examples, report


def write_manifest(
    path: str | os.PathLike, examples: Iterable[Example], *, audio_subdir: str = "audio"
) -> None:
    """Write Examples as JSONL atomically, audio paths relative to the manifest folder.

    Examples holding only an in-memory ``waveform`` get it saved as ``<audio_subdir>/<id>.wav``
    (16-bit PCM). Audio outside the manifest folder raises: a manifest must be self-contained.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    root = p.resolve().parent
    buf = io.StringIO()
    for ex in examples:
        audio_rel = None
        audio = ex.audio
        if audio is None and ex.waveform is not None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ex.id)
            audio = str(root / audio_subdir / f"{safe}.wav")
            save_wav(audio, ex.waveform)
        if audio is not None:
            rel = os.path.relpath(os.path.abspath(audio), root)
            if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
                raise DataError(
                    f"{p}: audio {audio} of example {ex.id!r} is outside the manifest folder; copy it under {root}"
                )
            audio_rel = Path(rel).as_posix()
        clash = set(ex.meta) & set(CORE_FIELDS)
        if clash:
            raise DataError(
                f"{p}: example {ex.id!r} has meta keys {sorted(clash)} that shadow core fields; rename them"
            )
        row: dict[str, Any] = {"id": ex.id, "audio": audio_rel, "text": ex.text}
        for key in ("task", "answer", "reference"):
            if getattr(ex, key) is not None:
                row[key] = getattr(ex, key)
        row.update(ex.meta)
        buf.write(json.dumps(row, ensure_ascii=False) + "\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _hf_audio_to_wav(value: Any, name: str) -> tuple[np.ndarray, str | None]:
    """Decode one HF audio cell to 16 kHz mono; returns (waveform, source path or None)."""
    if isinstance(value, str | os.PathLike):
        return load_audio(value), os.path.abspath(value)
    if isinstance(value, dict):
        if value.get("array") is not None:
            if value.get("sampling_rate") is None:
                raise DataError(f"{name}: audio dict has 'array' but no 'sampling_rate'")
            return to_mono_16k(np.asarray(value["array"]), int(value["sampling_rate"]), name=name), None
        if value.get("bytes"):
            try:
                data, sr = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError, ValueError) as e:
                raise DataError(f"{name}: audio bytes unreadable ({str(e).splitlines()[0]})") from e
            return to_mono_16k(data, sr, name=name), None
        if value.get("path"):
            return load_audio(value["path"]), os.path.abspath(value["path"])
    raise DataError(
        f"{name}: unsupported audio value {type(value).__name__}; expected a path or an audio dict"
    )


def examples_from_hf_dataset(
    dataset: Any,
    text_column: str = "text",
    audio_column: str = "audio",
    id_column: str | None = None,
    *,
    task_column: str | None = None,
    answer_column: str | None = None,
    reference_column: str | None = None,
    max_audio_seconds: float | None = 30.0,
    id_prefix: str = "",
) -> list[Example]:
    """Examples with in-memory 16 kHz waveforms from a Hugging Face ``datasets.Dataset``.

    Audio cells may be ``{"array", "sampling_rate"}`` dicts, ``{"bytes", "path"}`` dicts or file
    paths. A ``datasets.Audio`` column is read with ``decode=False`` and decoded here with
    soundfile, because datasets' own decoder needs torchcodec, which is not installed here.
    Ids come from ``id_column`` or ``f"{id_prefix}{row_index}"``. Bad rows raise DataError.
    """
    try:
        from datasets import Audio
    except ImportError:  # pragma: no cover - datasets is a dependency
        Audio = None
    for col in (text_column, audio_column, id_column, task_column, answer_column, reference_column):
        if col is not None and col not in dataset.column_names:
            raise DataError(f"dataset has no column {col!r}; columns are {dataset.column_names}")
    if Audio is not None and isinstance(dataset.features.get(audio_column), Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    examples: list[Example] = []
    seen: set[str] = set()
    for i, row in enumerate(dataset):
        ex_id = str(row[id_column]) if id_column else f"{id_prefix}{i}"
        name = f"dataset row {i} (id {ex_id!r})"
        if ex_id in seen:
            raise DataError(f"{name}: duplicate id; make {id_column!r} unique")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{name}: column {text_column!r} must be a non-empty string")
        wav, src = _hf_audio_to_wav(row[audio_column], name)
        if max_audio_seconds is not None and wav.size / SAMPLE_RATE > max_audio_seconds:
            raise DataError(f"{name}: audio is {wav.size / SAMPLE_RATE:.2f} s > {max_audio_seconds:g} s")

        def col(c: str | None, row: dict = row) -> str | None:
            return None if c is None or row[c] is None else str(row[c])

        seen.add(ex_id)
        examples.append(
            Example(
                id=ex_id,
                text=text,
                audio=src,
                task=col(task_column),
                answer=col(answer_column),
                reference=col(reference_column),
                waveform=wav,
            )
        )
    return examples
