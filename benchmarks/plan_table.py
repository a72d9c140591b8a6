"""The per-GPU memory table of docs/REAL_MODELS.md: ``xopd plan`` on every shipped recipe, at full size.

    .venv/bin/python benchmarks/plan_table.py [--gpus 8] [--gpu_mem 80] [--prompt_len 300]

The models' shapes are the published config.json numbers (xopd.lab.shapes: no weights, nothing
downloaded). Prints one markdown table per recipe (step 1 and from step 2 on) and the parameter
counts the shapes give, so they can be checked against the model cards.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from xopd.config import load_config
from xopd.lab.shapes import RECIPE_SHAPES, write_shape_dirs
from xopd.training.config import TrainConfig
from xopd.training.plan import model_shape, plan_step, step_shape_from

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu_mem", type=float, default=80.0)
    ap.add_argument("--prompt_len", type=int, default=300)
    args = ap.parse_args()
    summary: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPE_SHAPES:
            cfg = load_config(TrainConfig, str(CONFIGS / f"{recipe}.yaml"), {})
            s_dir, t_dir = write_shape_dirs(recipe, Path(tmp) / recipe)
            student, teacher = model_shape(s_dir), model_shape(t_dir)
            shape = step_shape_from(cfg, args.gpus, args.prompt_len)
            steps = {k: plan_step(student, teacher, shape, step=k) for k in (1, 2)}
            towers = ", ".join(f"{k} {v / 1e9:.2f} B" for k, v in student.towers.items())
            print(f"\n### {recipe}: {args.gpus} GPUs x {args.gpu_mem:g} GB, rollout {max(shape.rows, shape.rollout_rows)} "
                  f"rows, micro-batch {shape.rows} rows, "
                  f"prompt {shape.prompt_len} + {shape.new_tokens} new tokens, checkpointing "
                  f"{'on' if shape.checkpointing else 'off'}")
            print(f"student {student.total / 1e9:.2f} B parameters (LM {student.lm / 1e9:.2f} B, embeddings "
                  f"{student.embed / 1e9:.2f} B, {towers}); teacher {teacher.total / 1e9:.2f} B\n")
            print("| term (GB per GPU) | step 1 | step 2+ |\n|---|---:|---:|")
            for key in steps[2]:
                print(f"| {key} | {steps[1][key]:.1f} | {steps[2][key]:.1f} |")
            peak = steps[2]["peak"]
            print(f"\npeak {peak:.1f} GB of {args.gpu_mem:g} GB: headroom {1 - peak / args.gpu_mem:.0%}")
            summary[recipe] = steps[2]
    names = list(summary)
    print(f"\n### all recipes, from step 2 on, GB per GPU ({args.gpus} x {args.gpu_mem:g} GB)\n")
    print("| term | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for key in summary[names[0]]:
        print(f"| {key} | " + " | ".join(f"{summary[r][key]:.1f}" for r in names) + " |")
    print("| headroom | " + " | ".join(f"{1 - summary[r]['peak'] / args.gpu_mem:.0%}" for r in names) + " |")


if __name__ == "__main__":
    main()
