"""The shipped recipes on one CUDA GPU (skipped where there is none): each recipe's tiny random config
trains 2 X-OPD steps in the recipe's own precision and settings (gradient checkpointing, fp32 master
weights, bf16 autocast, the bf16 teacher ``teacher_dtype: auto`` picks), with the evaluation hook at
step 0 and at the end; then resumes to step 3 from its checkpoint and is scored by ``xopd eval``.

Run by ``benchmarks/gpu_check.py`` after its timings; ``pytest tests/gpu`` alone runs it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipe_sizes import rollout_sizes  # tests/ is on sys.path (rootdir conftest)
from xopd.cli import main
from xopd.lab.tiny_recipes import RECIPE_BUILDERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZES = ["--batch_size", "2", "--micro_batch_size", "2", "--max_new_tokens", "6", "--eval_prompts", "2",
         "--save_every", "1", "--progress", "false"]  # fmt: skip


def _train(recipe: str, student: str, teacher: str, manifest: str, out: Path, steps: int, *extra: str) -> None:
    argv = ["train", "--config", str(CONFIGS / f"{recipe}.yaml"), "--student_path", student,
            "--teacher_path", teacher, "--manifest", manifest, "--eval_manifest", manifest,
            "--output_dir", str(out), "--max_steps", str(steps), *SIZES, *rollout_sizes(recipe), *extra]  # fmt: skip
    assert main(argv) == 0


@pytest.mark.parametrize("recipe", sorted(RECIPE_BUILDERS))
def test_recipe_trains_resumes_and_evaluates_on_cuda(recipe, tmp_path, tiny_manifest):
    student, teacher = RECIPE_BUILDERS[recipe](tmp_path / "models")
    out = tmp_path / "run"
    torch.cuda.reset_peak_memory_stats()
    _train(recipe, student, teacher, tiny_manifest, out, 2)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and not r["skipped_update"] for r in steps)
    assert sum("eval_reverse_kl_S" in r for r in rows) >= 2  # step 0 and the end
    assert torch.cuda.max_memory_allocated() > 0  # it really ran on the GPU

    _train(recipe, student, teacher, tiny_manifest, out, 3, "--resume")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 3

    report = tmp_path / "eval" / "report.json"
    assert main(["eval", "--student", str(out / "checkpoint-3" / "model"), "--teacher", teacher,
                 "--manifest", tiny_manifest, "--limit", "2", "--max_new_tokens", "6",
                 "--output", str(report), "--no-progress"]) == 0  # fmt: skip
    assert json.loads(report.read_text())


@pytest.mark.parametrize("recipe", ["qwen2.5-omni-7b", "qwen3-omni-30b-a3b"])
def test_omni_static_cache_rollout_equals_dynamic_on_cuda(recipe, tmp_path):
    """The Omni thinkers' static-cache decode (on since it matched the dynamic one on CPU) on CUDA."""
    from rollout_checks import static_and_dynamic_rollouts  # tests/ is on sys.path (rootdir conftest)

    _, static, dynamic = static_and_dynamic_rollouts(recipe, tmp_path, device="cuda")
    assert torch.equal(static.ids, dynamic.ids)
    torch.testing.assert_close(static.logprobs, dynamic.logprobs, atol=1e-4, rtol=0)
