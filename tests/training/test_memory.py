"""Memory options: LoRA (adapters only train; checkpoints hold merged weights + the adapter; exact
resume) and gradient checkpointing (really recomputes layers in backward, same gradients)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from reliability._helpers import fast_args  # tests/ is on sys.path (rootdir conftest)
from xopd.algos.xopd import XOPD
from xopd.cli import main
from xopd.data.manifest import read_manifest
from xopd.lab.train import LabTrainConfig as TrainConfig
from xopd.models import load_student, load_teacher
from xopd.training.logging import read_metrics
from xopd.training.lora import apply_lora, load_adapter
from xopd.training.memory import enable_gradient_checkpointing, mark_checkpointed_layers

ARGS = fast_args(max_new_tokens=6, lr="1e-2", save_every=2, lora_r=4, lora_targets="q_proj,v_proj")


def _run(tiny_world, out: Path, steps: int, *extra: str) -> None:
    assert (
        main(
            [
                "train",
                "--student_path",
                tiny_world["student"],
                "--teacher_path",
                tiny_world["teacher"],
                "--manifest",
                tiny_world["manifest"],
                "--output_dir",
                str(out),
                "--max_steps",
                str(steps),
                *ARGS,
                *extra,
            ]
        )
        == 0
    )


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_lora_merged_checkpoint_and_exact_resume(tiny_world, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _run(tiny_world, full, 4)
    _run(tiny_world, part, 2)
    _run(tiny_world, part, 4, "--resume")
    assert _losses(full) == _losses(part)
    ckpt = full / "checkpoint-4"
    merged = load_file(str(ckpt / "model" / "lm" / "model.safetensors"))
    base = load_student(tiny_world["student"])
    base_sd = base.lm.state_dict()
    assert set(merged) == set(base_sd)  # plain weights under their usual names, no lora keys
    changed = {k for k in merged if not torch.equal(merged[k], base_sd[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only adapted layers moved
    resumed = load_file(str(part / "checkpoint-4" / "model" / "lm" / "model.safetensors"))
    assert all(torch.equal(v, resumed[k]) for k, v in merged.items())

    # the merged student computes what base + adapter computes
    apply_lora(base, 4, 16, "q_proj,v_proj")
    load_adapter(base, ckpt)
    merged_student = load_student(ckpt / "model")
    ids = torch.tensor([[3, 7, 9, 11, 5]])
    with torch.no_grad():
        a = base.lm(input_ids=ids).logits
        b = merged_student.lm(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_recomputes_and_keeps_grads(tiny_world):
    examples, _ = read_manifest(tiny_world["manifest"])
    teacher = load_teacher(tiny_world["teacher"])
    cfg = TrainConfig(bootstrap="tiny", n_samples=2, max_new_tokens=6, lam=0.5)
    grads, calls = [], []
    for ckpt in (False, True):
        student = load_student(tiny_world["student"]).eval()
        if ckpt:
            enable_gradient_checkpointing(student)
            student.eval()  # eval() clears the flag (as the eval hook does) ...
            assert mark_checkpointed_layers(student) == len(
                student.lm.model.layers
            )  # ... the trainer re-marks
        count = [0]
        student.lm.model.layers[0].self_attn.register_forward_hook(
            lambda *a, c=count: c.__setitem__(0, c[0] + 1)
        )
        out = XOPD(cfg, student, teacher, None).step(examples[:2], torch.Generator().manual_seed(0))
        before = count[0]
        out.loss.backward()
        calls.append(count[0] - before)  # attention forwards run during backward = recomputation
        grads.append({n: p.grad.clone() for n, p in student.lm.named_parameters() if p.grad is not None})
    assert calls == [0, 1]
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)


def test_teacher_dtype_auto_is_bf16_on_cuda_only():
    from xopd.training.memory import teacher_dtype

    assert teacher_dtype("auto", torch.device("cuda", 0), torch.float32) == torch.bfloat16
    assert teacher_dtype("auto", torch.device("cpu"), torch.float32) == torch.float32
    assert teacher_dtype("float16", torch.device("cpu"), torch.float32) == torch.float16


def test_a_bf16_teacher_trains_the_fp32_student(tiny_world, tmp_path):
    out = tmp_path / "bf16-teacher"
    _run(tiny_world, out, 1, "--teacher_dtype", "bfloat16", "--lora_r", "0")
    loss = _losses(out)[1]
    assert loss == loss and abs(loss) < 1e3  # finite
    assert load_student(out / "checkpoint-1" / "model").lm.dtype == torch.float32
