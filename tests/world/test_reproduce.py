"""`xopd reproduce --quick`: every stage runs and report.json has the promised shape."""

from __future__ import annotations

import json

import pytest

from xopd.cli import main


@pytest.mark.timeout(900)
def test_quick_reproduce_report_schema(tmp_path):
    out, world = tmp_path / "rep", tmp_path / "world"
    assert main(["reproduce", "--quick", "--output_dir", str(out), "--world_dir", str(world), "--threads", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["seeds"] == [0, 1]
    assert set(rep["rows"]) == {"student_base", "sft", "xopd_l05"}
    for row in ("sft", "xopd_l05"):
        for split in ("test", "heldout"):
            r = rep["rows"][row][split]
            for key in ("avg_drop_S", "avg_drop_T", "audio_only_acc", "asr_wer"):
                assert set(r[key]) == {"mean", "std"}
            for bench in ("reasoning", "instruct"):
                assert set(r[bench]) == {"S", "T"} and set(r[bench]["S"]) == {"mean", "std"}
        assert rep["cost"][row]["tokens"]["mean"] > 0
        assert "chosen_lr" in rep["lr_sweep"][row]
    assert (out / "report.md").is_file() and (out / "avg_drop.png").is_file()
