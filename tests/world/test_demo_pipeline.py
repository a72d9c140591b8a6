"""The demo pipeline at a tiny scale: every stage runs and report.json has the promised shape."""

from __future__ import annotations

import json

import pytest

from xopd.cli import main


@pytest.mark.timeout(900)
def test_quick_demo_report_schema(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out), "--threads", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["teacher"]) == {"reasoning", "instruct"}
    for bench in ("reasoning", "instruct"):
        assert 0.0 <= rep["teacher"][bench]["T"] <= 1.0
    for name in ("student_base", "xopd"):
        for split in ("test", "heldout"):
            r = rep["models"][name][split]
            for bench in ("reasoning", "instruct"):
                assert 0.0 <= r[bench]["S"] <= 1.0 and 0.0 <= r[bench]["T"] <= 1.0
            for key in ("avg_drop_S", "avg_drop_T", "audio_only_acc", "asr_wer"):
                assert key in r
    assert set(rep["stage_seconds"]) == {"data", "teacher", "stage1", "xopd", "eval"}
    assert rep["seconds"] > 0 and rep["peak_rss_mb"] > 0
    assert (out / "report.md").read_text().startswith("# xopd demo")
    assert (out / "gap.png").stat().st_size > 1000
    # a second run reuses every cached stage: no stage marker or checkpoint is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("**/checkpoint-*")}
    assert len(stamps) == 3 and ckpts
    assert main(["demo", "--quick", "--output_dir", str(out), "--threads", "1"]) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["teacher_training"]["cached"] is True
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/checkpoint-*")} == ckpts
