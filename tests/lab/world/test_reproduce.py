"""`xopd reproduce --quick`: every stage runs and report.json has the promised shape."""

from __future__ import annotations

import json

import pytest

from xopd.cli import main


@pytest.mark.timeout(900)
def test_quick_reproduce_report_schema(tmp_path, monkeypatch):
    import xopd.lab.world.evaluate as ev

    calls = {"load_teacher": 0, "hear_examples": 0}

    def counted(name):
        real = getattr(ev, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        monkeypatch.setattr(ev, name, wrapper)

    counted("load_teacher")
    counted("hear_examples")
    out, world = tmp_path / "rep", tmp_path / "world"
    assert main(["reproduce", "--quick", "--output_dir", str(out), "--world_dir", str(world), "--threads", "1"]) == 0
    # nine students evaluated (base + 4 rows x 2 seeds); the teacher's answers and the front end's hearing
    # of test and held-out once (the world's stages ran in processes of their own, unseen by the counters)
    assert calls == {"load_teacher": 1, "hear_examples": 2}
    rep = json.loads((out / "report.json").read_text())
    assert rep["seeds"] == [0, 1]
    assert set(rep["rows"]) == {"student_base", "sft", "sft_teacher_style", "xopd_l05", "sft_equal_compute"}
    for row in ("sft", "xopd_l05"):
        for split in ("test", "heldout"):
            r = rep["rows"][row][split]
            for key in ("avg_drop_S", "avg_drop_T", "audio_only_acc", "asr_wer", "heard_right_avg_drop_S"):
                assert set(r[key]) == {"mean", "std"}
            for bench in ("reasoning", "instruct"):
                assert set(r[bench]) == {"S", "T"} and set(r[bench]["S"]) == {"mean", "std"}
            # kinds partition the benchmarks: their question counts add up to the split's questions
            assert set(r["per_kind"]) == set(rep["teacher_per_kind"][split])
            assert sum(k["n"] for k in r["per_kind"].values()) == sum(
                k["n"] for k in rep["teacher_per_kind"][split].values())
        assert rep["cost"][row]["tokens"]["mean"] > 0
        assert "chosen_lr" in rep["lr_sweep"][row]
    assert (out / "report.md").is_file() and (out / "avg_drop.png").is_file()
    assert set(rep["paired_vs_xopd_l05"]) == {"student_base", "sft", "sft_teacher_style", "sft_equal_compute"}
    assert set(rep["paired_vs_xopd_l05"]["sft"]["test"]["avg_drop_S"]) == {"mean", "std", "n", "sep"}
    assert "dS - xopd_l05 (seed-paired)" in (out / "report.md").read_text()
    assert "dS heard right %" in (out / "report.md").read_text()
    assert "Where the gap is: accuracy per question kind — Test" in (out / "report.md").read_text()
    assert set(rep["cascade"]) == set(rep["hearing"]) == {"test", "heldout"}
    assert rep["peak_rss_mb"] > 0
    eq = rep["equal_compute"]  # SFT for as many steps as xopd_l05's training time buys
    assert eq["row"] == "sft_equal_compute" and eq["steps"] == 2 * max(1, round(eq["time_ratio"]))


def test_paired_differences_hand_values():
    from xopd.lab.world.reproduce import paired_differences

    def run(ds: float) -> dict:
        return {"test": {"avg_drop_S": ds, "avg_drop_T": 1.0}}

    per_row = {"student_base": [run(20.0)], "sft": [run(12.0), run(15.0), run(9.0)],
               "xopd_l05": [run(5.0), run(6.0), run(4.0)]}
    out = paired_differences(per_row)
    sft = out["sft"]["test"]["avg_drop_S"]  # differences 7, 9, 5: mean 7, sample std 2
    assert (sft["mean"], sft["std"], sft["n"], sft["sep"]) == (7.0, 2.0, 3, 3.5)
    base = out["student_base"]["test"]["avg_drop_S"]  # one run paired with each seed: 15, 14, 16
    assert (base["mean"], base["std"], base["n"]) == (15.0, 1.0, 3)
    assert out["sft"]["test"]["avg_drop_T"]["sep"] == 0.0  # identical everywhere: no difference
    assert "xopd_l05" not in out and "heldout" not in out["sft"]


def test_paired_differences_float_noise_is_no_spread():
    """Seeds that differ by the same amount up to rounding (measured: 17.333333333333336 - 16.333333333333332
    and the like) have a std of ~1e-15; that is no spread (sep inf), not a separation of 1e15 sd."""
    from xopd.lab.world.reproduce import paired_differences

    def run(ds: float) -> dict:
        return {"heldout": {"avg_drop_S": ds, "avg_drop_T": 1.0}}

    per_row = {"xopd_l1": [run(17.333333333333336), run(18.0), run(16.666666666666668)],
               "xopd_l05": [run(16.333333333333332), run(17.0), run(15.666666666666666)]}
    d = paired_differences(per_row)["xopd_l1"]["heldout"]["avg_drop_S"]
    assert 0 < d["std"] < 1e-12 and d["sep"] == float("inf")


def test_own_style_references_keep_the_answer_and_change_the_wording():
    from xopd.lab.world.reproduce import own_style
    from xopd.lab.world.tokenizer import build_world_tokenizer
    from xopd.metrics import extract_answer

    teacher = "12 plus 5 is 17. 17 minus 3 is 14. The answer is 14."
    mine = own_style(teacher)
    assert mine == "There are 12. 5 more is 17. 3 away is 14. The answer is 14."
    assert extract_answer(mine) == extract_answer(teacher) == "14"
    assert own_style("cat, dog, sun") == "cat, dog, sun"  # instruct answers are bare: nothing to restyle
    tok = build_world_tokenizer()  # every word is one the mini world's LM can say (no <unk>)
    assert tok.unk_token_id not in tok(mine)["input_ids"]


def test_aggregate_runs_per_kind_hand_values():
    """Per-kind accuracy is averaged over seeds like every other metric (sample std)."""
    from xopd.lab.world.reproduce import aggregate_runs

    def run(s_rev: float, s_birds: float) -> dict:
        return {"test": {"avg_drop_S": 1.0, "per_kind": {
            "instruct/reverse": {"S": s_rev, "T": 1.0, "n": 17}, "reasoning/birds": {"S": s_birds, "T": 0.9, "n": 22}}}}

    agg = aggregate_runs([run(0.0, 0.5), run(0.5, 1.0)])["test"]["per_kind"]
    assert agg["instruct/reverse"] == {"S": {"mean": 0.25, "std": 0.125 ** 0.5},
                                       "T": {"mean": 1.0, "std": 0.0}, "n": 17}
    assert agg["reasoning/birds"]["S"]["mean"] == 0.75
    assert "per_kind" not in aggregate_runs([{"test": {"avg_drop_S": 1.0}}])["test"]
