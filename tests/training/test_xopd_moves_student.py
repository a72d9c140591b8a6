"""X-OPD must move the student toward the teacher: mean full-vocab reverse KL (student on S vs
teacher on T, on the student's own samples with a fixed seed) drops clearly over 30 steps."""

from __future__ import annotations

import torch

from xopd.cli import main
from xopd.models.speech_llm import SpeechLLM
from xopd.models.text_lm import TextLM
from xopd.training.logging import read_metrics


def test_reverse_kl_decreases(tiny_world, tmp_path):
    # Make the gap real: a peaked teacher (scaled output layer) and a student whose LM is perturbed.
    teacher = TextLM.from_pretrained(tiny_world["teacher"])
    with torch.no_grad():
        teacher.lm.get_output_embeddings().weight.mul_(6.0)
    teacher.save_pretrained(str(tmp_path / "teacher"))
    student = SpeechLLM.from_pretrained(tiny_world["student"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        student.lm.get_output_embeddings().weight.mul_(6.0)
        for p in student.lm.model.layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    student.save_pretrained(str(tmp_path / "student"))

    out = tmp_path / "run"
    rc = main(["train", "--student_path", str(tmp_path / "student"), "--teacher_path", str(tmp_path / "teacher"),
               "--manifest", tiny_world["manifest"], "--output_dir", str(out), "--max_steps", "30",
               "--n_samples", "4", "--max_new_tokens", "8", "--batch_size", "4", "--micro_batch_size", "4",
               "--lr", "3e-3", "--lam", "0.5", "--eval_prompts", "8", "--progress", "false",
               "--report_to", "jsonl", "--save_every", "30", "--threads", "1"])
    assert rc == 0
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval_reverse_kl_S" in r]
    before, after = evals[0]["eval_reverse_kl_S"], evals[-1]["eval_reverse_kl_S"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    print(f"reverse KL S: {before:.4f} -> {after:.4f}")
    assert after < 0.6 * before, f"reverse KL {before:.4f} -> {after:.4f}"
