"""Every shipped paper-scale recipe (configs/*-7b.yaml, *-a3b.yaml) runs 2 X-OPD steps through
`xopd train` AS SHIPPED (only paths and sizes overridden; gradient checkpointing, dtypes, chunking on)
on tiny random configs of the same transformers classes (xopd.lab.tiny_recipes), once in one process
and once as 2-process FSDP2 on CPU. Also the usual mistakes fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipe_sizes import rollout_sizes  # tests/ is on sys.path (rootdir conftest)
from reliability._helpers import torchrun
from xopd.cli import main
from xopd.config import load_config
from xopd.lab.tiny_recipes import RECIPE_BUILDERS, save_teacher, text_config
from xopd.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: the paper-scale recipes this project ships; each must have a tiny builder and run here as shipped
SHIPPED = sorted(p.stem for p in [*CONFIGS.glob("*-7b.yaml"), *CONFIGS.glob("*-a3b.yaml")])

# Only paths and sizes are overridden: steps, batch (and rollout batch), tokens, eval prompts, save interval. Every other
# setting (dtype, device auto, gradient checkpointing, logprob chunk, lr, warmup, n, report_to) is the
# recipe's own. --progress only switches the bar off.
SIZES = ["--max_steps", "2", "--batch_size", "2", "--micro_batch_size", "2", "--max_new_tokens", "4",
         "--eval_prompts", "2", "--save_every", "1", "--progress", "false"]  # fmt: skip
ONE_STEP = [*SIZES, "--max_steps", "1", "--gradient_checkpointing", "false", "--report_to", "jsonl"]


def test_every_shipped_recipe_has_a_tiny_builder() -> None:
    assert SHIPPED and sorted(RECIPE_BUILDERS) == SHIPPED


def _argv(recipe: str, student: str, teacher: str, manifest: str, out: Path, processes: int = 1) -> list[str]:
    return ["train", "--config", str(CONFIGS / f"{recipe}.yaml"), "--student_path", student,
            "--teacher_path", teacher, "--manifest", manifest, "--eval_manifest", manifest,
            "--output_dir", str(out), *SIZES, *(["--batch_size", "4"] if processes > 1 else []),
            *rollout_sizes(recipe, processes)]  # fmt: skip


def _check_run(out: Path, student: str, steps: int = 2) -> None:
    from xopd.models import load_student

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    done = [r for r in rows if "loss" in r]
    assert [r["step"] for r in done] == list(range(1, steps + 1))
    assert all(r["skipped_update"] is False and r["response_len_S"] > 0 and r["response_len_T"] > 0 for r in done)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in done)
    assert any("eval_reverse_kl_S" in r for r in rows)
    before, after = load_student(student), load_student(out / f"checkpoint-{steps}" / "model")
    assert type(before) is type(after)
    lm_b, lm_a = before.causal_lm().get_output_embeddings(), after.causal_lm().get_output_embeddings()
    assert not torch.equal(lm_b.weight, lm_a.weight)  # the backbone trained ...
    enc = [n for n, _ in before.named_parameters() if "audio_tower.layers.0" in n][0]
    assert torch.equal(
        dict(before.named_parameters())[enc], dict(after.named_parameters())[enc]
    )  # ... the tower not


@pytest.fixture(scope="module", params=SHIPPED)
def recipe_models(request, tmp_path_factory) -> tuple[str, str, str]:
    root = tmp_path_factory.mktemp(request.param)
    return (request.param, *RECIPE_BUILDERS[request.param](root))


def test_recipe_runs_as_shipped(recipe_models, tmp_path: Path, tiny_manifest: str) -> None:
    """2 X-OPD steps in one process with the recipe's own settings (gradient checkpointing on)."""
    recipe, student, teacher = recipe_models
    cfg = load_config(TrainConfig, str(CONFIGS / f"{recipe}.yaml"), {})
    assert cfg.gradient_checkpointing  # what this test exists to exercise
    out = tmp_path / "run"
    assert main(_argv(recipe, student, teacher, tiny_manifest, out)) == 0
    _check_run(out, student)


def test_recipe_runs_as_shipped_on_two_fsdp2_processes(recipe_models, tmp_path: Path, tiny_manifest: str) -> None:
    """The same 2 steps as 2-process FSDP2 (gloo, CPU), as the recipe's launch line runs it."""
    recipe, student, teacher = recipe_models
    out = tmp_path / "fsdp2"
    torchrun([*_argv(recipe, student, teacher, tiny_manifest, out, processes=2), "--distributed", "fsdp2"])
    _check_run(out, student)
    assert (out / "checkpoint-2" / "dcp").is_dir()


def test_recipes_are_valid_train_configs() -> None:
    for name in ("qwen2-audio-7b", "qwen2.5-omni-7b", "qwen3-omni-30b-a3b"):
        cfg = load_config(TrainConfig, str(CONFIGS / f"{name}.yaml"), {})
        assert (cfg.algo, cfg.lam, cfg.n_samples, cfg.lr, cfg.batch_size) == ("xopd", 0.5, 4, 2e-6, 256)
        assert cfg.train_lm and not cfg.train_encoder and not cfg.train_projector


def test_vocab_mismatch_is_one_clear_line(tmp_path: Path, tiny_world, capsys) -> None:
    """A teacher whose tokenizer differs beyond padding is refused before any training."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from xopd.lab.tiny import build_tiny_tokenizer

    other = build_tiny_tokenizer(words=["completely", "different", "words", "here"] * 3)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**text_config(other)))
    tdir = save_teacher(teacher, other, tmp_path / "teacher")
    argv = [
        "train",
        "--student_path",
        tiny_world["student"],
        "--teacher_path",
        tdir,
        "--manifest",
        tiny_world["manifest"],
        "--output_dir",
        str(tmp_path / "run"),
        *ONE_STEP,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xopd train: error:") and "tokenizers disagree" in err and "teacher" in err
