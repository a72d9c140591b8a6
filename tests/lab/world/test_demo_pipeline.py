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
    # the paper's pg loss is the "xopd" row; --xopd_also (default topk_forward_kl) adds its own row
    assert list(rep["models"]) == ["student_base", "xopd", "xopd_topk_forward_kl"]
    for name in rep["models"]:
        for split in ("test", "heldout"):
            r = rep["models"][name][split]
            for bench in ("reasoning", "instruct"):
                assert 0.0 <= r[bench]["S"] <= 1.0 and 0.0 <= r[bench]["T"] <= 1.0
            for key in ("avg_drop_S", "avg_drop_T", "audio_only_acc", "asr_wer"):
                assert key in r
            # the same gap over the questions the front end heard exactly
            assert set(r["heard_right"]) == {"avg_drop_S", "avg_drop_T", "n"} and 0 <= r["heard_right"]["n"] <= 2 * 100
            # per question kind: the kinds partition the benchmark questions, and each benchmark's accuracy
            # is its kinds' accuracies weighted by their counts
            kinds = r["per_kind"]
            assert sum(k["n"] for k in kinds.values()) == sum(t["n"] for t in rep["teacher_per_kind"][split].values())
            for bench in ("reasoning", "instruct"):
                mine = {k: v for k, v in kinds.items() if k.startswith(bench + "/")}
                n = sum(v["n"] for v in mine.values())
                assert abs(sum(v["S"] * v["n"] for v in mine.values()) / n - r[bench]["S"]) < 1e-9
    assert set(rep["stage_seconds"]) == {"data", "encode", "teacher", "hearing", "stage1", "xopd", "eval"}
    for split in ("test", "heldout"):  # what the front end hears, and the cascade on it
        h = rep["hearing"][split]
        assert 0.0 <= h["numbers_right"] <= 1.0 and h["token_error"] >= 0.0
        for bench in ("reasoning", "instruct"):
            assert set(rep["cascade"][split][bench]) == {"front_end", "reference"}
        assert all(set(v) == {"front_end", "reference", "n"} for v in rep["cascade"][split]["per_kind"].values())
    assert rep["seconds"] > 0 and rep["peak_rss_mb"] > 0
    md = (out / "report.md").read_text()
    assert md.startswith("# xopd demo") and "## Where the gap is: accuracy per question kind (test)" in md
    assert (out / "gap.png").stat().st_size > 1000
    # a second run reuses every cached stage: no stage marker or checkpoint is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("**/checkpoint-*")}
    assert len(stamps) == 5 and ckpts
    assert main(["demo", "--quick", "--output_dir", str(out), "--threads", "1"]) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["teacher_training"]["cached"] is True
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/checkpoint-*")} == ckpts


TIMING_KEYS = {"stage_seconds", "seconds", "peak_rss_mb", "peak_rss_mb_after_stage", "config"}


def _without_timings(rep: dict) -> dict:
    rep = {k: v for k, v in rep.items() if k not in TIMING_KEYS}
    rep["teacher_training"] = {k: v for k, v in rep["teacher_training"].items()
                               if k not in ("seconds", "train_seconds", "eval_seconds", "steps_per_s", "tokens_per_s",
                                            "eval_curve", "cached")}
    return rep


@pytest.mark.timeout(900)
def test_two_fresh_quick_demos_give_the_same_report(tmp_path):
    """Reproducibility: the whole pipeline (data, teacher, hearing, stage 1, X-OPD, eval) is seeded, in
    stage processes of its own or not."""
    reports = []
    # the second run keeps every stage in this process: running stages in processes of their own
    # (the default, for memory) must not change a number
    for name, isolate in (("a", "true"), ("b", "false")):
        out = tmp_path / name
        assert main(["demo", "--quick", "--fresh", "--output_dir", str(out), "--threads", "1",
                     "--isolate", isolate]) == 0
        reports.append(_without_timings(json.loads((out / "report.json").read_text())))
    assert reports[0] == reports[1]


def test_xopd_also_is_validated():
    from xopd.errors import ConfigError
    from xopd.lab.world.config import DemoConfig

    assert DemoConfig(xopd_also=" jsd, topk_forward_kl,jsd ,").also_losses() == ["jsd", "topk_forward_kl"]
    assert DemoConfig(xopd_also="").also_losses() == []
    for bad in ("pg", "kl"):  # pg is already the main row; kl is no loss
        with pytest.raises(ConfigError, match="xopd_also"):
            DemoConfig(xopd_also=bad).validate()
