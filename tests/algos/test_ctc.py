"""`xopd train --algo ctc`: the front end learns to hear on a user's manifest, and nothing else moves."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from xopd.cli import main
from xopd.lab.tiny import build_tiny_student
from xopd.models.speech_llm import SpeechLLM
from xopd.training.logging import read_metrics


@pytest.fixture(scope="module")
def ctc_student(tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctc_algo") / "student"
    build_tiny_student(out, tiny_teacher_dir, adapter={"d_model": 32, "layers": 1, "heads": 2, "ffn": 64,
                                                        "dropout": 0.0})
    return out


def _train(student, manifest, out, *extra):
    return main(["train", "--algo", "ctc", "--student_path", str(student), "--manifest", manifest,
                 "--output_dir", str(out), "--max_steps", "30", "--batch_size", "8", "--micro_batch_size", "8",
                 "--lr", "3e-3", "--train_adapter", "--train_lm", "false", "--progress", "false",
                 "--report_to", "jsonl", "--threads", "1", *extra])


def test_ctc_trains_the_adapter_alone(ctc_student, tiny_world, tmp_path):
    out = tmp_path / "run"
    assert _train(ctc_student, tiny_world["manifest"], out) == 0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "ctc" in r]
    assert rows[-1]["ctc"] < 0.5 * rows[0]["ctc"]
    after = out / "checkpoint-30" / "model"
    for part in ("projector.safetensors", "lm/model.safetensors", "encoder/model.safetensors"):
        a, b = load_file(str(ctc_student / part)), load_file(str(after / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    a, b = load_file(str(ctc_student / "adapter.safetensors")), load_file(str(after / "adapter.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the trained front end hears its training transcripts better than the untrained one
    from xopd.data.manifest import read_manifest
    from xopd.metrics import wer

    exs = read_manifest(tiny_world["manifest"])[0]
    wavs, refs = [e.load_waveform() for e in exs], [e.text for e in exs]
    before = wer(refs, SpeechLLM.from_pretrained(ctc_student).eval().hear(wavs))
    trained = wer(refs, SpeechLLM.from_pretrained(after).eval().hear(wavs))
    assert trained < min(before, 0.8)


def test_ctc_needs_an_adapter(tiny_world, tmp_path, capsys):
    assert _train(tiny_world["student"], tiny_world["manifest"], tmp_path / "x") == 2
    assert "no CTC adapter" in capsys.readouterr().err
