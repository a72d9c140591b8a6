"""``xopd export`` round trip (issue 28): a student trained from a full Omni checkpoint is merged back
into that checkpoint's layout and loads with transformers' full class, holding the trained thinker
weights; a thinker-only run exports as saved and loads with the thinker class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipe_sizes import rollout_sizes  # tests/ is on sys.path (rootdir conftest)
from xopd.cli import main
from xopd.lab.tiny_recipes import build_qwen25_omni_pair
from xopd.models import load_student

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _full_omni(thinker_dir: str, out: Path) -> Path:
    """A full Qwen2.5-Omni checkpoint (the talker switched off to stay tiny) around a tiny thinker."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = load_student(thinker_dir)
    cfg = Qwen2_5OmniConfig(thinker_config=json.loads((Path(thinker_dir) / "config.json").read_text()),
                            enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(cfg)
    full.thinker.load_state_dict(thinker.model.state_dict(), strict=False)  # xopd dropped its vision tower
    full.save_pretrained(out)
    for f in Path(thinker_dir).iterdir():  # tokenizer, chat template, preprocessor
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (out / f.name).write_bytes(f.read_bytes())
    torch.save({}, out / "spk_dict.pt")  # the full class reads the speakers file
    return out


def _train(student: str, teacher: str, manifest: str, out: Path) -> None:
    assert main(["train", "--config", str(CONFIGS / "qwen2.5-omni-7b.yaml"), "--student_path", student,
                 "--teacher_path", teacher, "--manifest", manifest, "--eval_manifest", manifest, "--output_dir", str(out),
                 "--max_steps", "1", "--batch_size", "2", "--micro_batch_size", "2", "--max_new_tokens", "4",
                 "--eval_prompts", "1", "--progress", "false", "--report_to", "jsonl", "--lr", "1e-3",
                 "--warmup_steps", "0", *rollout_sizes("qwen2.5-omni-7b")]) == 0  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("omni")
    return build_qwen25_omni_pair(root)


def test_full_omni_run_exports_into_the_full_class(pair, tmp_path, tiny_manifest):
    from transformers import Qwen2_5OmniForConditionalGeneration

    thinker_dir, teacher = pair
    base = _full_omni(thinker_dir, tmp_path / "full-base")
    run = tmp_path / "run"
    _train(str(base), teacher, tiny_manifest, run)
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert (out / "spk_dict.pt").is_file() and (out / "preprocessor_config.json").is_file()
    full = Qwen2_5OmniForConditionalGeneration.from_pretrained(out)
    trained = load_student(run / "checkpoint-1" / "model").model.state_dict()
    before = load_student(str(base)).model.state_dict()
    got = full.thinker.state_dict()
    assert set(trained) < set(got) and all(".visual." in k or k.startswith("visual.") for k in set(got) - set(trained))
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    assert any(not torch.equal(trained[k], before[k]) for k in trained)  # it did train
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_omni"


def test_thinker_only_run_exports_as_saved(pair, tmp_path, tiny_manifest):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    thinker_dir, teacher = pair
    run = tmp_path / "run"
    _train(thinker_dir, teacher, tiny_manifest, run)
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run / "checkpoint-1"), "--out", str(out)]) == 0
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out)
    trained = load_student(run / "checkpoint-1" / "model").model.state_dict()
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)


def test_export_of_a_folder_without_checkpoints_is_one_clear_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) != 0
    assert "neither a checkpoint-N folder nor a run folder" in capsys.readouterr().err
