"""Rollout shapes/masks and the identity that makes the importance ratio exact: the log-probs kept
while sampling equal the log-probs of a fresh forward over [prompt | response]."""

from __future__ import annotations

import torch

from xopd.algos.base import make_prompts
from xopd.data.manifest import read_manifest
from xopd.generation import response_logprobs, sample
from xopd.models import load_student, load_teacher


def _setup(tiny_world):
    student = load_student(tiny_world["student"]).eval()
    teacher = load_teacher(tiny_world["teacher"])
    examples, _ = read_manifest(tiny_world["manifest"])
    return student, teacher, examples[:3]


def test_sample_shapes_masks_and_eos(tiny_world):
    student, _, examples = _setup(tiny_world)
    batch = student.embed_prompts(make_prompts(examples, "S"))
    ro = sample(student, batch, n=4, max_new_tokens=12, generator=torch.Generator().manual_seed(0))
    assert ro.ids.shape == ro.mask.shape == ro.logprobs.shape
    assert ro.ids.shape[0] == 12 and ro.ids.shape[1] <= 12
    assert ro.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    eos = set(student.eos_token_ids)
    for r in range(12):
        valid = ro.ids[r][ro.mask[r]].tolist()
        # mask is a prefix; only the last valid token may be EOS; after it only padding
        assert ro.mask[r].tolist() == sorted(ro.mask[r].tolist(), reverse=True)
        assert not any(t in eos for t in valid[:-1])
        if ro.ended[r]:
            assert valid[-1] in eos
        assert (ro.logprobs[r][~ro.mask[r]] == 0).all()
        assert (ro.logprobs[r][ro.mask[r]] <= 0).all()


def test_sampling_logprobs_equal_rescored(tiny_world):
    """pi_old from the KV-cached decode == a full forward's log-probs (ratio exactly 1 at the first update)."""
    student, _, examples = _setup(tiny_world)
    for view in ("S", "T"):
        batch = student.embed_prompts(make_prompts(examples, view))
        ro = sample(student, batch, n=2, max_new_tokens=10, temperature=0.7,
                    generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            lp = response_logprobs(student, batch.repeat_interleave(2), ro.ids, ro.mask, temperature=0.7)
        torch.testing.assert_close(lp, ro.logprobs, atol=2e-5, rtol=1e-4)


def test_sampling_is_reproducible_with_generator(tiny_world):
    student, _, examples = _setup(tiny_world)
    batch = student.embed_prompts(make_prompts(examples, "T"))
    a = sample(student, batch, 2, 8, generator=torch.Generator().manual_seed(5))
    b = sample(student, batch, 2, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.ids, b.ids)


def test_greedy_and_vocab_limit(tiny_world):
    student, _, examples = _setup(tiny_world)
    batch = student.embed_prompts(make_prompts(examples, "T"))
    ro = sample(student, batch, 1, 6, temperature=0.0, vocab_limit=10)
    assert int(ro.ids[ro.mask].max()) < 10 or not bool(ro.mask.any())
    again = sample(student, batch, 1, 6, temperature=0.0, vocab_limit=10)
    assert torch.equal(ro.ids, again.ids)


def test_teacher_scores_same_ids_given_transcript(tiny_world):
    """Teacher view: teacher chat template on T + the student's response ids, one token per position."""
    student, teacher, examples = _setup(tiny_world)
    s_batch = student.embed_prompts(make_prompts(examples, "S"))
    ro = sample(student, s_batch, 2, 8, generator=torch.Generator().manual_seed(2))
    t_batch = teacher.embed_prompts(make_prompts(examples, "T")).repeat_interleave(2)
    with torch.no_grad():
        t_lp = response_logprobs(teacher, t_batch, ro.ids, ro.mask)
    assert t_lp.shape == ro.ids.shape
    # reference: teacher's own input_ids = chat(T) + response ids, scored by a plain forward
    for row in (0, 3):
        ex = examples[int(ro.prompt_index[row])]
        prompt = teacher.chat_ids(ex.text)
        resp = ro.ids[row][ro.mask[row]].tolist()
        ids = torch.tensor([prompt + resp])
        with torch.no_grad():
            logits = teacher.lm(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
        torch.testing.assert_close(t_lp[row][ro.mask[row]], ref, atol=2e-5, rtol=1e-4)
