"""Rollout engines (xopd.generation.engine): the hf engine is sample(); the trainer drives any engine
through generate / update_weights / sleep / wake; an engine whose log-probs are not the trainer's gets
its samples rescored (pi_old from the trainer) and the gap logged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from xopd.cli import main
from xopd.errors import ConfigError
from xopd.generation import engines
from xopd.generation.backend import SampleSpec
from xopd.generation.engine import HFEngine
from xopd.generation.sampling import sample
from xopd.lab.tiny import build_tiny_tokenizer, tiny_llama
from xopd.models.base import Prompt
from xopd.models.text_lm import TextLM
from xopd.training.logging import read_metrics

BASE = ["--n_samples", "2", "--max_new_tokens", "8", "--batch_size", "4", "--micro_batch_size", "2",
        "--lr", "1e-3", "--progress", "false", "--report_to", "jsonl", "--eval_prompts", "2", "--threads", "1"]


def _train(tiny_world, out: Path, steps: int, *extra: str) -> list[dict]:
    args = ["train", "--student_path", tiny_world["student"], "--teacher_path", tiny_world["teacher"],
            "--manifest", tiny_world["manifest"], "--output_dir", str(out), "--max_steps", str(steps), *BASE, *extra]
    assert main(args) == 0
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_hf_engine_returns_what_sample_returns():
    tok = build_tiny_tokenizer()
    model = TextLM(tiny_llama(tok, 32, 2, 2, 64, seed=0).eval(), tok)
    batch = model.embed_prompts([Prompt(text="count"), Prompt(text="red cat")])
    spec = SampleSpec(n=3, max_new_tokens=6, temperature=1.0, top_p=0.9)
    got = HFEngine().generate(model, batch, spec, row_seeds=[5, 6])
    want = sample(model, batch, 3, 6, 1.0, 0.9, row_seeds=[5, 6])
    assert torch.equal(got.ids, want.ids) and torch.equal(got.mask, want.mask)
    assert torch.equal(got.logprobs, want.logprobs) and got.engine_logprobs is None
    assert got.engine_metrics() == {}


def test_unknown_engine_fails_with_one_line_naming_the_key(tiny_world, tmp_path, capsys):
    with pytest.raises(ConfigError, match="'rollout_engine' 'nope' is not available; choose one of hf, vllm"):
        engines.make_engine("nope", None)
    args = ["train", "--student_path", tiny_world["student"], "--teacher_path", tiny_world["teacher"],
            "--manifest", tiny_world["manifest"], "--output_dir", str(tmp_path / "bad"), "--rollout_engine", "nope"]
    assert main(args) != 0
    assert "'rollout_engine' 'nope' is not available" in capsys.readouterr().err


class _Recording(HFEngine):
    """The hf engine, counting the trainer's calls; ``shift`` moves its log-probs off the trainer's."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift, self.calls = shift, []
        self.trainer_logprobs = shift == 0.0
        self.awake_now = False

    def generate(self, model, prompts, spec, generator=None, row_seeds=None):
        assert self.awake_now, "generate outside wake()/sleep()"
        self.calls.append("generate")
        ro = super().generate(model, prompts, spec, generator, row_seeds)
        ro.logprobs = torch.where(ro.mask, ro.logprobs + self.shift, ro.logprobs)
        return ro

    def update_weights(self, model) -> None:
        self.calls.append("update")

    def wake(self) -> None:
        self.awake_now = True
        self.calls.append("wake")

    def sleep(self) -> None:
        self.awake_now = False
        self.calls.append("sleep")


@pytest.fixture
def recording_engine():
    made: list[_Recording] = []

    def register(shift: float) -> list[_Recording]:
        engines.register_engine("recording", lambda student, cfg: made.append(_Recording(shift)) or made[-1])
        return made

    yield register
    engines._ENGINES.pop("recording", None)


def test_the_trainer_drives_the_engine_and_an_engine_like_hf_changes_nothing(tiny_world, tmp_path, recording_engine):
    made = recording_engine(0.0)
    plain = _train(tiny_world, tmp_path / "hf", 2)
    rows = _train(tiny_world, tmp_path / "rec", 2, "--rollout_engine", "recording")
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain]
    calls = made[0].calls
    # 2 steps x 2 micro-batches: each rollout awake, then asleep; one weight update per optimizer step
    one_step = ["wake", "generate", "sleep"] * 2 + ["update"]
    assert calls == one_step * 2, calls
    assert "engine_logprob_diff_mean" not in rows[0]


def test_engine_logprobs_are_rescored_by_the_trainer_and_the_gap_logged(tiny_world, tmp_path, recording_engine):
    """An engine whose sampling log-probs are off by 0.25 nats: pi_old (hence the advantage and the loss)
    comes from the trainer's forward, as with hf, and the gap is logged; ``tis_cap`` weights the advantage
    by min(exp(-0.25), cap) = 0.7788 on every token."""
    recording_engine(0.25)
    plain = _train(tiny_world, tmp_path / "hf", 1, "--lr", "1e-9")
    rows = _train(tiny_world, tmp_path / "rec", 1, "--lr", "1e-9", "--rollout_engine", "recording")
    assert rows[0]["loss"] == pytest.approx(plain[0]["loss"], abs=1e-6)
    assert rows[0]["adv_mean"] == pytest.approx(plain[0]["adv_mean"], abs=1e-6)
    assert rows[0]["engine_logprob_diff_mean"] == pytest.approx(0.25, abs=1e-5)
    assert rows[0]["engine_logprob_diff_max"] == pytest.approx(0.25, abs=1e-5)
    tis = _train(tiny_world, tmp_path / "tis", 1, "--lr", "1e-9", "--rollout_engine", "recording", "--tis_cap", "2")
    assert tis[0]["adv_mean"] == pytest.approx(plain[0]["adv_mean"] * float(torch.tensor(-0.25).exp()), rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_how_to_install_or_fall_back(tmp_path):
    tok = build_tiny_tokenizer()
    model = TextLM(tiny_llama(tok, 32, 2, 2, 64, seed=0).eval(), tok)
    from xopd.training.config import TrainConfig

    with pytest.raises(ConfigError, match="vLLM is not installed here .* rollout_engine: hf"):
        engines.make_engine("vllm", model, TrainConfig(output_dir=str(tmp_path)))
