"""IFEval checks (strict and loose) on hand-written responses."""

from __future__ import annotations

import pytest

from xopd.eval.benchmarks.ifeval import (
    INSTRUCTIONS,
    check_instruction,
    count_sentences,
    ifeval_scores,
    loose_variants,
    word_tokenize,
)

CASES = [
    ("keywords:existence", {"keywords": ["rain", "cloud"]}, "Rain falls from a cloud.", "Rain falls."),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "at least"}, "rain, RAIN", "rain"),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "less than"}, "rain", "rain rain"),
    ("keywords:forbidden_words", {"forbidden_words": ["wet"]}, "It is damp.", "It is WET."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zoo zip", "zoo"),
    ("language:response_language", {"language": "de"}, "Ich habe heute keine Zeit, weil ich arbeiten muss.",
     "I have no time today because I have to work."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith came home. He slept.", "One. Two. Three."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.", "One.\n***\n\n***\nTwo."),
    ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "one two three four", "one two"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First part.\n\n\"Then, second.", "First part.\n\nNext second."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. PS bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b", "* a\n* b\n* c"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1 only"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<Rain>>\ntext", "<< >> text"),
    ("combination:two_responses", {}, "One.\n******\nTwo.", "One.\n******\nOne."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi!"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. Any other questions?"', "Done."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "DON'T go", "Don't GO"),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITAL ENGLISH TEXT.", "This is not."),
    ("change_case:english_lowercase", {}, "this is all lowercase english text.", "This is not."),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
    ("startend:quotation", {}, '"quoted"', '"half'),
]  # fmt: skip


@pytest.mark.parametrize(("inst", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_each_instruction_passes_and_fails(inst: str, kwargs: dict, good: str, bad: str) -> None:
    assert check_instruction(inst, kwargs, good) is True
    assert check_instruction(inst, kwargs, bad) is False


def test_every_registered_instruction_is_tested_and_empty_responses_fail() -> None:
    assert {c[0] for c in CASES} == set(INSTRUCTIONS) and len(INSTRUCTIONS) == 25
    assert check_instruction("punctuation:no_comma", {}, "   ") is False


def test_tokenisers_match_nltk_conventions() -> None:
    assert count_sentences("Dr. Smith went home. It was 3.5 p.m. He slept!") == 3
    assert word_tokenize("DON'T stop. OK?") == ["DO", "N'T", "stop", ".", "OK", "?"]


def test_loose_removes_markdown_and_first_or_last_line() -> None:
    resp = "Sure! Here it is:\n*my answer is yes.*"
    assert len(loose_variants(resp)) == 8
    items = [{"prompt": "p", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}]
    strict_fail = ifeval_scores(items, ['Sure:\n"quoted"'])
    assert strict_fail["strict-prompt"] == 0.0 and strict_fail["loose-prompt"] == 100.0
    assert strict_fail["final"] == 50.0


def test_scores_as_voicebench_aggregates_them() -> None:
    items = [
        {"prompt": "a", "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
         "kwargs": [{"num_words": None}, {}]},
        {"prompt": "b", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    ]  # fmt: skip
    res = ifeval_scores(items, ["<1><<T>> no comma<|user|>", "x, y"])
    assert res["strict-prompt"] == 50.0 and res["strict-instruction"] == pytest.approx(200 / 3)
    # duplicated prompts share the last response, as in VoiceBench's prompt -> response dict
    dup = [{"prompt": "same", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}] * 2
    assert ifeval_scores(dup, ["ok", "a, b"])["strict-prompt"] == 0.0
    with pytest.raises(KeyError):
        ifeval_scores([{"prompt": "c", "instruction_id_list": ["no:such"], "kwargs": [{}]}], ["x"])
