"""The mini world's evaluation helpers: per-item scores and accuracy over a subset of questions."""

from __future__ import annotations

from xopd.data.manifest import Example
from xopd.eval.generation import avg_drop
from xopd.lab.world.evaluate import item_kind, item_scores, per_kind, subset_accuracy


def _ex(i: int, task: str, answer: str) -> Example:
    return Example(id=f"q{i}", text=f"question {i}", task=task, answer=answer)


def test_item_scores_and_subset_accuracy_by_hand():
    exs = [_ex(0, "reasoning", "7"), _ex(1, "reasoning", "3"), _ex(2, "reasoning", "5"), _ex(3, "instruct", "dog")]
    scores = item_scores(exs, ["The answer is 7", "The answer is 4", "The answer is 5", "dog"])
    assert scores == [1.0, 0.0, 1.0, 1.0]
    # q1 (wrong) is left out: reasoning 2/2; q3 left out: no instruct entry at all
    assert subset_accuracy(exs, scores, {"q0", "q1", "q2"}) == {"reasoning": 2 / 3}
    assert subset_accuracy(exs, scores, {"q0", "q2", "q3"}) == {"reasoning": 1.0, "instruct": 1.0}
    assert subset_accuracy(exs, scores, set()) == {}
    # the heard-right Avg. Drop is the usual one on the subset's accuracies
    base = subset_accuracy(exs, [1.0, 1.0, 1.0, 1.0], {"q0", "q1", "q2", "q3"})
    sub = subset_accuracy(exs, scores, {"q0", "q1", "q2", "q3"})
    assert abs(avg_drop(base, sub, ["reasoning", "instruct"]) - 100.0 / 6) < 1e-12  # (1/3 + 0) / 2


def test_item_kind_and_per_kind_by_hand():
    exs = [
        Example(id="a", text="x", task="instruct", answer="1", meta={"template": "instruct/reverse/s0"}),
        Example(id="b", text="x", task="instruct", answer="1", meta={"template": "instruct/reverse/s1"}),
        Example(id="c", text="x", task="reasoning", answer="1", meta={"template": "reasoning/birds"}),
        Example(id="d", text="x", task="instruct", answer="1"),  # a user's row: no template -> its task
    ]
    assert [item_kind(e) for e in exs] == ["instruct/reverse", "instruct/reverse", "reasoning/birds", "instruct"]
    assert per_kind(exs, [1.0, 0.0, 1.0, 0.0]) == {
        "instruct": {"acc": 0.0, "n": 1},
        "instruct/reverse": {"acc": 0.5, "n": 2},
        "reasoning/birds": {"acc": 1.0, "n": 1},
    }
    assert per_kind([], []) == {}
