"""Tokenizer alignment between student and teacher, and the run-time response-length guard."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from xopd.errors import AlignmentError
from xopd.lab.tiny import DEFAULT_WORDS, build_tiny_tokenizer
from xopd.models.alignment import assert_same_response_length, check_tokenizer_alignment


@pytest.fixture(scope="module")
def toks(tiny_teacher_dir, tiny_student_dir):
    return AutoTokenizer.from_pretrained(tiny_student_dir), AutoTokenizer.from_pretrained(tiny_teacher_dir)


def test_tiny_student_and_teacher_are_aligned(toks):
    s, t = toks
    rep = check_tokenizer_alignment(s, t, len(s), len(t))
    assert rep.shared_vocab_size == len(s) == len(t)
    assert rep.student_eos_id == rep.teacher_eos_id == s.eos_token_id
    assert rep.n_tokens_compared == len(s) - len(s.get_added_vocab())
    assert rep.n_probes > 50 and not rep.special_mismatches
    assert "aligned" in rep.summary()


def test_padding_rows_are_fine_and_shared_size_is_the_minimum(toks):
    s, t = toks
    rep = check_tokenizer_alignment(s, t, 640, len(t))  # student output layer padded to 640 rows
    assert rep.shared_vocab_size == len(t)
    rep = check_tokenizer_alignment(s, t, 151936, 152064, probe_texts=["what is 2 plus 3?"])
    assert rep.shared_vocab_size == 151936 and rep.n_probes == 2  # probe + eos


def test_mismatched_tokenizer_names_string_and_ids(toks):
    s, _ = toks
    other = build_tiny_tokenizer(list(reversed(DEFAULT_WORDS)) + ["zebra", "quantum"], vocab_size=400)
    with pytest.raises(AlignmentError) as e:
        check_tokenizer_alignment(s, other, len(s), len(other))
    msg = str(e.value)
    assert "disagree on" in msg and "student" in msg and "teacher" in msg and "ids" in msg


def test_eos_mismatch_and_tokens_beyond_teacher_rows(toks):
    s, t = toks
    t2 = build_tiny_tokenizer()
    t2.eos_token = "<|pad|>"
    with pytest.raises(AlignmentError, match="eos ids differ"):
        check_tokenizer_alignment(s, t2, len(s), len(t2))
    with pytest.raises(AlignmentError, match="output layer has only"):
        check_tokenizer_alignment(s, t, len(s), len(t) - 10, probe_texts=[])


def test_differing_special_tokens_are_reported_not_fatal(toks):
    s, _ = toks
    t = build_tiny_tokenizer()
    t.add_tokens(["<|tool_call|>"], special_tokens=True)  # a teacher-only special token
    rep = check_tokenizer_alignment(s, t, len(s), len(t))
    assert any("<|tool_call|>" in m for m in rep.special_mismatches)


def test_assert_same_response_length():
    assert_same_response_length(torch.zeros(2, 5), torch.zeros(2, 5, 7))
    assert_same_response_length(3, [1, 2, 3])
    with pytest.raises(AlignmentError, match="different response lengths"):
        assert_same_response_length(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(AlignmentError, match="policy"):
        assert_same_response_length(torch.zeros(4), torch.zeros(5), names=("policy", "teacher"))
