"""Loaders on tiny copies in each published layout; user mistakes are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xopd.errors import ConfigError, DataError
from xopd.eval.benchmarks import bench_prompt, load_benchmark
from xopd.eval.benchmarks.audio_multichallenge import criteria_met, parse_rubric
from xopd.eval.benchmarks.big_bench_audio import judge_verdict
from xopd.eval.benchmarks.mmar import string_match

from .conftest import SENTENCES


def _by_name(subsets):
    return {s.name: s for s in subsets}


def test_voicebench_hub_layout(voicebench_hub: Path, speech) -> None:
    subs = _by_name(load_benchmark("voicebench", str(voicebench_hub)))
    # the default set: the leaderboard subsets this copy has (alpacaeval/mtbench are not in it)
    assert set(subs) == {f"voicebench/{c}" for c in ("sd-qa", "mmsu", "openbookqa", "bbh", "ifeval", "advbench")}
    mmsu = subs["voicebench/mmsu"]
    assert [e.meta["split"] for e in mmsu.examples] == ["biology", "physics"] and mmsu.unit == "accuracy %"
    assert "2 of 12 splits" in mmsu.notes[0]
    ex = subs["voicebench/openbookqa"].examples[0]
    assert ex.text == SENTENCES[1] and ex.answer == "B" and ex.audio_bytes is not None
    wav = ex.load_waveform()
    assert wav.dtype == np.float32 and np.allclose(wav, speech[SENTENCES[1]], atol=1e-3)  # 16-bit WAV round trip
    ifeval = subs["voicebench/ifeval"].examples[0]
    assert ifeval.meta["instruction_id_list"][1] == "length_constraints:number_words"
    assert ifeval.meta["kwargs"][1]["num_words"] == 3
    assert subs["voicebench/bbh"].examples[0].meta["source_id"] == "sports_understanding_7"
    chosen = load_benchmark("voicebench:mtbench,alpacaeval", str(voicebench_hub), limit=1)
    assert [s.name for s in chosen] == ["voicebench/mtbench", "voicebench/alpacaeval"]
    assert chosen[0].skip and "no scorer" in chosen[0].skip and len(chosen[1].examples) == 1


def test_voicebench_save_to_disk_layout_reads_the_same_rows(voicebench_saved: Path, voicebench_hub: Path) -> None:
    a = _by_name(load_benchmark("voicebench:openbookqa,mmsu", str(voicebench_saved)))
    b = _by_name(load_benchmark("voicebench:openbookqa,mmsu", str(voicebench_hub)))
    for name in a:
        assert [(e.id, e.text, e.answer) for e in a[name].examples] == [(e.id, e.text, e.answer) for e in b[name].examples]
        assert all(np.array_equal(x.load_waveform(), y.load_waveform()) for x, y in zip(a[name].examples, b[name].examples))
    assert "save_to_disk" in a["voicebench/mmsu"].source


def test_voicebench_mistakes_are_one_line_errors(voicebench_hub: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown subset 'sdqa'; known: alpacaeval"):
        load_benchmark("voicebench:sdqa", str(voicebench_hub))
    with pytest.raises(DataError, match="no VoiceBench 'wildvoice' here; expected"):
        load_benchmark("voicebench:wildvoice", str(voicebench_hub))
    with pytest.raises(DataError, match="--data .*not found"):
        load_benchmark("voicebench", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no VoiceBench config folder"):
        load_benchmark("voicebench", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown benchmark"):
        load_benchmark("voicebnech", str(tmp_path))
    broken = tmp_path / "vb"
    shutil.copytree(voicebench_hub / "advbench", broken / "openbookqa")  # no 'reference' column
    with pytest.raises(DataError, match="no field 'reference'.*openbookqa"):
        load_benchmark("voicebench:openbookqa", str(broken))


def test_big_bench_audio_mp3_audiofolder(bba_folder: Path, speech, tmp_path: Path) -> None:
    (sub,) = load_benchmark("big_bench_audio", str(bba_folder))
    assert sub.views == ("S",) and "no transcript" in sub.notes[0]
    ex = sub.examples[0]
    wav = ex.load_waveform()  # MP3 decoded by libsndfile
    assert abs(wav.size - speech[SENTENCES[0]].size) < 2000 and ex.answer == "3"
    # a copy with transcripts has the T view
    copy = tmp_path / "bba"
    shutil.copytree(bba_folder, copy)
    rows = [json.loads(x) for x in (copy / "metadata.jsonl").read_text().splitlines()]
    rows = [r | {"transcript": t} for r, t in zip(rows, (SENTENCES[0], SENTENCES[2]))]
    (copy / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (sub,) = load_benchmark("big_bench_audio:navigate", str(copy))
    assert sub.views == ("S", "T") and [e.text for e in sub.examples] == [SENTENCES[2]]
    (copy / "data" / "question_1.mp3").unlink()
    with pytest.raises(DataError, match="question_1.mp3 not found"):
        load_benchmark("big_bench_audio", str(copy))


def test_mmar_meta_and_audio_dir(mmar_folder: Path) -> None:
    (sub,) = load_benchmark("mmar", str(mmar_folder))
    assert sub.metric == "audio_only" and sub.views == ("S",)
    ex = sub.examples[1]
    prompt = bench_prompt(ex, "S")
    assert prompt.text.splitlines() == ["What food is ordered in the end?", "Select one option from the provided choices.",
                                        "Salad", "Soup"]  # fmt: skip
    assert prompt.audio.size > 1000
    (sub,) = load_benchmark("mmar:speech", str(mmar_folder / "MMAR-meta.json"))
    assert [e.id for e in sub.examples] == ["clip-a"]


def test_audio_multichallenge_history_from_references(audiomc_folder: Path, speech) -> None:
    (sub,) = load_benchmark("audio_multichallenge", str(audiomc_folder))
    conv = sub.examples[0]
    assert conv.text == SENTENCES[5] and conv.meta["rubric_items"] == ["Names a yellow fruit.", "Does not mention salad."]
    assert [t["role"] for t in conv.meta["history"]] == ["user", "assistant"]
    s, t = bench_prompt(conv, "S"), bench_prompt(conv, "T")
    assert s.view == "S" and s.history[0].audio is not None and s.history[1].text == "One soup coming up."
    assert abs(s.history[0].audio.size - speech[SENTENCES[6]].size) < 50  # 48 kHz -> 16 kHz
    assert t.text == SENTENCES[5] and t.history[0].text == SENTENCES[6] and t.history[0].audio is None
    assert sub.examples[1].meta["history"] == [] and sub.examples[1].meta["rubric_items"] == ["States 36.", "Is brief."]


def test_scoring_helpers() -> None:
    assert string_match("Open Grassland", "It is from an open grassland.", ["Mountain Canyon", "Open Grassland"])
    assert not string_match("Open Grassland", "open grassland or mountain", ["Mountain Canyon", "Open Grassland"])
    assert not string_match("Soup", "", ["Salad", "Soup"])
    # a token shared with a wrong choice is not held against the answer
    assert string_match("Dense Forest", "dense forest", ["Dense Forest", "Forest Fire"])
    assert judge_verdict("CORRECT") and judge_verdict("correct.") is True
    assert judge_verdict("INCORRECT") is False and judge_verdict("unsure") is None
    assert parse_rubric('[{"criterion": "a"}, "b"]') == ["a", "b"] and parse_rubric("1. x\n\n2) y") == ["x", "y"]
    assert criteria_met('```json\n{"explanation": "ok", "criteria_met": true}\n```') is True
    assert criteria_met('{"criteria_met": false}') is False and criteria_met("yes") is None
