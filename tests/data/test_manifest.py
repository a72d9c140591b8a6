"""Manifests: good rows load, each kind of bad row is skipped with its reason, strict names file:line."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from xopd.data.manifest import Example, SkipReport, examples_from_hf_dataset, read_manifest, write_manifest
from xopd.errors import DataError


def _wav(path, seconds=0.2, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(int(sr * seconds)) / 5)).astype(np.float32), sr)


def _write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(
                line
                if isinstance(line, bytes)
                else (json.dumps(line) if isinstance(line, dict) else line).encode()
            )
            f.write(b"\n")


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    _wav(root / "audio" / "good.wav")
    _wav(root / "audio" / "long.wav", seconds=1.5)
    (root / "audio" / "corrupt.wav").write_text("not audio")
    _wav(tmp_path / "outside.wav")
    return root


GOOD = {
    "id": "g1",
    "audio": "audio/good.wav",
    "text": "what is two plus two",
    "task": "reasoning",
    "answer": 4,
    "voice": "f1",
}

# reason -> a row (or raw line) that triggers it
BAD_ROWS = {
    "malformed_json": "{not json",
    "not_utf8": b'{"id": "u", "text": "caf\xe9", "audio": "audio/good.wav"}',
    "missing_field": {"id": "m", "audio": "audio/good.wav"},
    "wrong_type": {"id": "w", "audio": "audio/good.wav", "text": 5},
    "duplicate_id": {"id": "g1", "audio": "audio/good.wav", "text": "again"},
    "path_escapes": {"id": "p", "audio": "../outside.wav", "text": "hi"},
    "audio_missing": {"id": "am", "audio": "audio/nope.wav", "text": "hi"},
    "audio_corrupt": {"id": "ac", "audio": "audio/corrupt.wav", "text": "hi"},
    "audio_too_long": {"id": "al", "audio": "audio/long.wav", "text": "hi"},
    "empty_text": {"id": "e", "audio": "audio/good.wav", "text": "   "},
    "text_too_long": {"id": "tl", "audio": "audio/good.wav", "text": "x" * 50},
}


def test_good_row_fields(data_dir):
    man = data_dir / "m.jsonl"
    _write_lines(man, [GOOD, "", "   "])
    examples, report = read_manifest(man)
    assert report.total == 0 and len(examples) == 1
    ex = examples[0]
    assert ex.audio == str((data_dir / "audio" / "good.wav").resolve())
    assert (ex.id, ex.text, ex.task, ex.answer, ex.reference) == (
        "g1",
        "what is two plus two",
        "reasoning",
        "4",
        None,
    )
    assert ex.meta == {"voice": "f1"}
    assert ex.load_waveform().shape == (3200,)


def test_each_bad_row_reason_counted_once(data_dir):
    man = data_dir / "m.jsonl"
    _write_lines(man, [GOOD, *BAD_ROWS.values()])
    examples, report = read_manifest(man, max_audio_seconds=1.0, max_text_chars=40)
    assert [e.id for e in examples] == ["g1"]
    assert report.counts == {reason: 1 for reason in BAD_ROWS}
    assert report.total == len(BAD_ROWS)
    assert report.ids["malformed_json"] == ["line 2"] and report.ids["duplicate_id"] == ["g1"]
    assert report.ids["audio_corrupt"] == ["ac"]
    assert "audio_missing=1 (am)" in report.summary()
    assert json.loads(report.to_json())["counts"]["path_escapes"] == 1


def test_absolute_path_escapes(data_dir):
    man = data_dir / "m.jsonl"
    _write_lines(man, [GOOD, {"id": "abs", "audio": str(data_dir / "audio" / "good.wav"), "text": "hi"}])
    _, report = read_manifest(man)
    assert report.ids == {"path_escapes": ["abs"]}


def test_strict_raises_with_file_line_field(data_dir):
    man = data_dir / "m.jsonl"
    _write_lines(man, [GOOD, "", BAD_ROWS["audio_missing"]])
    with pytest.raises(DataError) as err:
        read_manifest(man, strict=True)
    msg = str(err.value)
    assert f"{man}:3" in msg and "'audio'" in msg and "fix:" in msg


def test_check_audio_off_and_optional_audio(data_dir):
    man = data_dir / "m.jsonl"
    _write_lines(
        man, [{"id": "a", "audio": "audio/nope.wav", "text": "hi"}, {"id": "b", "text": "text only"}]
    )
    examples, report = read_manifest(man, check_audio=False, require_audio=False)
    assert [e.id for e in examples] == ["a", "b"] and examples[1].audio is None and report.total == 0


def test_missing_empty_unusable_manifest(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_manifest(tmp_path / "empty.jsonl")
    _write_lines(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(DataError, match="no usable rows"):
        read_manifest(tmp_path / "bad.jsonl")


def test_write_read_roundtrip(data_dir):
    examples, _ = read_manifest(_manifest_with(data_dir, [GOOD]))
    extra = Example(id="mem/1", text="in memory", waveform=np.zeros(1600, np.float32), reference="ref")
    out = data_dir / "copy.jsonl"
    write_manifest(out, [*examples, extra])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["audio"] == "audio/good.wav" and rows[1]["audio"] == "audio/mem_1.wav"
    back, report = read_manifest(out)
    assert report.total == 0
    assert back[0] == examples[0]
    assert back[1].id == "mem/1" and back[1].load_waveform().shape == (1600,)
    with pytest.raises(DataError, match="outside the manifest folder"):
        write_manifest(data_dir / "other" / "m.jsonl", examples)


def _manifest_with(root, rows):
    man = root / "m.jsonl"
    _write_lines(man, rows)
    return man


def test_skip_report_api():
    r = SkipReport()
    r.add("empty_text", "a", "detail")
    r.add("empty_text", "b")
    assert r.total == 2 and r.counts == {"empty_text": 2} and r.ids == {"empty_text": ["a", "b"]}


def test_examples_from_hf_dataset(tmp_path):
    _wav(tmp_path / "p.wav", seconds=0.1, sr=8000)
    buf = io.BytesIO()
    sf.write(buf, np.zeros((441, 2), np.float32), 44100, format="WAV")
    ds = datasets.Dataset.from_dict(
        {
            "audio": [
                {
                    "array": np.ones(800, np.float32) * 0.25,
                    "sampling_rate": 8000,
                    "path": None,
                    "bytes": None,
                },
                {"array": None, "sampling_rate": None, "path": None, "bytes": buf.getvalue()},
                {"array": None, "sampling_rate": None, "path": str(tmp_path / "p.wav"), "bytes": None},
            ],
            "sentence": ["one", "two", "three"],
            "label": [1, 2, 3],
        }
    )
    exs = examples_from_hf_dataset(ds, text_column="sentence", answer_column="label", id_prefix="hf-")
    assert [e.id for e in exs] == ["hf-0", "hf-1", "hf-2"] and [e.answer for e in exs] == ["1", "2", "3"]
    assert [e.waveform.shape for e in exs] == [(1600,), (160,), (1600,)]
    assert exs[0].waveform.dtype == np.float32 and abs(exs[0].waveform[400] - 0.25) < 1e-3
    assert exs[2].audio == str(tmp_path / "p.wav") and exs[0].audio is None
    np.testing.assert_array_equal(exs[0].load_waveform(), exs[0].waveform)
    # An Audio-typed column is read with decode=False (datasets' decoder needs torchcodec).
    paths = datasets.Dataset.from_dict({"audio": [str(tmp_path / "p.wav")], "text": ["x"]})
    typed = paths.cast_column("audio", datasets.Audio())
    assert examples_from_hf_dataset(typed)[0].waveform.shape == (1600,)
    with pytest.raises(DataError, match="no column"):
        examples_from_hf_dataset(ds)


def test_text_only_rows_need_no_audio_and_train_on_text(data_dir):
    from xopd.algos.base import make_prompt

    m = data_dir / "mixed.jsonl"
    _write_lines(m, [GOOD, {"id": "t1", "text": "what is 3 plus 4", "reference": "7", "text_only": True},
                     {"id": "t2", "text": "no audio and not text_only"}])
    examples, skips = read_manifest(m)
    assert [e.id for e in examples] == ["g1", "t1"] and skips.counts == {"missing_field": 1}
    text_row = examples[1]
    assert text_row.audio is None and text_row.meta == {"text_only": True}
    s = make_prompt(text_row, "S")  # a speech SFT trains text-only rows on their text
    assert s.view == "T" and s.text == "what is 3 plus 4" and s.audio is None
    assert make_prompt(examples[0], "S").view == "S"
