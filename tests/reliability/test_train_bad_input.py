"""`xopd train` on bad input: every config/path mistake is one line naming the key or file and exits
non-zero (2 for config, 1 for data/model); bad manifest rows are skipped, counted and logged with ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xopd.cli import main

from ._helpers import GOOD_ROWS, one_line_error, run_xopd, tone, train_argv, write_manifest_lines, write_wav

# name -> (extra CLI args, text the one error line must contain)
CONFIG_ERRORS = {
    "lam_below_0": (["--lam", "-0.1"], "'lam' must be in [0, 1]"),
    "lam_above_1": (["--lam", "1.5"], "'lam' must be in [0, 1]"),
    "lam_not_number": (["--lam", "half"], "'lam' must be float"),
    "n_samples_0": (["--n_samples", "0"], "'n_samples' must be >= 1"),
    "n_samples_float": (["--n_samples", "2.5"], "'n_samples' must be int"),
    "lr_0": (["--lr", "0"], "'lr' must be > 0"),
    "lr_negative": (["--lr=-1e-5"], "'lr' must be > 0"),
    "max_steps_0": (["--max_steps", "0"], "'max_steps' must be >= 1"),
    "temperature_0": (["--temperature", "0"], "'temperature' must be > 0"),
    "top_p_0": (["--top_p", "0"], "'top_p' must be in (0, 1]"),
    "batch_not_multiple": (["--batch_size", "3"], "multiple of micro_batch_size"),
    "bool_garbage": (["--strict", "maybe"], "'strict' must be bool"),
    "unknown_key": (["--lamda", "0.5"], "unknown key 'lamda'"),
    "bad_choice": (["--algo", "ppo"], "'algo' must be one of"),
    "nothing_trains": (["--train_lm", "false"], "nothing would train"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_error_is_one_line_exit_2(case, tiny_world, tmp_path, capsys):
    extra, expect = CONFIG_ERRORS[case]
    assert main(train_argv(tiny_world, tmp_path / "run", 1, *extra)) == 2
    err = one_line_error(capsys.readouterr().err)
    assert expect in err, err
    assert not (tmp_path / "run").exists()  # rejected before anything was written


YAML_ERRORS = {
    "unknown_key": ("lam: 0.5\nn_sample: 4\n", "unknown key 'n_sample'"),
    "wrong_type": ("lam: [0.1, 0.2]\n", "'lam' must be float"),
    "impossible": ("lr: -0.001\n", "'lr' must be > 0"),
    "not_a_mapping": ("- lam\n- 0.5\n", "top level must be a mapping"),
    "syntax": ("lam: [0.5\n", "not valid YAML"),
    "not_utf8": (b"lam: \xff\xfe\n", "not valid YAML"),
    "required_missing": ("lam: 0.5\n", "'student_path' is required"),
}


@pytest.mark.parametrize("case", sorted(YAML_ERRORS))
def test_yaml_config_error_names_the_file(case, tmp_path, capsys):
    text, expect = YAML_ERRORS[case]
    cfg = tmp_path / "my.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["train", "--config", str(cfg)]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert expect in err, err
    if case not in ("required_missing", "impossible"):  # range checks name the key, not the file
        assert "my.yaml" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("which", ["student_path", "teacher_path", "manifest"])
@pytest.mark.parametrize("problem", ["missing", "empty_dir_or_file"])
def test_bad_paths_are_one_line_exit_1(which, problem, tiny_world, tmp_path, capsys):
    bad = tmp_path / "bad"
    if problem == "empty_dir_or_file":
        bad.write_text("") if which == "manifest" else bad.mkdir()
    argv = train_argv(tiny_world, tmp_path / "run", 1)
    argv[argv.index(f"--{which}") + 1] = str(bad)
    assert main(argv) == 1
    assert str(bad) in one_line_error(capsys.readouterr().err)


def test_bad_rows_are_skipped_counted_and_logged(tiny_world, data_dir, capsys):
    write_wav(data_dir / "audio" / "short.wav", tone(0.002))
    (data_dir / "audio" / "junk.wav").write_text("not audio")
    rows = [
        *GOOD_ROWS,
        "{oops",
        b'{"id": "latin1", "text": "caf\xe9", "audio": "audio/0000.wav"}',
        {"id": "dup", "audio": "audio/0000.wav", "text": "one"},
        {"id": "dup", "audio": "audio/0001.wav", "text": "2"},
        {"id": "esc", "audio": "../../etc/passwd", "text": "hi"},
        {"id": "blank", "audio": "audio/0000.wav", "text": " "},
        {"id": "long", "audio": "audio/0000.wav", "text": "x" * 5000},
        {"id": "gone", "audio": "audio/gone.wav", "text": "hi"},
        {"id": "junk", "audio": "audio/junk.wav", "text": "hi"},
        {"id": "short", "audio": "audio/short.wav", "text": "hi"},
    ]
    man = write_manifest_lines(data_dir / "m.jsonl", rows)
    out = data_dir.parent / "run"
    assert main(train_argv(tiny_world, out, 1, manifest=str(man))) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped 9 rows" in err and "skipped.json" in err
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["total"] == 9
    assert skipped["ids"] == {
        "malformed_json": ["line 3"],
        "not_utf8": ["line 4"],
        "duplicate_id": ["dup"],
        "path_escapes": ["esc"],
        "empty_text": ["blank"],
        "text_too_long": ["long"],
        "audio_missing": ["gone"],
        "audio_corrupt": ["junk"],
        "audio_too_short": ["short"],
    }
    assert (out / "checkpoint-1").is_dir()


def test_strict_train_stops_at_first_bad_row(tiny_world, data_dir, capsys):
    man = write_manifest_lines(
        data_dir / "m.jsonl", [*GOOD_ROWS, {"id": "gone", "audio": "audio/gone.wav", "text": "x"}]
    )
    assert main(train_argv(tiny_world, data_dir.parent / "run", 1, "--strict", manifest=str(man))) == 1
    err = one_line_error(capsys.readouterr().err)
    assert "m.jsonl:3" in err and "field 'audio'" in err and "fix:" in err


def test_nan_audio_found_mid_run_is_one_line_naming_the_file(tiny_world, data_dir, capsys):
    """NaN samples pass the header check (only `xopd data check` decodes up front); when training
    reaches the file it stops with one line naming it, not a crash inside the encoder."""
    write_wav(data_dir / "audio" / "nan.wav", np.full(3200, np.nan, np.float32), 16000, "FLOAT")
    man = write_manifest_lines(
        data_dir / "m.jsonl", [*GOOD_ROWS, {"id": "nan", "audio": "audio/nan.wav", "text": "x"}]
    )
    assert main(train_argv(tiny_world, data_dir.parent / "run", 2, manifest=str(man))) == 1
    err = one_line_error(capsys.readouterr().err)
    assert "nan.wav" in err and "NaN" in err


def test_audio_over_the_encoder_window_is_one_line(tiny_world, data_dir, capsys):
    """max_audio_seconds raised past the encoder's 30 s window: a clear error, not a shape crash."""
    write_wav(data_dir / "audio" / "long.wav", np.zeros(16000 * 31, np.float32))
    man = write_manifest_lines(data_dir / "m.jsonl", [{"id": "long", "audio": "audio/long.wav", "text": "x"}])
    argv = train_argv(tiny_world, data_dir.parent / "run", 1, "--max_audio_seconds", "60", manifest=str(man))
    assert main(argv) == 1
    assert "encoder covers at most" in one_line_error(capsys.readouterr().err)


def test_subprocess_train_errors_have_no_traceback(tiny_world, data_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"student_path: {tiny_world['student']}\nteacher_path: {tiny_world['teacher']}\n"
        f"manifest: {tiny_world['manifest']}\nn_samples: 0\n"
    )
    res = run_xopd("train", "--config", cfg)
    assert res.returncode == 2 and "'n_samples' must be >= 1" in one_line_error(res.stderr)
    man = write_manifest_lines(
        data_dir / "m.jsonl", ["not json", {"id": "a", "audio": "audio/x.wav", "text": "t"}]
    )
    res = run_xopd(*train_argv(tiny_world, tmp_path / "run", 1, manifest=str(man)))
    assert res.returncode == 1 and "no usable rows" in one_line_error(res.stderr)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["demo", "--xopd_stepz", "3"], "unknown key 'xopd_stepz'"),
        (["demo", "--xopd_steps", "many"], "'xopd_steps' must be int"),
        (["demo", "--encoder", "gpt"], "'encoder' must be one of"),
    ],
)
def test_demo_config_errors_are_one_line(argv, expect, capsys):
    """`xopd demo` (being built elsewhere) shares the config machinery: same one-line errors, exit 2."""
    pytest.importorskip("xopd.lab.world.pipeline")
    assert main(argv) == 2
    assert expect in one_line_error(capsys.readouterr().err)
