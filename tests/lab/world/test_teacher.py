"""The mini world's word-level tokenizer (coverage, round trip, chat template) and teacher training."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from xopd.lab.world.tasks import SPLITS, TASKS, generate_items  # noqa: E402
from xopd.lab.world.teacher import MARKER, _lr_factor, ensure_teacher, train_teacher  # noqa: E402
from xopd.lab.world.tokenizer import SPECIAL_TOKENS, build_world_tokenizer  # noqa: E402
from xopd.metrics import normalize_text, score_item  # noqa: E402
from xopd.models.base import render_chat_ids  # noqa: E402
from xopd.models.text_lm import load_teacher  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return build_world_tokenizer()


def _ids(tok, s: str) -> list[int]:
    return tok(s, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("split", SPLITS)
def test_no_unknown_token_on_any_split(tok, split):
    # seed 1: the tokenizer's safety-net sample uses seed 0, so coverage here comes from the corpus
    for task in TASKS:
        for it in generate_items(task, split, 150, seed=1, unique=False):
            for field in ("text", "speak", "reference", "answer"):
                ids = _ids(tok, getattr(it, field))
                assert ids and tok.unk_token_id not in ids, (split, task, field, getattr(it, field))


def test_round_trip_scores_as_the_answer(tok):
    for split in ("test", "unseen_template"):
        for task in TASKS:
            for it in generate_items(task, split, 40, seed=2):
                back = tok.decode(_ids(tok, it.reference))
                if task == "asr":
                    assert normalize_text(back) == normalize_text(it.reference)
                else:
                    assert score_item(task, back, it.answer) == 1.0, (it.reference, back)


def test_numbers_letters_and_decoding(tok):
    for n in range(101):
        assert len(_ids(tok, str(n))) == 1
    assert _ids(tok, "c a t") == [tok.convert_tokens_to_ids(c) for c in "cat"]
    s = "Tom has 5 apples, 3 pears: how many? 5 plus 3 is 8. The answer is 8."
    assert tok.decode(_ids(tok, s)) == s.lower()  # lower-case policy, no space before punctuation
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


def test_chat_template(tok, tmp_path):
    ids = render_chat_ids(tok, "Repeat the word box.")
    assert tok.convert_ids_to_tokens(ids) == ["<|user|>", "repeat", "the", "word", "box", ".", "<|assistant|>"]
    turn = [{"role": "user", "content": "Repeat cat 2 times."}, {"role": "assistant", "content": "cat cat"}]
    text = tok.apply_chat_template(turn, tokenize=False)
    assert _ids(tok, text)[-1] == tok.eos_token_id
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path)
    assert render_chat_ids(back, "Repeat the word box.") == ids and len(back) == len(tok)


def test_lr_schedule_closed_form():
    assert _lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert _lr_factor(0.0, 9, 10) == pytest.approx(1.0)
    assert _lr_factor(0.5, 50, 10) == pytest.approx(0.05 + 0.95 * 0.5)
    assert _lr_factor(1.0, 99, 10) == pytest.approx(0.05)


SMALL = dict(d_model=32, layers=1, heads=2, ffn=64, lr=1e-2, warmup=3, max_steps=20, eval_every=10, eval_n=3,
             final_n=3, threads=1, progress=False)  # fmt: skip


def test_train_save_load_and_cache(tmp_path):
    out = tmp_path / "teacher"
    rep = train_teacher(out, minutes_budget=2.0, **SMALL)
    for key in ("accuracy", "per_kind", "steps", "seconds", "tokens", "steps_per_s", "eval_curve", "stopped"):
        assert key in rep
    assert rep["steps"] == 20 and rep["stopped"] == "max_steps" and rep["tokens"] > 0
    assert set(rep["accuracy"]) == {"reasoning", "instruct"} and len(rep["eval_curve"]) == 2
    assert rep["final_loss"] < rep["first_loss"]
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # no temp folder left behind
    assert json.loads((out / MARKER).read_text())["report"]["steps"] == 20

    teacher = load_teacher(out)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.eos_token_ids == [teacher.tokenizer.eos_token_id] and teacher.pad_token_id == 0
    assert teacher.vocab_size == len(teacher.tokenizer)
    ids = torch.tensor([render_chat_ids(teacher.tokenizer, "Spell the word cat.")])
    assert teacher.causal_lm()(input_ids=ids).logits.shape == (1, ids.shape[1], len(teacher.tokenizer))

    again = ensure_teacher(out, minutes_budget=2.0, **SMALL)
    assert again["cached"] is True and again["steps"] == 20
    other = ensure_teacher(out, minutes_budget=2.0, **{**SMALL, "max_steps": 4, "eval_every": 0})
    assert other["cached"] is False and other["steps"] == 4


def test_teacher_trains_through_the_core_trainer_bit_for_bit(tmp_path):
    """The teacher's run through the core Trainer equals the plain loop of its recipe, weight for weight:
    AdamW (0.9, 0.98, wd 0.01), warm-up + cosine to 5 %, two length-sorted micro-batches whose summed
    NLL is divided by the whole batch's response tokens, clip 1.0."""
    from xopd.lab.world.teacher import build_model
    from xopd.lab.world.teacher_stream import TeacherStream
    from xopd.losses import sft_cross_entropy

    kw = {**SMALL, "max_steps": 6, "eval_every": 0, "unpunctuated_frac": 0.3, "seed": 3}
    rep = train_teacher(tmp_path / "teacher", minutes_budget=5.0, **kw)
    tok = build_world_tokenizer()
    lm = build_model(tok, kw["d_model"], kw["layers"], kw["heads"], kw["ffn"], seed=3)
    opt = torch.optim.AdamW(lm.parameters(), lr=kw["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    stream, losses = TeacherStream(tok, 3, 0.5, unpunctuated_frac=0.3), []
    for step in range(6):
        for g in opt.param_groups:
            g["lr"] = kw["lr"] * _lr_factor(step / 6, step, kw["warmup"])
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for part in stream.batch(16, 2):
            width = max(len(ex.meta["input_ids"]) for ex in part)
            rows = [ex.meta["input_ids"] + [0] * (width - len(ex.meta["input_ids"])) for ex in part]
            labels = [[-100] * ex.meta["prompt_len"] + r[ex.meta["prompt_len"]:len(ex.meta["input_ids"])]
                      + [-100] * (width - len(ex.meta["input_ids"])) for ex, r in zip(part, rows)]
            mask = [[1] * len(ex.meta["input_ids"]) + [0] * (width - len(ex.meta["input_ids"])) for ex in part]
            ids, labels, mask = torch.tensor(rows), torch.tensor(labels), torch.tensor(mask)
            nll = sft_cross_entropy(lm(input_ids=ids, attention_mask=mask).logits[:, :-1], labels[:, 1:],
                                    labels[:, 1:] >= 0)
            part_loss = nll.sum() / part[0].meta["step_response_tokens"]
            part_loss.backward()
            loss = loss + part_loss.detach()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(round(float(loss), 4))
    assert rep["steps"] == 6 and rep["stopped"] == "max_steps" and rep["tokens"] == stream.tokens
    assert rep["first_loss"] == losses[0] and rep["response_tokens"] == stream.response_tokens
    saved = load_teacher(tmp_path / "teacher").causal_lm().state_dict()
    mine = lm.state_dict()
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in mine)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # the trainer's work folder is gone


def test_teacher_stops_at_target_through_a_trainer_callback(tmp_path):
    rep = train_teacher(tmp_path / "t", minutes_budget=2.0, **{**SMALL, "target_acc": 0.0, "eval_every": 2})
    assert rep["stopped"] == "target" and rep["steps"] == 2 and len(rep["eval_curve"]) == 1
