"""`xopd data check`: every kind of bad input is either a valid row or a counted skip with its id;
odd-but-valid audio loads; exit codes 0 (usable) / 1 (nothing usable, fatal, strict) / 2 (usage)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from xopd.cli import main

from ._helpers import GOOD_ROWS, one_line_error, run_xopd, tone, write_manifest_lines, write_wav


def _check(capsys, manifest: Path, *flags: str) -> tuple[int, dict]:
    rc = main(["data", "check", str(manifest), "--json", *flags])
    return rc, json.loads(capsys.readouterr().out)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _header_only(path: Path) -> None:
    """A 44-byte WAV header that promises 0 frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", 0)
    )


# name -> writer(audio_path) for files that are odd but valid: they must load and count as ok
VALID_AUDIO = {
    "pcm_u8": lambda p: write_wav(p, tone(), 16000, "PCM_U8"),
    "pcm_24_44k": lambda p: write_wav(p, tone(sr=44100), 44100, "PCM_24"),
    "float_22k": lambda p: write_wav(p, tone(sr=22050), 22050, "FLOAT"),
    "double_8k": lambda p: write_wav(p, tone(sr=8000).astype(np.float64), 8000, "DOUBLE"),
    "stereo_48k": lambda p: write_wav(p, np.stack([tone(sr=48000), -tone(sr=48000)], 1), 48000),
    "silence": lambda p: write_wav(p, np.zeros(4800, np.float32)),
    "clipping_pcm": lambda p: write_wav(p, np.sign(tone(amp=1.0)) * 1.0),
    "overrange_float": lambda p: write_wav(p, tone(amp=3.0), 16000, "FLOAT"),
    "flac": lambda p: write_wav(p, tone(), 16000, "PCM_16", "FLAC"),
    "truncated_mid_data": lambda p: (write_wav(p, tone(1.0)), _truncate(p, 44 + 8000)),
}

# name -> (writer(audio_path), skip reason)
BAD_AUDIO = {
    "missing": (lambda p: None, "audio_missing"),
    "empty_file": (lambda p: p.write_bytes(b""), "audio_corrupt"),
    "not_audio": (lambda p: p.write_text("this is a text file, not a wav\n" * 20), "audio_corrupt"),
    "truncated_header": (lambda p: (write_wav(p, tone()), _truncate(p, 20)), "audio_corrupt"),
    "header_no_frames": (_header_only, "audio_corrupt"),
    "nan_samples": (
        lambda p: write_wav(
            p, np.where(np.arange(4800) == 100, np.nan, 0.1).astype(np.float32), 16000, "FLOAT"
        ),
        "audio_nan",
    ),
    "inf_samples": (lambda p: write_wav(p, np.full(4800, np.inf, np.float32), 16000, "FLOAT"), "audio_nan"),
    "too_short": (lambda p: write_wav(p, tone(0.003)), "audio_too_short"),
    "over_limit": (lambda p: write_wav(p, np.zeros(31 * 8000, np.float32), 8000, "PCM_U8"), "audio_too_long"),
}

# name -> (row as dict / raw line, skip reason, id the report names)
BAD_ROWS = {
    "malformed_json": ('{"id": "x", "audio": "audio/0000.wav", ', "malformed_json", "line 3"),
    "json_array": ("[1, 2, 3]", "wrong_type", "line 3"),
    "non_utf8_line": (b'{"id": "u", "audio": "audio/0000.wav", "text": "caf\xe9"}', "not_utf8", "line 3"),
    "lone_surrogate": ('{"id": "s", "audio": "audio/0000.wav", "text": "a \\ud800 b"}', "not_utf8", "s"),
    "empty_text": ({"id": "e", "audio": "audio/0000.wav", "text": ""}, "empty_text", "e"),
    "whitespace_text": ({"id": "w", "audio": "audio/0000.wav", "text": " \t\n "}, "empty_text", "w"),
    "very_long_text": ({"id": "l", "audio": "audio/0000.wav", "text": "word " * 2000}, "text_too_long", "l"),
    "text_not_string": ({"id": "t", "audio": "audio/0000.wav", "text": ["a"]}, "wrong_type", "t"),
    "missing_text": ({"id": "m", "audio": "audio/0000.wav"}, "missing_field", "m"),
    "missing_id": ({"audio": "audio/0000.wav", "text": "hi"}, "missing_field", "line 3"),
    "duplicate_id": ({"id": "good-0", "audio": "audio/0001.wav", "text": "again"}, "duplicate_id", "good-0"),
    "path_dotdot": ({"id": "d", "audio": "../outside.wav", "text": "hi"}, "path_escapes", "d"),
    "path_nested_dotdot": (
        {"id": "n", "audio": "audio/../../outside.wav", "text": "hi"},
        "path_escapes",
        "n",
    ),
    "path_absolute": ({"id": "a", "audio": "/etc/passwd", "text": "hi"}, "path_escapes", "a"),
}


@pytest.mark.parametrize("case", sorted(VALID_AUDIO))
def test_odd_but_valid_audio_is_ok(case, data_dir, capsys):
    VALID_AUDIO[case](data_dir / "audio" / "odd.flac" if case == "flac" else data_dir / "audio" / "odd.wav")
    name = "odd.flac" if case == "flac" else "odd.wav"
    man = write_manifest_lines(
        data_dir / "m.jsonl", [*GOOD_ROWS, {"id": "odd", "audio": f"audio/{name}", "text": "hello"}]
    )
    rc, rep = _check(capsys, man)
    assert rc == 0 and rep["ok"] == 3 and rep["skipped"] == 0, rep


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_is_a_counted_skip(case, data_dir, capsys):
    writer, reason = BAD_AUDIO[case]
    writer(data_dir / "audio" / "bad.wav")
    man = write_manifest_lines(
        data_dir / "m.jsonl", [*GOOD_ROWS, {"id": "bad", "audio": "audio/bad.wav", "text": "hello"}]
    )
    rc, rep = _check(capsys, man)
    assert rc == 0 and rep["ok"] == 2, rep
    assert rep["counts"] == {reason: 1} and rep["ids"][reason] == ["bad"], rep
    assert rep["details"][reason][0].startswith("m.jsonl:3")


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_are_counted_skips(case, data_dir, capsys):
    row, reason, row_id = BAD_ROWS[case]
    man = write_manifest_lines(data_dir / "m.jsonl", [*GOOD_ROWS, row])
    rc, rep = _check(capsys, man)
    assert rc == 0 and rep["ok"] == 2 and rep["rows"] == 3, rep
    assert rep["counts"] == {reason: 1} and rep["ids"][reason] == [row_id], rep


def test_text_summary_lists_reasons_and_ids(data_dir, capsys):
    BAD_AUDIO["nan_samples"][0](data_dir / "audio" / "nan.wav")
    man = write_manifest_lines(
        data_dir / "m.jsonl",
        [
            *GOOD_ROWS,
            {"id": "n1", "audio": "audio/nan.wav", "text": "x"},
            "{broken",
            {"id": "e1", "audio": "audio/0000.wav", "text": ""},
        ],
    )
    assert main(["data", "check", str(man)]) == 0
    out = capsys.readouterr().out
    assert "2 of 5 rows ok, 3 skipped" in out
    assert "audio_nan: 1 (n1)" in out and "malformed_json: 1 (line 4)" in out and "empty_text: 1 (e1)" in out


def test_strict_names_file_line_and_field(data_dir, capsys):
    BAD_AUDIO["nan_samples"][0](data_dir / "audio" / "nan.wav")
    man = write_manifest_lines(
        data_dir / "m.jsonl", [*GOOD_ROWS, {"id": "n1", "audio": "audio/nan.wav", "text": "x"}]
    )
    assert main(["data", "check", str(man), "--strict"]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert "m.jsonl:3" in err and "'audio'" in err and "NaN" in err
    bad = write_manifest_lines(
        data_dir / "b.jsonl", [GOOD_ROWS[0], {"id": "e", "audio": "audio/0000.wav", "text": ""}]
    )
    assert main(["data", "check", str(bad), "--strict"]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert "b.jsonl:2" in err and "field 'text'" in err and "fix:" in err


def test_nothing_usable_exits_1_and_lists_every_id(data_dir, capsys):
    rows = [{"id": f"miss-{i}", "audio": f"audio/none-{i}.wav", "text": "x"} for i in range(30)]
    rc, rep = _check(capsys, write_manifest_lines(data_dir / "m.jsonl", rows))
    assert rc == 1 and rep["ok"] == 0 and not rep["usable"] and "no usable rows" in rep["error"]
    assert rep["ids"]["audio_missing"] == [f"miss-{i}" for i in range(30)]


@pytest.mark.parametrize("case", ["missing", "empty", "blank_lines", "directory"])
def test_unusable_manifest_file_exits_1(case, tmp_path, capsys):
    man = tmp_path / "m.jsonl"
    if case == "empty":
        man.write_text("")
    elif case == "blank_lines":
        man.write_text("\n  \n\n")
    elif case == "directory":
        man.mkdir()
    assert main(["data", "check", str(man)]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert str(man) in err


def test_max_audio_seconds_flag(data_dir, capsys):
    man = write_manifest_lines(data_dir / "m.jsonl", GOOD_ROWS)
    rc, rep = _check(capsys, man, "--max_audio_seconds", "0.01")
    assert rc == 1 and rep["counts"] == {"audio_too_long": 2}


def test_tokenizer_check(data_dir, tiny_world, tmp_path, capsys):
    man = write_manifest_lines(
        data_dir / "m.jsonl",
        [*GOOD_ROWS, {"id": "uni", "audio": "audio/0000.wav", "text": "naïve café 数字 🎤"}],
    )
    rc, rep = _check(capsys, man, "--tokenizer", tiny_world["student"])
    assert rc == 0 and rep["ok"] == 3, rep  # byte-level BPE: any text tokenizes
    # a word-level tokenizer with [UNK]: unknown words are a warning, not a skip
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wl = Tokenizer(models.WordLevel({"[UNK]": 0, "what": 1, "is": 2}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="[UNK]").save_pretrained(str(tmp_path / "wl"))
    rc, rep = _check(capsys, man, "--tokenizer", str(tmp_path / "wl"))
    assert (
        rc == 0 and rep["ok"] == 3 and rep["warnings"]["text_unknown_tokens"] == ["good-0", "good-1", "uni"]
    )
    assert main(["data", "check", str(man), "--tokenizer", str(tmp_path / "nope")]) == 1
    assert "tokenizer directory not found" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [
        ["data"],
        ["data", "check"],
        ["data", "check", "m.jsonl", "--max_audio_seconds", "abc"],
        ["data", "check", "m.jsonl", "--max_audio_seconds", "0"],
        ["data", "check", "m.jsonl", "--bogus"],
        ["data", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    assert rc == 2
    assert "Traceback" not in capsys.readouterr().err


def test_subprocess_exit_codes_and_no_traceback(data_dir):
    BAD_AUDIO["not_audio"][0](data_dir / "audio" / "bad.wav")
    man = write_manifest_lines(
        data_dir / "m.jsonl",
        [*GOOD_ROWS, {"id": "b", "audio": "audio/bad.wav", "text": "x"}, b"\xff\xfe not json"],
    )
    ok = run_xopd("data", "check", man)
    assert ok.returncode == 0 and "2 of 4 rows ok" in ok.stdout and "Traceback" not in ok.stderr, ok.stderr
    strict = run_xopd("data", "check", man, "--strict")
    assert strict.returncode == 1 and "m.jsonl:3" in one_line_error(strict.stderr)
    usage = run_xopd("data", "check", man, "--max_audio_seconds", "-3")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
