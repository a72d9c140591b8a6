"""Data-parallel training: 2 processes (torchrun, gloo, CPU) reproduce the 1-process run on the same
global batch, for ddp and fsdp2, and an fsdp2 run resumes exactly from its distributed checkpoint.

Why ``--adam_eps 1``: at the first Adam step the update is ``lr * g / (|g| + eps)``, i.e. ~``lr *
sign(g)``; parameters whose true gradient is ~0 then move by a full ``lr`` in the direction of
float-rounding noise, which differs between any two reduction orders (one process vs an all-reduce).
A large eps makes the update proportional to the gradient, so equal gradients give equal weights.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reliability._helpers import fast_args, torchrun  # tests/ is on sys.path (rootdir conftest)
from xopd.algos.base import make_prompts
from xopd.cli import main
from xopd.data.manifest import read_manifest
from xopd.generation import sample
from xopd.models import load_student
from xopd.training.logging import read_metrics

STEPS = 3
ARGS = fast_args(max_new_tokens=6, adam_eps="1.0", max_steps=STEPS, save_every=1)


def _train_args(tiny_world, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--student_path",
        tiny_world["student"],
        "--teacher_path",
        tiny_world["teacher"],
        "--manifest",
        tiny_world["manifest"],
        "--output_dir",
        str(out),
        *ARGS,
        *extra,
    ]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    return torchrun(args)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def _weights(out: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"checkpoint-{step}" / "model" / "lm" / "model.safetensors"))


@pytest.fixture(scope="module")
def single(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "single"
    assert main(_train_args(tiny_world, out)) == 0
    return out


def _assert_matches(a: Path, b: Path, atol: float) -> None:
    la, lb = _losses(a), _losses(b)
    assert list(la) == list(lb) == list(range(1, STEPS + 1))
    for s in la:
        assert abs(la[s] - lb[s]) <= atol * max(1.0, abs(la[s])), f"step {s}: {la[s]} vs {lb[s]}"
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=f"weight {k}")


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_processes_match_one(kind, tiny_world, single, tmp_path):
    out = tmp_path / kind
    proc = _torchrun(_train_args(tiny_world, out, "--distributed", kind))
    _assert_matches(single, out, atol=1e-6)  # fsdp2 shards the teacher too: same numbers
    assert ("the teacher is sharded over 2 ranks" in proc.stderr) == (kind == "fsdp2")
    ckpt = out / f"checkpoint-{STEPS}"
    assert (ckpt / "dcp").is_dir() == (kind == "fsdp2")
    assert (ckpt / "optimizer.pt").is_file() == (kind == "ddp")
    assert load_student(ckpt / "model") is not None  # consolidated weights load like any checkpoint

    if kind == "fsdp2":  # resume from the sharded checkpoint of step 1: steps 2..3 must be identical
        part = tmp_path / "fsdp2-resumed"
        shutil.copytree(out, part)
        for s in range(2, STEPS + 1):
            shutil.rmtree(part / f"checkpoint-{s}")
        proc = _torchrun(_train_args(tiny_world, part, "--distributed", kind, "--resume"))
        assert "resumed from" in proc.stderr
        _assert_matches(out, part, atol=0.0)


def test_row_seeded_sampling_is_independent_of_batch_split(tiny_world):
    """The property that makes ranks agree: a prompt's tokens depend only on its own seed."""
    student = load_student(tiny_world["student"]).eval()
    examples, _ = read_manifest(tiny_world["manifest"])
    batch = student.embed_prompts(make_prompts(examples[:4], "T"))
    whole = sample(student, batch, 2, 8, row_seeds=[11, 12, 13, 14])
    for lo, hi in ((0, 1), (1, 3), (3, 4)):
        part = student.embed_prompts(make_prompts(examples[lo:hi], "T"))
        ro = sample(student, part, 2, 8, row_seeds=[11, 12, 13, 14][lo:hi])
        width = ro.ids.shape[1]
        assert torch.equal(ro.ids, whole.ids[2 * lo : 2 * hi, :width])
        torch.testing.assert_close(ro.logprobs, whole.logprobs[2 * lo : 2 * hi, :width], atol=1e-5, rtol=0)


def test_fsdp2_without_torchrun_is_a_one_process_group(tiny_world, single, tmp_path):
    """No torchrun environment: the same fsdp2 code path runs as a 1-process group, same numbers."""
    out = tmp_path / "fsdp2-1proc"
    assert main(_train_args(tiny_world, out, "--distributed", "fsdp2")) == 0
    assert (out / f"checkpoint-{STEPS}" / "dcp").is_dir()
    _assert_matches(single, out, atol=1e-6)
    assert not torch.distributed.is_initialized()  # the group it created is gone again


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("grpo", []),
        ("gkd", ["--gkd_lambda", "1.0"]),  # on-policy every micro-batch (the coin is per micro-batch)
        # coins seeded by each micro-batch's first prompt: same on 1 or 2 ranks (off-policy: teacher samples)
        ("gkd", ["--gkd_lambda", "0.5", "--gkd_seq_kd", "true"]),
        ("offline_kd", ["--kd_temperature", "0.8"]),  # sampled teacher responses, seeded per example
    ],
)
def test_baselines_two_processes_match_one(algo, extra, tiny_world, tmp_path):
    """The baselines sample through the same per-prompt-seeded rollout path as X-OPD, so a 2-process
    ddp run of each reproduces its 1-process run: rows differ in the algorithm, not in how they sample."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_train_args(tiny_world, one, "--algo", algo, *extra)) == 0
    _torchrun(_train_args(tiny_world, two, "--algo", algo, *extra, "--distributed", "ddp"))
    _assert_matches(one, two, atol=1e-6)
    if "0.5" in extra:  # both kinds of micro-batch occurred, and on the same steps in both runs
        coins = [[r["on_policy"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r] for d in (one, two)]
        assert coins[0] == coins[1] and 0 < sum(coins[0]) < len(coins[0])


def test_fsdp2_and_ddp_with_onednn_linears_match_one_process(tmp_path):
    """A student trained through oneDNN's GEMM (``linear_kernel: onednn``; ``auto`` picks it only where it
    measures faster) must reproduce the 1-process run in 2 processes: FSDP2 shards the swapped linears'
    parameters and DDP all-reduces their oneDNN weight gradients."""
    import json

    from xopd.cpu.onednn_linear import onednn_linear_available, select_linear_kernel
    from xopd.lab.bench.models import build_bench_world

    if not onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear")
    world = build_bench_world("M", tmp_path / "world")  # 14.6 M parameters
    assert select_linear_kernel("onednn", torch.device("cpu"), torch.float32, load_student(world.student)) > 0
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"m{i}", "text_only": True, "text": p}) + "\n"
                                for i, p in enumerate(world.prompts[:8])))
    args = ["train", "--student_path", str(world.student), "--teacher_path", str(world.teacher),
            "--manifest", str(manifest), "--algo", "xopd", "--lam", "1.0", "--n_samples", "2",
            "--max_new_tokens", "6", "--batch_size", "8", "--micro_batch_size", "4", "--max_steps", "2",
            "--save_every", "2", "--adam_eps", "1.0", "--lr", "1e-4", "--progress", "false", "--eval_prompts", "1",
            "--threads", "1", "--linear_kernel", "onednn"]
    one = tmp_path / "one"
    assert main([*args, "--output_dir", str(one)]) == 0
    for kind in ("ddp", "fsdp2"):
        out = tmp_path / kind
        _torchrun([*args, "--distributed", kind, "--output_dir", str(out)])
        la, lb = _losses(one), _losses(out)
        assert list(la) == list(lb) == [1, 2]
        for s in la:
            assert abs(la[s] - lb[s]) <= 1e-6 * max(1.0, abs(la[s])), f"{kind} step {s}: {la[s]} vs {lb[s]}"
        wa = load_file(str(one / "checkpoint-2" / "model" / "model.safetensors"))
        wb = load_file(str(out / "checkpoint-2" / "model" / "model.safetensors"))
        assert sorted(wa) == sorted(wb)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=f"{kind} weight {k}")


def test_a_torchrun_worker_skips_interpreter_finalisation(monkeypatch):
    """`python -m xopd.cli` under torchrun ends with os._exit (the rare gloo abort at finalisation);
    a single process exits normally."""
    import xopd.cli as cli

    calls = []
    monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(code))
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.exit_process(3)
    assert calls == [3]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as e:
        cli.exit_process(0)
    assert e.value.code == 0 and calls == [3]


def test_fsdp2_bf16_mixed_precision_keeps_fp32_master_weights(tiny_world, single, tmp_path):
    """``fsdp_param_dtype: bfloat16`` (auto's choice on CUDA): layers compute in bf16, the sharded master
    weights, the optimizer and the saved checkpoint stay fp32. (bf16 logits may sample other tokens than
    fp32 ones, so the losses are only checked to be finite.)"""
    out = tmp_path / "fsdp2-bf16"
    _torchrun(_train_args(tiny_world, out, "--distributed", "fsdp2", "--fsdp_param_dtype", "bfloat16"))
    la, lb = _losses(single), _losses(out)
    assert list(la) == list(lb)
    assert all(math.isfinite(v) for v in lb.values()), lb
    w = _weights(out)
    assert all(t.dtype == torch.float32 for t in w.values())
    assert any(not torch.equal(w[k], _weights(single)[k]) for k in w)  # bf16 compute: not bit-equal to fp32
