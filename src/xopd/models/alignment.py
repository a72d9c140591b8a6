"""Student/teacher token alignment: the precondition of scoring a student's tokens with a teacher.

X-OPD feeds the student's sampled response *ids* to the teacher unchanged. That is only meaningful
if id ``i`` is the same string to both tokenizers, and if both stop on the same eos. Mismatches are
the most common silent failure in on-policy distillation (TRL, verl and ms-swift issue trackers):
the loss still runs, it just distils noise. So this check runs before training and fails loudly.

Vocabulary *size* differences are usually padding rows of the output layer (Qwen2: 151936 vs
152064) and are fine: only ``min(rows)`` ids can be scored by both, reported as
``shared_vocab_size``; sampling must stay below it (rollout masks the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xopd.errors import AlignmentError

DEFAULT_PROBES = (
    [str(d) for d in range(10)]
    + ["10", "42", "123", "2026", "3.14", "-7", "1,000"]
    + [
        "the",
        " the",
        "The",
        "a",
        " and",
        " is",
        " of",
        "what",
        " What",
        "Hello",
        " hello world",
        "yes",
        " no",
        "answer",
        "The answer is 12.",
        "What is 3 plus 4?",
        "Step 1: add the numbers.",
        "repeat after me",
        "red green blue",
        "I don't know.",
        "Let's think step by step.",
    ]
    + list(".,!?;:'\"()[]-+*/=%$#@&")
    + [" ", "  ", "\n", "\n\n", "\t"]
)


@dataclass
class AlignmentReport:
    """What was checked and what the trainer must respect (``shared_vocab_size``)."""

    shared_vocab_size: int
    student_vocab_rows: int
    teacher_vocab_rows: int
    student_len: int
    teacher_len: int
    student_eos_id: int | None
    teacher_eos_id: int | None
    n_probes: int
    n_tokens_compared: int
    special_mismatches: list[str] = field(default_factory=list)
    student_only_special_ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        s = (
            f"tokenizers aligned: {self.n_tokens_compared} vocab entries and {self.n_probes} probe strings "
            f"agree, eos {self.student_eos_id}; shared vocab {self.shared_vocab_size} "
            f"(student rows {self.student_vocab_rows}, teacher rows {self.teacher_vocab_rows})"
        )
        if self.special_mismatches:
            s += f"; {len(self.special_mismatches)} special tokens differ (ignored): {self.special_mismatches[:5]}"
        return s


def _name(tok) -> str:
    return repr(getattr(tok, "name_or_path", None) or type(tok).__name__)


def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _special_tokens(tok) -> set[str]:
    """Added tokens (chat markers, audio placeholders...): never part of a sensible response."""
    added = set(tok.get_added_vocab()) if hasattr(tok, "get_added_vocab") else set()
    return added | set(getattr(tok, "all_special_tokens", []) or [])


def check_tokenizer_alignment(
    student_tok,
    teacher_tok,
    student_vocab_rows: int,
    teacher_vocab_rows: int,
    probe_texts: Sequence[str] | None = None,
) -> AlignmentReport:
    """Raise :class:`AlignmentError` unless the two tokenizers agree on the response vocabulary.

    Checks, in order: (1) every probe string (default: digits, numbers, common words, punctuation,
    whitespace, the eos token, and 256 decoded student vocab entries) encodes to the same ids;
    (2) every regular (non-added) token shared by id range has the same id in both vocabularies;
    (3) the student's eos is the teacher's eos; (4) no regular student token lies beyond the
    teacher's output rows. Special/added tokens that differ are reported, not fatal.
    """
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    s_special, t_special = _special_tokens(student_tok), _special_tokens(teacher_tok)
    shared = int(min(student_vocab_rows, teacher_vocab_rows))
    s_eos, t_eos = _check_eos(student_tok, teacher_tok)  # first: a wrong stop token corrupts every rollout
    regular = sorted(i for tkn, i in s_vocab.items() if tkn not in s_special and i < shared)
    n_probes = _check_probes(student_tok, teacher_tok, probe_texts, regular)
    compared = _check_vocab(student_tok, s_vocab, t_vocab, s_special, teacher_vocab_rows)
    special_mismatches = sorted(
        f"{tkn}: student {i} / teacher {t_vocab.get(tkn)}"
        for tkn, i in s_vocab.items()
        if tkn in s_special and t_vocab.get(tkn) != i
    )
    special_mismatches += sorted(
        f"{tkn}: student {s_vocab.get(tkn)} / teacher {i}"
        for tkn, i in t_vocab.items()
        if tkn in t_special and tkn not in s_vocab
    )
    beyond = sorted(i for tkn, i in s_vocab.items() if tkn in s_special and i >= shared)
    return AlignmentReport(
        shared_vocab_size=shared,
        student_vocab_rows=int(student_vocab_rows),
        teacher_vocab_rows=int(teacher_vocab_rows),
        student_len=len(student_tok),
        teacher_len=len(teacher_tok),
        student_eos_id=s_eos,
        teacher_eos_id=t_eos,
        n_probes=n_probes,
        n_tokens_compared=compared,
        special_mismatches=special_mismatches,
        student_only_special_ids=beyond,
    )


_FIX = "use a student whose LM shares the teacher's tokenizer, or a teacher of the same family"


def _check_eos(student_tok, teacher_tok) -> tuple[int, int]:
    """Check (3): both have an eos and it is the same id; returns (student eos, teacher eos)."""
    s_eos, t_eos = student_tok.eos_token_id, teacher_tok.eos_token_id
    if s_eos is None or t_eos is None:
        raise AlignmentError(
            f"eos token missing (student {_name(student_tok)} eos={s_eos}, teacher {_name(teacher_tok)} "
            f"eos={t_eos}): set tokenizer.eos_token in both directories"
        )
    if int(s_eos) != int(t_eos):
        raise AlignmentError(
            f"eos ids differ: student {_name(student_tok)} eos {student_tok.eos_token!r}={s_eos}, teacher "
            f"{_name(teacher_tok)} eos {teacher_tok.eos_token!r}={t_eos}; set the same eos_token in both "
            "tokenizer configs (and generation_config.eos_token_id)"
        )
    return int(s_eos), int(t_eos)


def _check_probes(student_tok, teacher_tok, probe_texts: Sequence[str] | None, regular: list[int]) -> int:
    """Check (1), probe strings (catches normalizer / pre-tokenizer / merge differences); returns their count."""
    probes = list(DEFAULT_PROBES if probe_texts is None else probe_texts)
    if student_tok.eos_token:
        probes.append(student_tok.eos_token)
    if probe_texts is None and regular:
        step = max(1, len(regular) // 256)
        probes += [student_tok.decode([i]) for i in regular[::step][:256]]
    for text in probes:
        a, b = _encode(student_tok, text), _encode(teacher_tok, text)
        if a != b:
            raise AlignmentError(
                f"student and teacher tokenizers disagree on {text!r}: student {_name(student_tok)} ids {a} "
                f"vs teacher {_name(teacher_tok)} ids {b}; the teacher cannot score the student's tokens: {_FIX}"
            )
    return len(probes)


def _check_vocab(student_tok, s_vocab: dict, t_vocab: dict, s_special: set[str], teacher_vocab_rows: int) -> int:
    """Checks (2) + (4): the whole regular vocabulary, id by id; returns how many entries were compared."""
    compared = 0
    for tkn, i in sorted(s_vocab.items(), key=lambda kv: kv[1]):
        if tkn in s_special:
            continue
        if i >= teacher_vocab_rows:
            raise AlignmentError(
                f"student token {tkn!r} has id {i} but the teacher's output layer has only "
                f"{teacher_vocab_rows} rows: the teacher cannot score it; {_FIX}"
            )
        j = t_vocab.get(tkn)
        if j != i:
            raise AlignmentError(
                f"student and teacher tokenizers disagree on token {student_tok.convert_tokens_to_string([tkn])!r} "
                f"({tkn!r}): student id {i} vs teacher id {j}; {_FIX}"
            )
        compared += 1
    return compared


def _response_len(x, what: str) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return (int(x),)
        if x.dim() == 1:
            return (int(x.shape[0]),)
        return (int(x.shape[0]), int(x.shape[1]))
    if isinstance(x, int):
        return (x,)
    if isinstance(x, Sequence):
        return (len(x),)
    raise TypeError(f"assert_same_response_length: cannot measure {what} of type {type(x).__name__}")


def assert_same_response_length(a, b, names: tuple[str, str] = ("student", "teacher")) -> None:
    """Fail if two sides scored different numbers of response tokens.

    ``a``/``b``: ``[B, L, ...]`` tensors (log-probs, logits, ids, masks: compares ``(B, L)``),
    ``[L]`` tensors/sequences or ints. Called on every scoring step: a silent off-by-one between the
    teacher's and the student's response positions would shift every advantage by one token.
    """
    la, lb = _response_len(a, names[0]), _response_len(b, names[1])
    if la != lb:
        raise AlignmentError(
            f"{names[0]} and {names[1]} scored different response lengths: {la} vs {lb} "
            "(batch, tokens); both must score exactly the sampled response ids"
        )
