"""Scorers: answer extraction, grade parsing, and the HTTP judge against a local (loopback) server."""

from __future__ import annotations

import pytest

from xopd.data.manifest import Example
from xopd.eval.judge import (
    Judge,
    JudgeError,
    contains_answer,
    extract_and_match,
    last_number,
    parse_grade,
    row_metric,
    score_row,
)

from .chat_stub import ChatStub, chat_reply


class JudgeServer(ChatStub):
    """The judge's stub server.

    The grade is the number of words of the response (capped at 10), so tests know it in advance;
    ``fail_first`` answers HTTP 503 that many times first (retry); ``status`` forces an error code.
    """

    def __init__(self, fail_first: int = 0, status: int | None = None, reply: str | None = None) -> None:
        self.fail_first, self.status, self.reply = fail_first, status, reply
        super().__init__(self._respond)

    def _respond(self, body: dict) -> tuple[int, dict]:
        if self.status or self.fail_first > 0:
            self.fail_first -= 1
            return self.status or 503, {"error": "busy"}
        response = body["messages"][-1]["content"].split("Response:\n", 1)[1]
        grade = min(10, len(response.split()))
        return 200, chat_reply(self.reply if self.reply is not None else f"Reasoning...\nSCORE: {grade}")


def test_answer_extraction_and_numbers() -> None:
    assert last_number("2 + 3 = 5.") == 5.0
    assert last_number("she has twelve apples now") == 12.0
    assert last_number("1,200 then -3.5") == -3.5
    assert last_number("no numbers") is None
    assert extract_and_match("Tom has 7 + 5 = 12 pens now.", "12") == 1.0
    assert extract_and_match("Tom has 7 + 5 = 13 pens now.", "12") == 0.0
    assert extract_and_match("Some work. The answer is 12. Then 99 more words", "12") == 1.0
    assert extract_and_match("The answer is twelve.", "12") == 1.0
    assert extract_and_match("  Paris. ", "paris") == 1.0
    assert extract_and_match("It is Paris, France", "paris") == 0.0


def test_contains_match_for_sentence_answers() -> None:
    ex = Example(
        id="c", text="What is the capital of France?", task="qa", answer="Paris", meta={"match": "contains"}
    )
    assert score_row(ex, "The capital of France is Paris.") == 1.0
    assert score_row(ex, "It is Parisian.") == 0.0
    assert contains_answer("There are seven days in a week.", "7") == 1.0
    assert contains_answer("There are 7 days.", "seven") == 1.0
    assert contains_answer("anything", "") == 0.0


def test_parse_grade() -> None:
    assert parse_grade("blah\nSCORE: 7") == 0.7
    assert parse_grade("score=3 then SCORE: 10") == 1.0
    assert parse_grade("8") == 0.8
    with pytest.raises(JudgeError, match="no 'SCORE: N'"):
        parse_grade("I like it")
    with pytest.raises(JudgeError, match="outside 0-10"):
        parse_grade("SCORE: 11")


def test_row_metric_and_scoring_without_judge() -> None:
    asr = Example(id="a", text="hello there", task="asr", answer="hello there")
    open_ = Example(id="o", text="Tell me a story", task="open")
    rubric = Example(id="r", text="Explain X", meta={"rubric": "mentions Y"})
    world = Example(id="w", text="What is 2 plus 3?", task="reasoning", answer="5")
    other = Example(id="x", text="What is 2 plus 3?", task="math", answer="5")
    assert [row_metric(e.task, e.meta) for e in (asr, open_, rubric, world)] == [
        "wer",
        "judge",
        "judge",
        "accuracy",
    ]
    assert (
        score_row(asr, "hello") is None
        and score_row(open_, "once") is None
        and score_row(rubric, "y") is None
    )
    assert score_row(world, "2 plus 3 is 5. The answer is 5.") == 1.0
    # issue 15: a numeric answer is found as the last number (GSM8K-style), whatever the task; the mini
    # world's phrase-only rule stays available as the "world" scorer
    assert score_row(world, "5") == 1.0 and score_row(world, "2 + 3 = 5") == 1.0
    assert score_row(world, "5", scorer="world") == 0.0
    assert score_row(other, "2 + 3 = 5") == 1.0


def test_judge_over_http_grades_sends_key_and_retries() -> None:
    with JudgeServer(fail_first=1) as srv:
        judge = Judge(srv.url, "grader", api_key="k123", retries=2)
        assert judge.url.endswith("/v1/chat/completions")
        ex = Example(id="r", text="Explain X", answer="ref", meta={"rubric": "mentions Y"})
        assert score_row(ex, "one two three", judge) == pytest.approx(0.3)
        assert len(srv.requests) == 2  # 503 first, then the grade
        body = srv.requests[-1]
        assert body["model"] == "grader" and body["temperature"] == 0
        assert "Rubric:\nmentions Y" in body["messages"][-1]["content"]
        assert "Reference answer:\nref" in body["messages"][-1]["content"]
        assert srv.headers[-1]["Authorization"] == "Bearer k123"


def test_judge_errors_are_one_line() -> None:
    with JudgeServer(status=400) as srv:
        with pytest.raises(JudgeError, match="HTTP 400"):
            Judge(srv.url, "m", retries=0).grade("q", "r")
    with JudgeServer(reply="no grade here") as srv:
        with pytest.raises(JudgeError, match="no 'SCORE: N'"):
            Judge(srv.url, "m").grade("q", "r")
    with JudgeServer() as srv:
        dead = srv.url
    with pytest.raises(JudgeError, match="cannot reach judge"):
        Judge(dead, "m", retries=0, timeout=2).grade("q", "r")
    with pytest.raises(JudgeError, match="http"):
        Judge("ftp://x", "m")
