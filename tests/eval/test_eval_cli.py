"""`xopd eval`: S/T table, Avg. Drop exactly as defined, WER/audio-only benchmarks, judge rows, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xopd.cli import main
from xopd.data.audio import save_wav
from xopd.eval.judge import extract_and_match

from .test_judge import JudgeServer

EVAL = ["--max_new_tokens", "4", "--no-progress"]


def _copy_data(tiny_world, tmp_path: Path) -> Path:
    """A writable copy of the tiny world's data folder (manifest + audio)."""
    dst = tmp_path / "data"
    shutil.copytree(Path(tiny_world["manifest"]).parent, dst)
    return dst / "manifest.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _responses(report: Path, run: str) -> dict[str, str]:
    lines = [
        json.loads(x) for x in report.with_name(report.stem + ".responses.jsonl").read_text().splitlines()
    ]
    return {x["id"]: x["response"] for x in lines if x["run"] == run}


def _eval(student: str, manifests: list[Path], out: Path, teacher: str | None = None, *extra: str) -> int:
    argv = ["eval", "--student", student, "--output", str(out), *EVAL, *extra]
    for m in manifests:
        argv += ["--manifest", str(m)]
    if teacher:
        argv += ["--teacher", teacher]
    return main(argv)


def test_avg_drop_is_the_papers_formula(tiny_world, tmp_path: Path) -> None:
    manifest = _copy_data(tiny_world, tmp_path)
    first = tmp_path / "r0.json"
    assert _eval(tiny_world["student"], [manifest], first, tiny_world["teacher"]) == 0
    # make the teacher's own T answers the references: teacher_T = 100 %, drops are closed-form
    teacher_said = _responses(first, "teacher_T")
    _write(manifest, [r | {"task": "qa", "answer": teacher_said[r["id"]]} for r in _rows(manifest)])
    out = tmp_path / "r1.json"
    assert _eval(tiny_world["student"], [manifest], out, tiny_world["teacher"]) == 0
    rep = json.loads(out.read_text())
    b = rep["benchmarks"]["data"]
    assert b["runs"]["teacher_T"]["score"] == 100.0 and rep["base"] == "teacher_T"
    for view in ("S", "T"):
        said = _responses(out, f"student_{view}")
        score = 100.0 * np.mean([extract_and_match(said[i], teacher_said[i]) for i in said])
        assert b["runs"][f"student_{view}"]["score"] == pytest.approx(score)
        assert b[f"drop_{view}"] == pytest.approx(100.0 - score)
        assert rep[f"avg_drop_{view}"] == pytest.approx(100.0 - score)  # one benchmark: mean of one term
    md = out.with_suffix(".md").read_text()
    assert "| data | score % | 8 |" in md and "**Avg. Drop**" in md


def test_without_teacher_the_base_is_the_student_on_text(tiny_world, tmp_path: Path) -> None:
    manifest = _copy_data(tiny_world, tmp_path)
    first = tmp_path / "r0.json"
    assert _eval(tiny_world["student"], [manifest], first) == 0
    said = _responses(first, "student_T")
    _write(manifest, [r | {"task": "qa", "answer": said[r["id"]]} for r in _rows(manifest)])
    second = tmp_path / "r1.json"
    assert _eval(tiny_world["student"], [manifest, manifest], second) == 0
    rep = json.loads(second.read_text())
    assert rep["base"] == "student_T" and "no --teacher" in rep["base_note"]
    assert list(rep["benchmarks"]) == ["data", "data-2"]  # same manifest twice: two benchmarks
    assert rep["avg_drop_T"] == 0.0
    s = rep["benchmarks"]["data"]["runs"]["student_S"]["score"]
    assert rep["avg_drop_S"] == pytest.approx(100.0 - s)
    assert "teacher_T" not in rep["benchmarks"]["data"]["runs"]


def test_asr_and_audio_only_rows_are_their_own_benchmarks(tiny_world, tmp_path: Path) -> None:
    manifest = _copy_data(tiny_world, tmp_path)
    rows = _rows(manifest)
    for r in rows[:3]:
        r.update(task="asr", answer="what is five plus three")
    rows[3].update(task="audio_only", answer="fast", instruction="Is the speaker fast or slow?")
    _write(manifest, rows)
    out = tmp_path / "r.json"
    assert _eval(tiny_world["student"], [manifest], out, tiny_world["teacher"]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["benchmarks"]) == {"data", "data:asr", "data:audio_only"}
    asr = rep["benchmarks"]["data:asr"]
    assert asr["metric"] == "wer" and asr["n"] == 3 and set(asr["runs"]) == {"student_S", "student_T"}
    assert asr["runs"]["student_S"]["score"] >= 0.0
    assert set(rep["benchmarks"]["data:audio_only"]["runs"]) == {"student_S"}
    assert set(rep["excluded_from_avg_drop"]) >= {"data:asr", "data:audio_only"}
    assert "WER % (lower better)" in out.with_suffix(".md").read_text()


def test_open_ended_rows_go_to_the_judge(tiny_world, tmp_path: Path) -> None:
    manifest = _copy_data(tiny_world, tmp_path)
    _write(
        manifest,
        [
            {k: v for k, v in r.items() if k != "answer"} | {"rubric": "answers politely"}
            for r in _rows(manifest)
        ],
    )
    out = tmp_path / "r.json"
    with JudgeServer() as srv:
        assert (
            _eval(
                tiny_world["student"],
                [manifest],
                out,
                tiny_world["teacher"],
                "--judge-url",
                srv.url,
                "--judge-model",
                "stub",
            )
            == 0
        )
        assert len(srv.requests) == 3 * 8  # student S, student T, teacher T
    rep = json.loads(out.read_text())
    for run in ("student_S", "student_T", "teacher_T"):
        said = _responses(out, run)
        expect = 100.0 * np.mean([min(10, len(said[i].split())) / 10 for i in said])
        assert rep["benchmarks"]["data"]["runs"][run]["score"] == pytest.approx(expect)
    assert rep["settings"]["judge"]["model"] == "stub"


def test_bad_manifests_and_flags_are_one_line_errors(tiny_world, tmp_path: Path, capsys) -> None:
    student = tiny_world["student"]
    assert _eval(student, [tmp_path / "missing.jsonl"], tmp_path / "r.json") == 1
    assert "manifest not found" in capsys.readouterr().err
    manifest = _copy_data(tiny_world, tmp_path)
    rows = _rows(manifest)
    rows[0]["audio"] = "../../etc/passwd"
    rows[1]["audio"] = "audio/does-not-exist.wav"
    _write(manifest, rows)
    assert _eval(student, [manifest], tmp_path / "r.json", None, "--strict") == 1
    assert "leaves the manifest folder" in capsys.readouterr().err
    assert _eval(student, [manifest], tmp_path / "r.json") == 0  # default: skip and report
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["benchmarks"]["data"]["skipped_rows"] == {"path_escapes": 1, "audio_missing": 1}
    assert rep["benchmarks"]["data"]["n"] == 6
    capsys.readouterr()
    assert _eval(student, [manifest], tmp_path / "r.json", None, "--judge-url", "http://127.0.0.1:9") == 2
    assert "--judge-url and --judge-model go together" in capsys.readouterr().err


def test_strict_escape_message(tiny_world, tmp_path: Path, capsys) -> None:
    manifest = _copy_data(tiny_world, tmp_path)
    rows = _rows(manifest)
    rows[2]["audio"] = "../outside.wav"
    _write(manifest, rows)
    assert _eval(tiny_world["student"], [manifest], tmp_path / "r.json", None, "--strict") == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("xopd eval: error:")
        and "manifest.jsonl:3" in err
        and "leaves the manifest folder" in err
    )


def test_audio_longer_than_the_encoder_window(tiny_world, tmp_path: Path, capsys) -> None:
    from xopd.lab.tiny import tiny_whisper_config
    from xopd.models.encoder import AudioEncoder
    from xopd.models.speech_llm import SpeechLLM

    enc = AudioEncoder.from_config(tiny_whisper_config(max_source_positions=50))  # 100 mel frames = 1 s
    SpeechLLM.compose(enc, tiny_world["teacher"], seed=0).save_pretrained(tmp_path / "short")
    manifest = _copy_data(tiny_world, tmp_path)
    save_wav(manifest.parent / "audio" / "long.wav", np.zeros(24000, np.float32) + 0.01)
    _write(manifest, [{"id": "long", "audio": "audio/long.wav", "text": "hi", "answer": "x"}])
    assert _eval(str(tmp_path / "short"), [manifest], tmp_path / "r.json") == 1
    err = capsys.readouterr().err
    assert "'long' has 1.5 s of audio" in err and "encoder window is 1.0 s" in err


def test_chat_template_without_audio_placeholder(tiny_world, tmp_path: Path, capsys) -> None:
    student = tmp_path / "student"
    shutil.copytree(tiny_world["student"], student)
    for f in [student / "chat_template.jinja", student / "tokenizer_config.json"]:
        if f.name.endswith(".jinja") and f.is_file():
            f.write_text("{% for m in messages %}<|{{ m['role'] }}|>\nquestion{% endfor %}<|assistant|>\n")
        elif f.is_file():
            cfg = json.loads(f.read_text())
            if "chat_template" in cfg:
                cfg["chat_template"] = (
                    "{% for m in messages %}<|{{ m['role'] }}|>\nquestion{% endfor %}<|assistant|>\n"
                )
                f.write_text(json.dumps(cfg))
    assert _eval(str(student), [Path(tiny_world["manifest"])], tmp_path / "r.json") == 1
    err = capsys.readouterr().err
    assert "0 audio placeholder tokens" in err and "template must keep the user content" in err


def test_recipes_call_the_same_pipeline_with_an_eval_config(tiny_world, tmp_path: Path) -> None:
    """`xopd models real-cpu` evaluates through EvalConfig + run_eval (it used to pass a hand-built
    Namespace that lacked half of the flags and would have failed in the eval stage)."""
    from xopd.eval.config import EvalConfig
    from xopd.eval.run import run_eval
    from xopd.lab.recipes.real_cpu import RealCpuConfig, _eval

    manifest = _copy_data(tiny_world, tmp_path)
    rep = _eval(Path(tiny_world["student"]), Path(tiny_world["teacher"]), manifest, tmp_path / "r.json",
                RealCpuConfig(max_new_tokens=4, threads=1))
    direct = run_eval(EvalConfig(student=tiny_world["student"], teacher=tiny_world["teacher"],
                                 manifest=[str(manifest)], output=str(tmp_path / "d.json"), max_new_tokens=4,
                                 batch_size=16, strict=True))
    assert rep["benchmarks"]["data"]["runs"] == direct["benchmarks"]["data"]["runs"]
    with pytest.raises(Exception, match="nothing to evaluate"):
        run_eval(EvalConfig(student=tiny_world["student"], output=str(tmp_path / "x.json")))
