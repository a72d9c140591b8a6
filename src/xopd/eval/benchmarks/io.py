"""Reading the published layouts of benchmark data, offline, as they are on disk.

A benchmark copy arrives in one of the layouts its authors publish or ``datasets`` writes:

* **parquet shards** as on the Hugging Face Hub (``huggingface-cli download ... --local-dir X``):
  ``X/<config>/<split>-00000-of-00001.parquet`` (VoiceBench), ``X/data/test-*.parquet`` (single-config
  datasets); audio cells are ``{"bytes", "path"}`` structs with the encoded file embedded;
* **``save_to_disk`` folders** (``load_dataset(...).save_to_disk(X)``): a ``DatasetDict`` folder with
  ``dataset_dict.json`` and one folder per split, or a single ``Dataset`` folder with ``state.json``;
* **audiofolder** (``metadata.jsonl`` or ``metadata.csv`` next to the audio files, ``file_name``
  relative to the metadata file), as Big Bench Audio is published;
* **JSON / JSONL metadata + an audio directory** (MMAR: ``MMAR-meta.json`` and ``audio/*.wav``).

Rows come back as plain dicts; audio cells stay encoded (bytes or a path) and are decoded only when
a prompt needs them (:meth:`xopd.data.manifest.Example.load_waveform`). Every way a copy can be
unusable is a one-line :class:`~xopd.errors.DataError` naming the path and the fix.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from xopd.errors import DataError

__all__ = ["audio_ref", "read_json_rows", "read_rows", "read_split", "require_columns"]

DOCS = "see docs/BENCHMARKS.md"


def _parquet_rows(files: list[Path], limit: int | None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=64):
                rows += batch.to_pylist()
                if limit is not None and len(rows) >= limit:
                    return rows[:limit]
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise DataError(f"{f}: not a readable parquet file ({str(e).splitlines()[0]}); re-download it") from e
    return rows


def _arrow_rows(ds: Any, limit: int | None) -> list[dict[str, Any]]:
    """Rows of a ``datasets.Dataset`` with every Audio column left encoded (``decode=False``)."""
    from datasets import Audio

    for name, feat in ds.features.items():
        if isinstance(feat, Audio):
            ds = ds.cast_column(name, Audio(decode=False))
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


def _load_from_disk(path: Path):
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{path}: unreadable save_to_disk folder ({str(e).splitlines()[0]})") from e


def _shards(folder: Path, split: str) -> list[Path]:
    if not folder.is_dir():
        return []
    found = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
    return found or sorted((folder / split).glob("*.parquet"))


def read_split(
    root: Path, config: str | None, split: str, limit: int | None = None
) -> tuple[list[dict[str, Any]], str] | None:
    """Rows of ``config``/``split`` under ``root`` in any published layout, or None when absent.

    Returns ``(rows, where)``; ``where`` names the files read (for the report). Tried in order: Hub
    parquet shards (``root/config/split-*.parquet``, or ``root/data/split-*.parquet`` for a dataset
    without configs), a ``save_to_disk`` ``DatasetDict`` (``root/config/dataset_dict.json``), a
    ``Dataset`` folder per split (``root/config/split/state.json``), and ``root`` itself as the config.
    """
    folders = [root / config, root] if config else [root / "data", root]
    for folder in folders:
        files = _shards(folder, split)
        if files:
            return _parquet_rows(files, limit), ", ".join(str(f) for f in files)
        if (folder / "dataset_dict.json").is_file():
            dd = _load_from_disk(folder)
            if split in dd:
                return _arrow_rows(dd[split], limit), f"{folder} (save_to_disk, split {split})"
        if (folder / split / "state.json").is_file():
            return _arrow_rows(_load_from_disk(folder / split), limit), f"{folder / split} (save_to_disk)"
    return None


def read_rows(path: Path, limit: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows of a single table: a parquet file, a folder of parquet files, or a ``save_to_disk`` Dataset."""
    if path.is_file() and path.suffix == ".parquet":
        return _parquet_rows([path], limit), str(path)
    if (path / "state.json").is_file():
        return _arrow_rows(_load_from_disk(path), limit), f"{path} (save_to_disk)"
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if files:
        return _parquet_rows(files, limit), ", ".join(str(f) for f in files)
    raise DataError(f"{path}: no parquet files or save_to_disk dataset here; {DOCS}")


def read_json_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """A JSON list of objects (``.json``), JSON lines (``.jsonl``) or a CSV with a header (``.csv``)."""
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not valid {path.suffix[1:].upper()} ({e}); re-download it") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected a list of JSON objects, one per item")
    return rows[:limit] if limit is not None else rows


def require_columns(rows: list[dict[str, Any]], columns: tuple[str, ...], where: str, fix: str) -> None:
    """One-line error naming the first missing column and where it was expected."""
    if not rows:
        raise DataError(f"{where}: no rows; {fix}")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(f"{where}: no field {missing[0]!r} (fields: {sorted(rows[0])}); {fix}")


def audio_ref(value: Any, root: Path, name: str) -> tuple[bytes | None, str | None]:
    """An audio cell as ``(encoded bytes, None)`` or ``(None, absolute file path)``.

    Cells are Arrow/parquet audio structs ``{"bytes", "path"}`` (bytes win when present) or a path
    string, resolved against ``root`` (the metadata file's folder) when relative. A referenced file
    that does not exist is an error naming it.
    """
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        value = value.get("path")
    if isinstance(value, str) and value.strip():
        p = Path(value)
        p = p if p.is_absolute() else (root / p)
        if not p.is_file():
            raise DataError(f"{name}: audio file {p} not found; download/extract the audio next to the metadata")
        return None, str(p)
    raise DataError(f"{name}: no audio (cell is {type(value).__name__}); the copy is incomplete, re-download it")
