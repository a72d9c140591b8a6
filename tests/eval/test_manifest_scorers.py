"""Manifest rows name their scorer; the default works for real models' answers; the report says which."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xopd.cli import main
from xopd.data.manifest import Example
from xopd.errors import XopdError
from xopd.eval.judge import choice_match, resolve_scorer, score_row
from xopd.eval.report import score_run


def _ex(answer: str | None, task: str | None = "reasoning", **meta) -> Example:
    return Example(id="x", text="What is 14 plus 22?", task=task, answer=answer, meta=meta)


def test_the_reported_case_real_model_arithmetic_scores() -> None:
    rows = [_ex("36"), _ex("36"), _ex("36")]
    said = ["14 + 22 = 36", "The sum is thirty six.", "It is 35, no wait, 37."]
    run = score_run(rows, said, "accuracy")
    assert run["score"] == pytest.approx(100 * 2 / 3) and run["scorers"] == {"last_number": 3}
    assert score_row(rows[0], "14 + 22 = 36", scorer="world") == 0.0  # the mini world's phrase-only rule


def test_auto_picks_by_row_and_explicit_scorers_win() -> None:
    assert resolve_scorer(_ex("36")) == "last_number"
    assert resolve_scorer(_ex("B", task="qa", choices=["x", "y"])) == "choice"
    assert resolve_scorer(_ex("Paris", task="qa")) == "exact"
    assert resolve_scorer(_ex("Paris", task="qa", match="contains")) == "contains"
    assert resolve_scorer(_ex(None, task="open")) == "judge" and resolve_scorer(_ex(None, task="qa")) == "none"
    assert resolve_scorer(_ex("Paris", task="qa"), "contains") == "contains"  # --scorer
    assert resolve_scorer(_ex("Paris", task="qa", scorer="exact"), "contains") == "exact"  # the row's own field
    with pytest.raises(XopdError, match="scorer 'fuzzy' unknown"):
        resolve_scorer(_ex("Paris", scorer="fuzzy"))
    with pytest.raises(XopdError, match="needs a numeric answer"):
        score_row(_ex("Paris", task="qa"), "Paris", scorer="last_number")


def test_each_scorer_on_hand_written_answers() -> None:
    paris = _ex("Paris", task="qa")
    assert score_row(paris, "Paris.") == 1.0 and score_row(paris, "The capital is Paris.") == 0.0
    assert score_row(paris, "The capital is Paris.", scorer="contains") == 1.0
    assert score_row(paris, "Parisian food", scorer="contains") == 0.0
    mc = _ex("B", task="qa", choices=["oxygen", "carbon dioxide", "helium"])
    assert score_row(mc, "The answer is B.") == 1.0 and score_row(mc, "(A) oxygen") == 0.0
    assert choice_match("Plants take in carbon dioxide.", "B", ["oxygen", "carbon dioxide"]) == 1.0
    assert choice_match("oxygen and carbon dioxide", "B", ["oxygen", "carbon dioxide"]) == 0.0
    assert score_row(_ex(None, task="open"), "anything") is None  # judged row without a judge: unscored


def test_cli_scorer_flag_and_report_names_scorers(tiny_world, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(Path(tiny_world["manifest"]).parent, data)
    manifest = data / "manifest.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows = [r | {"task": "qa", "answer": "cat"} for r in rows]
    rows[0]["scorer"] = "exact"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    assert main(["eval", "--student", tiny_world["student"], "--manifest", str(manifest), "--output", str(out),
                 "--max_new_tokens", "3", "--no-progress", "--scorer", "contains", "--limit", "5"]) == 0  # fmt: skip
    rep = json.loads(out.read_text())
    b = rep["benchmarks"]["data"]
    assert b["n"] == 5 and b["runs"]["student_T"]["scorers"] == {"contains": 4, "exact": 1}
    assert rep["settings"]["scorer"] == "contains"
    assert "- `data`: contains (4 rows), exact (1 rows)" in out.with_suffix(".md").read_text()
