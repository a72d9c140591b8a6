"""benchmarks/gap_by_kind.py: a report's dS split into readable and unreadable question kinds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "gap_by_kind", Path(__file__).resolve().parents[3] / "benchmarks" / "gap_by_kind.py")
gap_by_kind = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gap_by_kind)


def _report() -> dict:
    # reasoning: 4 birds + 6 fruit questions; instruct: 5 reverse + 5 count; teacher right on all but 1 fruit
    return {
        "teacher_by_split": {"test": {"reasoning": {"T": 0.9}, "instruct": {"T": 1.0}}},
        "teacher_per_kind": {"test": {"reasoning/birds": {"acc": 1.0, "n": 4}, "reasoning/fruit": {"acc": 5 / 6, "n": 6},
                                      "instruct/reverse": {"acc": 1.0, "n": 5}, "instruct/count": {"acc": 1.0, "n": 5}}},
        "models": {"m": {"test": {"per_kind": {
            "reasoning/birds": {"S": 0.5, "n": 4}, "reasoning/fruit": {"S": 0.5, "n": 6},
            "instruct/reverse": {"S": 0.0, "n": 5}, "instruct/count": {"S": 0.8, "n": 5}}}}},
    }


def test_ds_points_by_hand_and_parts_add_up():
    rep = _report()
    # birds: lost 2 of 10 reasoning questions, over the teacher's 0.9, half-weighted over the 2 benchmarks
    assert abs(gap_by_kind.ds_points(rep, "test", "m", {"reasoning/birds"}) - 100 * (0.2 / 0.9) / 2) < 1e-12
    # reverse: lost 5 of 10 instruct questions (teacher 1.0)
    assert abs(gap_by_kind.ds_points(rep, "test", "m", {"instruct/reverse"}) - 100 * 0.5 / 2) < 1e-12
    everything = {"reasoning/birds", "reasoning/fruit", "instruct/reverse", "instruct/count"}
    # the whole split: reasoning (0.9 - 0.5) / 0.9, instruct (1.0 - 0.4) / 1.0, the report's Avg. Drop
    assert abs(gap_by_kind.ds_points(rep, "test", "m", everything) - 100 * ((0.4 / 0.9) + 0.6) / 2) < 1e-12
    assert gap_by_kind.ds_points(rep, "test", "m", set()) == 0.0


def test_a_reproduce_report_is_read_through_its_means():
    demo = _report()
    kinds = demo["models"]["m"]["test"]["per_kind"]
    rep = {"teacher": demo["teacher_by_split"], "teacher_per_kind": demo["teacher_per_kind"],
           "rows": {"m": {"test": {"avg_drop_S": {"mean": 12.0, "std": 1.0},
                                   "per_kind": {k: {"S": {"mean": v["S"], "std": 0.1}, "T": {"mean": 1.0, "std": 0.0},
                                                    "n": v["n"]} for k, v in kinds.items()}}}}}
    shaped = gap_by_kind.demo_shaped(rep)
    assert shaped["models"]["m"]["test"]["avg_drop_S"] == 12.0
    for k in kinds:
        assert gap_by_kind.ds_points(shaped, "test", "m", {k}) == gap_by_kind.ds_points(demo, "test", "m", {k})
    assert gap_by_kind.demo_shaped(demo) is demo
