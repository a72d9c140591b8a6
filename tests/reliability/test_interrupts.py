"""Runs survive: SIGKILL at an arbitrary step then --resume reproduces the uninterrupted run exactly;
SIGTERM/SIGINT save and exit 143/130; a crash mid-save never costs the previous checkpoint; NaN/inf
loss or gradients skip the update, are counted, and stop the run after max_nonfinite_steps in a row."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xopd.cli import main
from xopd.training.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from xopd.training.logging import read_metrics

from ._helpers import one_line_error, popen_xopd, run_xopd, train_argv


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def _last_logged_step(out: Path) -> int:
    """Highest training step in metrics.jsonl, tolerating a half-written last line."""
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            steps.append(row["step"])
    return max(steps)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor in every safetensors file of a saved model directory, keyed by file/name."""
    out = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(model_dir)}/{k}"] = v
    return out


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_until(proc, cond, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_sigkill_mid_run_then_resume_is_exact(tiny_world, tmp_path):
    steps, args = 16, ("--save_every", "4", "--keep_last", "2")
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_argv(tiny_world, ref, steps, *args)) == 0

    proc = popen_xopd(*train_argv(tiny_world, run, steps, *args), log=tmp_path / "killed.log")

    def checkpoint_then_two_more_steps() -> bool:
        ck = latest_checkpoint(run)
        return ck is not None and _last_logged_step(run) >= int(ck.name.split("-")[1]) + 2

    reached = _wait_until(proc, checkpoint_then_two_more_steps)
    proc.send_signal(signal.SIGKILL)  # no handler can run: whatever is on disk is what we get
    assert proc.wait(30) == -signal.SIGKILL
    assert reached, f"run ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}"
    ck_step = int(latest_checkpoint(run).name.split("-")[1])
    assert ck_step < _last_logged_step(run) < steps  # killed between checkpoints, mid-run

    res = run_xopd(*train_argv(tiny_world, run, steps, *args, "--resume"))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"resumed from {run / f'checkpoint-{ck_step}'} at step {ck_step}" in res.stderr
    a, b = _losses(ref), _losses(run)
    assert list(b) == list(range(1, steps + 1))  # metrics read as one run: killed steps replaced
    for s in range(ck_step + 1, steps + 1):
        assert a[s] == b[s], f"step {s}: {a[s]} != {b[s]}"
    assert _same_weights(ref / f"checkpoint-{steps}" / "model", run / f"checkpoint-{steps}" / "model")
    assert not list(run.glob(".tmp-checkpoint-*"))


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_saves_checkpoint_and_exits_cleanly(sig, code, tiny_world, tmp_path, capsys):
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = popen_xopd(*train_argv(tiny_world, run, 500, "--save_every", "1000"), log=log)
    reached = _wait_until(proc, lambda: _last_logged_step(run) >= 2)
    proc.send_signal(sig)
    rc = proc.wait(120)
    text = log.read_text()
    assert reached, text
    assert rc == code, text
    err = one_line_error(text)
    ck = latest_checkpoint(run)
    assert ck is not None
    step = int(ck.name.split("-")[1])
    assert f"stopped by {sig.name} after step {step}" in err and "--resume" in err
    assert 2 <= step < 500 and _last_logged_step(run) == step
    # resume continues from there
    assert main(train_argv(tiny_world, run, step + 2, "--save_every", "1000", "--resume")) == 0
    assert f"at step {step}" in capsys.readouterr().err
    assert list(_losses(run)) == list(range(1, step + 3))


def test_crash_while_saving_keeps_the_previous_checkpoint(tiny_world, tmp_path, monkeypatch):
    from xopd.models.speech_llm import SpeechLLM

    real_save = SpeechLLM.save_pretrained
    snapshot: dict[str, bytes] = {}

    def save_then_die(self, path):
        real_save(self, path)
        if "checkpoint-6" in str(path):  # the third save: model written, optimizer etc. not yet
            prev = Path(path).parent.parent / "checkpoint-4"
            snapshot.update(
                {str(p.relative_to(prev)): p.read_bytes() for p in prev.rglob("*") if p.is_file()}
            )
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(SpeechLLM, "save_pretrained", save_then_die)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        main(train_argv(tiny_world, run, 8, "--save_every", "2", "--keep_last", "1"))
    # the previous checkpoint is intact byte for byte, the partial one is invisible
    prev = run / "checkpoint-4"
    assert (
        snapshot
        and {str(p.relative_to(prev)): p.read_bytes() for p in prev.rglob("*") if p.is_file()} == snapshot
    )
    assert [s for s, _ in list_checkpoints(run)] == [4] and latest_checkpoint(run) == prev
    assert list(run.glob(".tmp-checkpoint-6-*")) and not (run / "checkpoint-6").exists()

    monkeypatch.setattr(SpeechLLM, "save_pretrained", real_save)
    assert main(train_argv(tiny_world, run, 8, "--save_every", "2", "--keep_last", "1", "--resume")) == 0
    assert [s for s, _ in list_checkpoints(run)] == [8]
    assert list(_losses(run)) == list(range(1, 9))


class _Stub(torch.nn.Module):
    """A one-tensor 'model' whose save_pretrained records which checkpoints exist while it writes."""

    def __init__(self, out: Path, seen: list) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.out, self.seen = out, seen

    def save_pretrained(self, path: str) -> None:
        self.seen.append([s for s, _ in list_checkpoints(self.out)])
        os.makedirs(path)
        save_file({"w": self.w.detach().clone()}, os.path.join(path, "model.safetensors"))


def test_keep_last_never_deletes_newest_before_next_is_complete(tmp_path):
    seen: list = []
    stub = _Stub(tmp_path, seen)
    opt = torch.optim.AdamW(stub.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (tmp_path / "checkpoint-99").mkdir()  # an incomplete copy (no trainer_state.json): never "latest"
    stale = tmp_path / f".tmp-checkpoint-7-{os.getpid() + 100000}"  # left by a killed process
    stale.mkdir()
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, stub, opt, sched, {"data": {}}, keep_last=1)
        assert latest_checkpoint(tmp_path) == tmp_path / f"checkpoint-{step}"
    assert seen == [[], [1], [2], [3]]  # while step N was being written, N-1 still existed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]
    assert not stale.exists() and (tmp_path / "checkpoint-99").is_dir()


def _poison(monkeypatch, bad_steps: set[int], kind: str, grad_accum: int = 2) -> None:
    """Make the first micro-batch of each step in ``bad_steps`` give a NaN loss or an inf gradient."""
    from xopd.algos.xopd import XOPD

    real_step = XOPD.step
    calls = {"n": 0}

    def step(self, examples, generator):
        out = real_step(self, examples, generator)
        calls["n"] += 1
        if (calls["n"] - 1) % grad_accum == 0 and (calls["n"] - 1) // grad_accum + 1 in bad_steps:
            if kind == "nan_loss":
                out.loss = out.loss * float("nan")
            else:  # finite loss, infinite gradient: d sqrt(x)/dx at 0
                w = next(p for p in self.student.parameters() if p.requires_grad)
                out.loss = out.loss + 1e-30 * torch.sqrt(w - w.detach()).sum()
        return out

    monkeypatch.setattr(XOPD, "step", step)


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad"])
def test_nonfinite_step_skips_update_and_is_counted(kind, tiny_world, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {3}, kind)
    run = tmp_path / "run"
    assert main(train_argv(tiny_world, run, 4, "--save_every", "1", "--keep_last", "10")) == 0
    assert "step 3: non-finite loss/grad, update skipped (1 in a row)" in capsys.readouterr().err
    rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert [rows[s]["skipped_update"] for s in (1, 2, 3, 4)] == [False, False, True, False]
    assert _same_weights(run / "checkpoint-2" / "model", run / "checkpoint-3" / "model")  # no update
    assert not _same_weights(run / "checkpoint-3" / "model", run / "checkpoint-4" / "model")
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["nonfinite_total"] == 1


def test_nonfinite_steps_in_a_row_stop_the_run_naming_the_first(tiny_world, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, set(range(3, 100)), "nan_loss")
    run = tmp_path / "run"
    assert main(train_argv(tiny_world, run, 20, "--max_nonfinite_steps", "3", "--save_every", "100")) == 1
    err = one_line_error(capsys.readouterr().err)
    assert "3 updates in a row had NaN/inf loss or gradients, starting at step 3" in err
    assert _last_logged_step(run) == 5
