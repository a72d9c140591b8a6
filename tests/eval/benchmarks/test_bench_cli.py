"""``xopd eval --bench``: every benchmark end to end on its fixture with the tiny student/teacher and a
loopback judge; scores recomputed from the logged responses; skips, Avg. Drop terms and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xopd.cli import main
from xopd.eval.benchmarks.voicebench_default import is_refusal
from xopd.eval.benchmarks.voicebench_rules import OfficialRules, mcq_accuracy

from ..chat_stub import ChatStub, chat_reply


def _verdict(body: dict) -> tuple[int, dict]:
    """A fixed verdict for each judge prompt of the fixtures, ``n`` choices."""
    user = body["messages"][-1]["content"]
    if "Grade the reply from 1 to 5" in user or "FIXTURE OPEN RATING" in user:
        reply = "4"
    elif "is the candidate answer correct?" in user:
        reply = "Yes."
    elif "FIXTURE QA CHECK" in user:
        reply = "yes"
    elif "CANDIDATE ANSWER TO ASSESS" in user:
        reply = "CORRECT" if "OFFICIAL ANSWER:3" in user else "INCORRECT"
    else:
        reply = '```json\n{"explanation": "fine", "criteria_met": true}\n```'
    return 200, chat_reply(reply, body.get("n", 1))


@pytest.fixture
def judge():
    with ChatStub(_verdict) as j:  # OpenAI-compatible loopback judge
        yield j


def _responses(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    got: dict[tuple[str, str], dict[str, str]] = {}
    for line in out.with_name(out.stem + ".responses.jsonl").read_text().splitlines():
        row = json.loads(line)
        got.setdefault((row["benchmark"], row["run"]), {})[row["id"]] = row["response"]
    return got


def test_all_benchmarks_end_to_end(tiny_world, voicebench_hub, mmar_folder, bba_folder, audiomc_folder, judge,
                                   tmp_path, capsys) -> None:  # fmt: skip
    out = tmp_path / "r.json"
    argv = ["eval", "--student", tiny_world["student"], "--teacher", tiny_world["teacher"], "--output", str(out),
            "--max_new_tokens", "6", "--no-progress", "--limit", "2", "--judge-url", judge.url, "--judge-model", "stub",
            "--bench", "voicebench:openbookqa,mmsu,advbench,alpacaeval,sd-qa,mtbench", "--data", str(voicebench_hub),
            "--bench", "mmar", "--data", str(mmar_folder), "--bench", "big_bench_audio", "--data", str(bba_folder),
            "--bench", "audio_multichallenge", "--data", str(audiomc_folder)]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    b, said = rep["benchmarks"], _responses(out)
    runs3 = {"student_S", "student_T", "teacher_T"}
    # rule-scored subsets: the report's score is xopd's default rule applied to the logged responses
    obqa = b["voicebench/openbookqa"]
    assert set(obqa["runs"]) == runs3 and obqa["n"] == 2
    assert {b[f"voicebench/{c}"]["rules"] for c in ("openbookqa", "advbench", "sd-qa")} == {"xopd default (approximate)"}
    assert "rules" not in b["mmar"] and rep["settings"]["voicebench_src"] is None
    choices = [["oxygen", "carbon dioxide", "helium", "neon"], []]
    for run in runs3:
        resp = said[("voicebench/openbookqa", run)]
        want = mcq_accuracy([resp["test-0"], resp["test-1"]], ["B", "C"], seed=0, choices=choices)["acc"]
        assert obqa["runs"][run]["score"] == want
        adv = said[("voicebench/advbench", run)]["test-0"]
        assert b["voicebench/advbench"]["runs"][run]["score"] == 100.0 * is_refusal(adv)
    assert set(b["voicebench/mmsu"]["runs"]["student_S"]["details"]["per_split"]) == {"biology", "physics"}
    # judged subsets through the official prompts and sampling settings
    assert b["voicebench/alpacaeval"]["runs"]["teacher_T"]["score"] == 4.0
    assert b["voicebench/sd-qa"]["runs"]["student_S"]["score"] == 100.0
    vb_calls = [r for r in judge.requests if r["messages"][0]["role"] == "system"]
    assert vb_calls and all(r["n"] == 3 and r["temperature"] == 0.5 and r["top_p"] == 0.95 for r in vb_calls)
    assert b["audio_multichallenge"]["runs"]["teacher_T"]["score"] == 100.0
    assert b["audio_multichallenge"]["runs"]["student_S"]["details"]["rubric_items_met_percent"] == 100.0
    bba = b["big_bench_audio"]  # the stub says CORRECT only for the item whose official answer is 3
    assert set(bba["runs"]) == {"student_S"} and bba["runs"]["student_S"]["score"] == 50.0
    # S-only, skipped and audio-only benchmarks are reported but not averaged, each with its reason
    ex = rep["excluded_from_avg_drop"]
    assert "no text view" in ex["big_bench_audio"] and "audio-only" in ex["mmar"] and "no scorer" in ex["voicebench/mtbench"]
    assert set(b["mmar"]["runs"]) == {"student_S"} and b["voicebench/mtbench"]["runs"] == {}
    # Avg. Drop: the paper's mean of relative drops over exactly the listed benchmarks
    terms = rep["avg_drop_benchmarks"]
    assert set(terms) == {"voicebench/openbookqa", "voicebench/mmsu", "voicebench/advbench", "voicebench/alpacaeval",
                          "voicebench/sd-qa", "audio_multichallenge"} - {
        n for n in b if (b[n]["runs"].get("teacher_T") or {}).get("score") in (None, 0.0)}  # fmt: skip
    for view in ("S", "T"):
        drops = [100 * (b[n]["runs"]["teacher_T"]["score"] - b[n]["runs"][f"student_{view}"]["score"])
                 / b[n]["runs"]["teacher_T"]["score"] for n in terms]  # fmt: skip
        assert rep[f"avg_drop_{view}"] == pytest.approx(sum(drops) / len(drops))
    md = out.with_suffix(".md").read_text()
    assert "### voicebench" in md and "| voicebench/openbookqa | accuracy % | 2 |" in md and "Scorers:" in md
    assert "VoiceBench mcq: letter extraction, seeded random fallback; rules: xopd default (approximate)" in md
    assert rep["settings"]["judge"]["model"] == "stub" and rep["settings"]["limit"] == 2


def test_judged_subsets_without_a_judge_are_skipped_not_scored(tiny_world, voicebench_hub, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["eval", "--student", tiny_world["student"], "--teacher", tiny_world["teacher"], "--output", str(out),
                 "--max_new_tokens", "3", "--no-progress", "--bench", "voicebench:alpacaeval,advbench",
                 "--data", str(voicebench_hub)]) == 0  # fmt: skip
    rep = json.loads(out.read_text())
    alp = rep["benchmarks"]["voicebench/alpacaeval"]
    assert all(r["score"] is None and "needs a judge" in r["skipped"] for r in alp["runs"].values())
    assert "needs a judge" in rep["excluded_from_avg_drop"]["voicebench/alpacaeval"]
    assert rep["benchmarks"]["voicebench/advbench"]["runs"]["student_T"]["score"] is not None
    assert "not scored (needs a judge" in capsys.readouterr().err


def test_resume_reuses_logged_responses(tiny_world, voicebench_hub, tmp_path, monkeypatch) -> None:
    out = tmp_path / "r.json"
    argv = ["eval", "--student", tiny_world["student"], "--output", str(out), "--max_new_tokens", "3",
            "--no-progress", "--bench", "voicebench:openbookqa", "--data", str(voicebench_hub)]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(out.read_text())
    log = out.with_name("r.responses.jsonl").read_text()
    assert len(log.splitlines()) == 4  # 2 items x (S, T)

    def boom(*a, **k):
        raise AssertionError("resumed run must not generate")

    monkeypatch.setattr("xopd.eval.generation.generate", boom)
    assert main([*argv, "--resume"]) == 0
    again = json.loads(out.read_text())
    assert again["benchmarks"] == first["benchmarks"] and again["settings"]["resumed_responses"] == 4
    assert out.with_name("r.responses.jsonl").read_text() == log
    # a changed setting (longer answers) changes the key, so nothing stale is reused
    with pytest.raises(AssertionError, match="must not generate"):
        main([*argv, "--resume", "--max_new_tokens", "5"])


def test_cli_mistakes_are_one_line(tiny_world, voicebench_hub, tmp_path, capsys) -> None:
    base = ["eval", "--student", tiny_world["student"], "--output", str(tmp_path / "r.json")]
    assert main(base) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main([*base, "--bench", "voicebench"]) == 2
    assert "one --data PATH per --bench" in capsys.readouterr().err
    assert main([*base, "--bench", "voicebench:nope", "--data", str(voicebench_hub)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xopd eval: error:") and "unknown subset 'nope'" in err and len(err.splitlines()) == 1
    assert main([*base, "--bench", "mmar", "--data", str(tmp_path)]) == 1
    assert "no MMAR-meta.json here" in capsys.readouterr().err


def test_local_model_judge_is_greedy_one_sample(tiny_world, voicebench_hub, tmp_path) -> None:
    out = tmp_path / "r.json"
    assert main(["eval", "--student", tiny_world["student"], "--output", str(out), "--max_new_tokens", "3",
                 "--no-progress", "--limit", "1", "--bench", "voicebench:alpacaeval", "--data", str(voicebench_hub),
                 "--judge-model-dir", tiny_world["teacher"]]) == 0  # fmt: skip
    rep = json.loads(out.read_text())
    assert rep["settings"]["judge"] == {"kind": "local", "model_dir": tiny_world["teacher"], "decoding": "greedy, 1 sample"}
    for run in rep["benchmarks"]["voicebench/alpacaeval"]["runs"].values():
        d = run["details"]  # one greedy reply per item, parsed or counted as unparsed, never invented
        assert d["judge_samples"] + d["judge_unparsed"] == 1
        assert (run["score"] is None) == (d["judge_samples"] == 0)


def test_official_rules_from_a_voicebench_checkout(tiny_world, voicebench_hub, voicebench_src, judge, tmp_path,
                                                   monkeypatch, capsys) -> None:  # fmt: skip
    out = tmp_path / "r.json"
    argv = ["eval", "--student", tiny_world["student"], "--output", str(out), "--max_new_tokens", "4", "--no-progress",
            "--judge-url", judge.url, "--judge-model", "stub", "--bench", "voicebench:openbookqa,bbh,advbench,sd-qa,ifeval",
            "--data", str(voicebench_hub)]  # fmt: skip
    assert main([*argv, "--voicebench-src", str(voicebench_src)]) == 0
    rep = json.loads(out.read_text())
    b, said = rep["benchmarks"], _responses(out)
    label = f"official (VoiceBench src at {voicebench_src})"
    assert {b[f"voicebench/{c}"]["rules"] for c in ("openbookqa", "bbh", "advbench", "sd-qa")} == {label}
    assert "IFEval" in b["voicebench/ifeval"]["rules"] and rep["settings"]["voicebench_src"] == str(voicebench_src)
    official = OfficialRules(voicebench_src)
    for run in ("student_S", "student_T"):
        resp = said[("voicebench/openbookqa", run)]
        want = mcq_accuracy([resp["test-0"], resp["test-1"]], ["B", "C"], seed=0, rules=official)["acc"]
        assert b["voicebench/openbookqa"]["runs"][run]["score"] == want
        adv = said[("voicebench/advbench", run)]["test-0"]
        assert b["voicebench/advbench"]["runs"][run]["score"] == 100.0 * official.is_refusal(adv)
        assert b["voicebench/sd-qa"]["runs"][run]["score"] == 100.0  # the checkout's prompt, its system line
    sent = [r["messages"] for r in judge.requests]
    assert sent and all(m[0]["content"] == "Fixture system line." and "FIXTURE QA CHECK" in m[1]["content"] for m in sent)
    assert f"rules: {label}" in out.with_suffix(".md").read_text()
    # the same through the environment; a broken checkout stops before any model runs, in one line
    monkeypatch.setenv("XOPD_VOICEBENCH_SRC", str(voicebench_src))
    assert main([*argv, "--resume"]) == 0 and json.loads(out.read_text())["benchmarks"]["voicebench/bbh"]["rules"] == label
    (voicebench_src / "src/evaluator/harm.py").write_text("refusals = None\n")
    monkeypatch.setattr("xopd.models.load_student", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "harm.py" in err and "refusal" in err
