"""End-to-end `xopd train` on a tiny world: metrics, checkpoints, exact resume, and that X-OPD
actually moves the student toward the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xopd.cli import main
from xopd.training.logging import read_metrics

BASE = ["--n_samples", "2", "--max_new_tokens", "8", "--batch_size", "4", "--micro_batch_size", "2",
        "--lr", "1e-3", "--progress", "false", "--report_to", "jsonl", "--eval_prompts", "2", "--threads", "1"]


def _args(tiny_world, out, steps, *extra):
    return ["train", "--student_path", tiny_world["student"], "--teacher_path", tiny_world["teacher"],
            "--manifest", tiny_world["manifest"], "--output_dir", str(out), "--max_steps", str(steps), *BASE,
            *extra]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def _lm_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model" / "lm" / "model.safetensors"))


def test_train_writes_metrics_and_checkpoints(tiny_world, tmp_path):
    out = tmp_path / "run"
    assert main(_args(tiny_world, out, 4, "--save_every", "2", "--keep_last", "1")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    assert {"reverse_kl", "adv_mean", "tok_s", "lr"} <= set(train_rows[0])
    assert any("eval_reverse_kl_S" in r for r in rows)
    # keep_last=1: only the newest complete checkpoint survives
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["data"]["index"] >= 0
    assert (out / "tb").is_dir() is False  # report_to=jsonl only


def test_resume_is_exact(tiny_world, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(tiny_world, full, 6, "--save_every", "3")) == 0
    assert main(_args(tiny_world, part, 3, "--save_every", "3")) == 0
    assert main(_args(tiny_world, part, 6, "--save_every", "3", "--resume")) == 0
    a, b = _losses(full), _losses(part)
    assert list(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"
    wa, wb = _lm_weights(full / "checkpoint-6"), _lm_weights(part / "checkpoint-6")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_config_errors_are_one_line(tiny_world, tmp_path, capsys):
    assert main(_args(tiny_world, tmp_path, 2, "--lam", "1.5")) == 2
    assert "'lam' must be in [0, 1]" in capsys.readouterr().err
    assert main(_args(tiny_world, tmp_path, 2, "--n_samples", "0")) == 2
    assert main(_args(tiny_world, tmp_path, 2, "--lr", "abc")) == 2
    assert "'lr' must be float" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lam: 0.5\nnot_a_key: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown key 'not_a_key'" in capsys.readouterr().err


def test_train_help_documents_every_field(capsys):
    from dataclasses import fields

    from xopd.lab.train import LabTrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text
    for f in fields(LabTrainConfig):  # the core's keys, the CPU kit's and the lab's
        assert f"--{f.name}" in text


def _replay_manifest(tiny_world, tmp_path) -> Path:
    """The tiny manifest's rows with their answers as SFT references (ASR-like rehearsal rows)."""
    src = Path(tiny_world["manifest"])
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    import shutil

    shutil.copytree(src.parent / "audio", tmp_path / "audio")  # manifests may not point outside their folder
    out = tmp_path / "replay.jsonl"
    out.write_text("".join(json.dumps({**r, "reference": r["answer"]}) + "\n" for r in rows))
    return out


def test_replay_adds_rehearsal_loss_and_resumes_exactly(tiny_world, tmp_path):
    replay = ["--replay_manifest", str(_replay_manifest(tiny_world, tmp_path)), "--replay_batch", "2"]
    plain, full, part = tmp_path / "plain", tmp_path / "full", tmp_path / "part"
    assert main(_args(tiny_world, plain, 4, "--save_every", "2")) == 0
    assert main(_args(tiny_world, full, 4, "--save_every", "2", *replay)) == 0
    rows = [r for r in read_metrics(full / "metrics.jsonl") if "loss" in r]
    assert all(r["replay_nll"] > 0 for r in rows)
    # the rehearsal term is added to the algorithm's loss (the first step shares weights and rollouts)
    assert rows[0]["loss"] == pytest.approx(_losses(plain)[1] + rows[0]["replay_nll"], rel=1e-5)
    assert main(_args(tiny_world, part, 2, "--save_every", "2", *replay)) == 0
    assert main(_args(tiny_world, part, 4, "--save_every", "2", "--resume", *replay)) == 0
    assert _losses(full) == _losses(part)
    wa, wb = _lm_weights(full / "checkpoint-4"), _lm_weights(part / "checkpoint-4")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_replay_config_errors(tiny_world, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = main(_args(tiny_world, tmp_path / "r", 1, "--replay_manifest", str(empty), "--replay_batch", "2"))
    assert bad == 1  # DataError: the manifest is empty
    assert main(_args(tiny_world, tmp_path / "r2", 1, "--replay_batch", "-1")) == 2


def test_every_command_help_renders(capsys):
    """argparse %-formats help text: a literal '%' in a field's help once crashed `xopd demo --help`."""
    for command in (["demo"], ["reproduce"], ["train"], ["eval"], ["bench"], ["synth"], ["data", "check"],
                    ["models", "prepare"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage:" in capsys.readouterr().out


def test_shared_prompt_off_and_trim_cadence_change_speed_not_results(tiny_world, tmp_path, monkeypatch):
    """``shared_prompt: false`` (each sample recomputes its prompt, as TRL does) and the heap-trim cadence
    are speed/memory knobs: the losses match the default run's; trims happen every N-th step."""
    import xopd.cpu as cpu_kit

    trims = []
    monkeypatch.setattr(cpu_kit, "trim_heap", lambda: trims.append(1) or True)
    a, b = tmp_path / "shared", tmp_path / "unshared"
    assert main(_args(tiny_world, a, 4, "--trim_heap_every", "1")) == 0
    assert len(trims) == 4  # every step
    trims.clear()
    assert main(_args(tiny_world, b, 4, "--shared_prompt", "false", "--trim_heap_every", "3")) == 0
    assert len(trims) == 2  # steps 1 and 4 (0-based 0 and 3)
    la, lb = _losses(a), _losses(b)
    assert la.keys() == lb.keys() == {1, 2, 3, 4}
    # step 1 (same weights, same per-prompt seeds): the same samples and loss up to float rounding; after
    # an update, rounding differences of ~1e-7 in the weights may flip a sampled token, so later steps
    # are only required to stay finite
    assert lb[1] == pytest.approx(la[1], rel=1e-4, abs=1e-6)
    assert all(torch.isfinite(torch.tensor(v)) for v in lb.values())


def test_onednn_linear_kernel_changes_speed_not_results(tiny_world, tmp_path, monkeypatch):
    """``linear_kernel: onednn`` (forced on for the tiny models, which auto leaves on MKL, and for every
    product however small) trains the same step 1 as ``torch``, up to float rounding; then both stay
    finite."""
    import xopd.cpu.onednn_linear as ol

    if not ol.onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear")
    calls = []
    monkeypatch.setattr(ol, "MIN_MACS", 0)
    real = ol._gemm
    monkeypatch.setattr(ol, "_gemm", lambda *a: calls.append(1) or real(*a))
    a, b = tmp_path / "torch", tmp_path / "onednn"
    assert main(_args(tiny_world, a, 3, "--linear_kernel", "torch")) == 0
    assert not calls
    assert main(_args(tiny_world, b, 3, "--linear_kernel", "onednn")) == 0
    assert calls  # the products did go through oneDNN
    la, lb = _losses(a), _losses(b)
    assert la.keys() == lb.keys() == {1, 2, 3}
    assert lb[1] == pytest.approx(la[1], rel=1e-4, abs=1e-6)
    assert all(torch.isfinite(torch.tensor(v)) for v in lb.values())


def test_a_callback_can_end_the_run_after_a_step(tiny_world, tmp_path):
    """``TrainRun.stop`` (set by a callback, e.g. a target reached) ends the run after that step with a
    checkpoint and the final evaluation, like a last step; the run returns normally."""
    from xopd.training.callbacks import TrainerCallback
    from xopd.training.config import TrainConfig
    from xopd.training.trainer import train

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, run, step):
            if step == 1:
                run.stop = "target"

    cfg = TrainConfig(student_path=tiny_world["student"], teacher_path=tiny_world["teacher"],
                      manifest=tiny_world["manifest"], output_dir=str(tmp_path / "run"), max_steps=5, n_samples=2, max_new_tokens=8,
                      batch_size=4, micro_batch_size=2, progress=False, report_to="jsonl", save_every=100)
    out = train(cfg, callbacks=[StopAtTwo()])
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_rollout_batch_size_rolls_out_the_step_at_once_with_the_same_losses(tiny_world, tmp_path, capsys):
    """``rollout_batch_size`` 4 (two micro-batches of 2 in one rollout) trains like one rollout per
    micro-batch: per-prompt seeds give the same samples, so the losses agree to float rounding. (A tiny
    lr: AdamW's first update is lr x sign(grad), which turns rounding noise in near-zero gradients into
    lr-sized weight differences, so step 2 compares like with like only if lr is negligible.)"""
    a, b = tmp_path / "per_micro", tmp_path / "together"
    assert main(_args(tiny_world, a, 3, "--lr", "1e-9")) == 0
    assert main(_args(tiny_world, b, 3, "--lr", "1e-9", "--rollout_batch_size", "4")) == 0
    la, lb = _losses(a), _losses(b)
    assert list(la) == list(lb) == [1, 2, 3]
    assert all(lb[s] == pytest.approx(la[s], abs=1e-6) for s in la), (la, lb)
    assert main(_args(tiny_world, tmp_path / "bad", 1, "--rollout_batch_size", "3")) != 0
    assert "'rollout_batch_size' (3) must be a multiple of micro_batch_size (2)" in capsys.readouterr().err
