"""The demo report's Markdown: the per-kind table (where a model's dS comes from)."""

from __future__ import annotations

from xopd.lab.world.report import per_kind_md


def _report(with_cascade: bool = True) -> dict:
    rep = {
        "teacher_per_kind": {"test": {"instruct/reverse": {"acc": 1.0, "n": 17}, "reasoning/birds": {"acc": 0.95, "n": 20}}},
        "models": {
            "student_base": {"test": {"per_kind": {"instruct/reverse": {"S": 0.0588, "T": 1.0, "n": 17},
                                                   "reasoning/birds": {"S": 0.85, "T": 0.9, "n": 20}}}},
            "xopd": {"test": {"per_kind": {"instruct/reverse": {"S": 0.0, "T": 1.0, "n": 17},
                                           "reasoning/birds": {"S": 0.9, "T": 0.95, "n": 20}}}},
        },
    }
    if with_cascade:
        rep["cascade"] = {"test": {"per_kind": {"instruct/reverse": {"reference": 0.0588, "front_end": 0.0, "n": 17},
                                                "reasoning/birds": {"reference": 1.0, "front_end": 0.95, "n": 20}}}}
    return rep


def test_per_kind_md_rows_by_hand():
    assert per_kind_md(_report(), "test").splitlines() == [
        "| kind | n | teacher T | cascade reference | student_base S | xopd S |",
        "|---|---|---|---|---|---|",
        "| instruct/reverse | 17 | 100.0 |   5.9 |   5.9 |   0.0 |",
        "| reasoning/birds | 20 |  95.0 | 100.0 |  85.0 |  90.0 |",
    ]


def test_per_kind_md_without_cascade_or_scores():
    assert per_kind_md(_report(with_cascade=False), "test").splitlines()[0] == (
        "| kind | n | teacher T | student_base S | xopd S |")
    assert per_kind_md(_report(), "heldout") == ""  # no per-kind scores for that split
    assert per_kind_md({"models": {}}, "test") == ""


def test_per_kind_md_of_a_reproduce_report_prints_mean_and_std():
    rep = {
        "teacher_per_kind": {"test": {"instruct/reverse": {"acc": 1.0, "n": 17}}},
        "rows": {"sft": {"test": {"per_kind": {"instruct/reverse": {"S": {"mean": 0.25, "std": 0.125}, "n": 17}}}}},
    }
    assert per_kind_md(rep, "test", models_key="rows").splitlines()[2] == "| instruct/reverse | 17 | 100.0 | 25.0 ± 12.5 |"
