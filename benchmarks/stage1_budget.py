"""Where the gap comes from: the stage-1 student's dS / dT after several spoken-instruction SFT budgets.

Runs on a copy of a finished ``xopd demo`` world (its data, teacher, hearing stage and encoder cache are
reused; ``runs/demo`` itself is not touched): for each budget, stage 1 (alignment as the demo runs it,
then ``sft_steps`` of stage 1b) is trained in the copy and ``student_base`` is evaluated on test and
held-out the way the demo's report does. Prints one line per budget.

    python benchmarks/stage1_budget.py [DEMO_DIR] [BUDGETS]   # default runs/demo 150,300,600
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def main() -> None:
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.evaluate import evaluate_world
    from xopd.lab.world.stages import CACHE_DTYPE, encoder_cache_file, prepare_world

    demo_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    budgets = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "150,300,600").split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "demo"
        # the cached stages, without the students this script retrains (stage 1) or never needs (X-OPD)
        skip = {"stage1", "report.json", "report.md", "gap.png"}
        shutil.copytree(demo_dir, work, ignore=lambda d, names: [
            n for n in names if Path(d) == demo_dir and (n in skip or n.startswith("xopd"))])
        print("sft_steps | split | reasoning S / T | instruct S / T | dS | dT", flush=True)
        for steps in budgets:
            cfg = replace(DemoConfig(output_dir=str(work)), sft_steps=steps)
            world = prepare_world(cfg)
            splits = {k: v for k, v in world.split.items() if k in ("test", "heldout")}
            res = evaluate_world(world.teacher_dir, {"student_base": world.student1}, splits, cfg.max_new_tokens,
                                 cfg.eval_batch, CACHE_DTYPE, encoder_cache_file(world.root))
            for sp, r in res["models"]["student_base"].items():
                if sp in splits:
                    print(f"{steps} | {sp} | {100 * r['reasoning']['S']:.0f} / {100 * r['reasoning']['T']:.0f} | "
                          f"{100 * r['instruct']['S']:.0f} / {100 * r['instruct']['T']:.0f} | "
                          f"{r['avg_drop_S']:.2f} % | {r['avg_drop_T']:.2f} %", flush=True)


if __name__ == "__main__":
    main()
