"""Mini-world task generators and scoring: determinism, split hygiene, self-consistency."""

from __future__ import annotations

import json
import re
from itertools import combinations

import pytest

from xopd.errors import DataError
from xopd.lab.world import (
    SPLITS,
    TASKS,
    WorldItem,
    all_template_words,
    extract_answer,
    generate_items,
    make_split,
    normalize_answer,
    normalize_text,
    score_item,
    vocabulary_corpus,
    wer,
)
from xopd.lab.world import tasks as T

SMALL = {"reasoning": 150, "instruct": 150, "audio_only": 150, "asr": 100}


@pytest.fixture(scope="module")
def world() -> dict[str, list[WorldItem]]:
    out = {s: make_split(s, SMALL, seed=3) for s in ("test", "heldout", "unseen_template")}
    out["train"] = make_split("train", {t: 1500 for t in TASKS}, seed=3)
    return out


def _key(it: WorldItem) -> str:
    if it.task in ("asr", "audio_only"):
        return "sentence|" + normalize_text(it.speak)
    return f"{it.task}|{normalize_answer(it.text)}|{it.answer}"


def test_deterministic_in_seed():
    a = [it.to_dict() for it in make_split("test", SMALL, seed=7)]
    b = [it.to_dict() for it in make_split("test", SMALL, seed=7)]
    c = [it.to_dict() for it in make_split("test", SMALL, seed=8)]
    assert a == b
    assert a != c
    # the order of n_per_task does not change what is generated
    rev = dict(reversed(list(SMALL.items())))
    assert [it.to_dict() for it in make_split("test", rev, seed=7)] == a


def test_counts_ids_and_tasks(world):
    for split in ("test", "heldout", "unseen_template"):
        items = world[split]
        assert [it.task for it in items] == [t for t in TASKS for _ in range(SMALL[t])]
        assert len({it.id for it in items}) == len(items)
        assert all(it.split == split for it in items)


def test_no_instance_shared_across_splits(world):
    keys = {s: {_key(it) for it in items} for s, items in world.items()}
    for a, b in combinations(SPLITS, 2):
        assert not keys[a] & keys[b], (a, b, sorted(keys[a] & keys[b])[:3])
    for s in ("train", "test", "heldout"):
        assert {T.split_of(_key(it)) for it in world[s]} == {s}


def test_eval_splits_have_no_repeats(world):
    for s in ("test", "heldout", "unseen_template"):
        for task in ("reasoning", "instruct"):
            keys = [_key(it) for it in world[s] if it.task == task]
            assert len(keys) == len(set(keys))


def test_heldout_voices_and_noise_never_in_train(world):
    assert not set(T.TRAIN_VARIANTS) & set(T.HELDOUT_VARIANTS)
    assert not set(T.TRAIN_SNRS) & set(T.HELDOUT_SNRS)
    seen_voices = {it.voice.variant for s in ("train", "test", "unseen_template") for it in world[s]}
    seen_snr = {it.noise_snr_db for s in ("train", "test", "unseen_template") for it in world[s]} - {None}
    held_voices = {it.voice.variant for it in world["heldout"]}
    held_snr = {it.noise_snr_db for it in world["heldout"]} - {None}
    assert seen_voices <= set(T.TRAIN_VARIANTS) and held_voices <= set(T.HELDOUT_VARIANTS)
    assert not seen_voices & held_voices and not seen_snr & held_snr
    assert held_voices == set(T.HELDOUT_VARIANTS) and held_snr == set(T.HELDOUT_SNRS)


def test_unseen_templates_are_unseen(world):
    seen = {it.template for s in ("train", "test", "heldout") for it in world[s]}
    unseen = {it.template for it in world["unseen_template"]}
    assert not seen & unseen
    texts = {it.text for s in ("train", "test", "heldout") for it in world[s] if it.task == "audio_only"}
    assert not texts & {it.text for it in world["unseen_template"] if it.task == "audio_only"}


def test_reference_scores_as_correct(world):
    for items in world.values():
        for it in items:
            assert score_item(it.task, it.reference, it.answer) == 1.0, it
            if it.task != "asr":
                assert score_item(it.task, f"The answer is {it.answer}.", it.answer) == 1.0
                assert score_item(it.task, "The answer is 1000.", it.answer) == 0.0


def test_reasoning_chain_is_arithmetic_and_bounded(world):
    for it in (x for items in world.values() for x in items if x.task == "reasoning"):
        steps = re.findall(r"(\d+) (plus|minus) (\d+) is (\d+)\.", it.reference)
        assert 2 <= len(steps) <= 3
        for a, op, b, c in steps:
            assert int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
        nums = [int(n) for n in re.findall(r"\d+", it.text + " " + it.reference)]
        assert max(nums) <= T.MAX_NUMBER and min(nums) >= 0
        assert extract_answer(it.reference) == it.answer == steps[-1][3]
        assert it.speak == it.text


def test_audio_only_answers_follow_the_audio(world):
    for it in (x for items in world.values() for x in items if x.task == "audio_only"):
        kind = it.template.split("/")[1]
        v = it.voice
        assert it.speak != it.text
        if kind == "speed":
            lo, hi = T.RATE_FAST if it.answer == "fast" else T.RATE_SLOW
            assert lo <= v.rate <= hi
        elif kind == "pitch":
            lo, hi = T.PITCH_HIGH if it.answer == "high" else T.PITCH_LOW
            assert lo <= v.pitch <= hi
            assert T.voice_gender(v) == ("woman" if it.answer == "high" else "man")
        elif kind == "noise":
            assert (it.noise_snr_db is not None) == (it.answer == "yes")
        else:
            assert T.voice_gender(v) == it.answer
    answers = {it.answer for it in world["test"] if it.task == "audio_only"}
    assert answers == {"fast", "slow", "high", "low", "yes", "no", "man", "woman"}


def test_vocabulary_covers_every_word(world):
    vocab = all_template_words()
    assert set("abcdefghijklmnopqrstuvwxyz") <= vocab and {str(n) for n in range(51)} <= vocab
    missing = set()
    for items in world.values():
        for it in items:
            for field in (it.text, it.speak, it.reference, it.answer):
                missing |= set(re.findall(r"[A-Za-z']+|\d+", field)) - vocab
    assert not missing
    assert all(isinstance(line, str) for line in vocabulary_corpus())


def test_item_round_trips_through_json(world):
    it = world["heldout"][0]
    assert WorldItem.from_dict(json.loads(json.dumps(it.to_dict()))) == it


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError, match="split"):
        make_split("dev", {"reasoning": 1})
    with pytest.raises(DataError, match="task"):
        make_split("test", {"math": 1})
    with pytest.raises(DataError, match="task"):
        generate_items("math", "test", 1)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("5 plus 3 is 8. 8 minus 2 is 6. The answer is 6.", "6"),
        ("The answer is 4. Wait. the answer is 7", "7"),
        ("the answer is: cat cat.\nmore", "cat cat"),
        ("The answer is 15, 39, 41.", "15, 39, 41"),
        ("no phrase here", None),
        ("The answer is.", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_score_item_exact_checks():
    assert score_item("reasoning", "8 minus 2 is 6. The answer is 6.", "6") == 1.0
    assert score_item("reasoning", "6", "6") == 0.0  # the answer phrase is required
    assert score_item("reasoning", "The answer is 16.", "6") == 0.0
    assert score_item("instruct", "  Cat  cat cat. ", "cat cat cat") == 1.0
    assert score_item("instruct", "3,7 ,9", "3, 7, 9") == 1.0
    assert score_item("instruct", "cat cat", "cat cat cat") == 0.0
    assert score_item("audio_only", "Fast.", "fast") == 1.0
    assert score_item("asr", "the old man", "the old man") == 1.0
    assert score_item("asr", "the man", "the old man") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_item("math", "1", "1")


def test_wer_is_empty_safe():
    assert wer([], []) == 0.0
    assert wer(["a b c d"], ["a b x d"]) == pytest.approx(0.25)
    assert wer(["The cat."], ["the  CAT"]) == 0.0
    assert wer(["a b"], [""]) == 1.0
    assert wer([""], [""]) == 0.0
    assert wer([""], ["x"]) == 1.0
    assert wer(["a b", ""], ["a b", "x"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        wer(["a"], [])
