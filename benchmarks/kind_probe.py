"""Can training teach one question kind? X-OPD or SFT on that kind alone, from the demo's stage-1 student.

The demo's report shows where the gap sits per question kind ("Where the gap is" in report.md). A kind
that X-OPD leaves at 0 % (on the shipped demo: reversing a spoken list, which the teacher itself answers
at 6-10 % from the normalised transcript) is either one the signal never reaches or one this LM cannot
learn at the demo's budget. This probe separates the two: each run trains the stage-1 student on the
``prompts`` pool's questions of KIND only, and evaluates every kind on test and held-out.

* ``xopd-<loss>:LR:STEPS``: the demo's own X-OPD run (``xopd_train_cfg``: lam 0.5, n 4, 8 prompts a
  step, 8 rehearsal rows, tower and adapter frozen) with ``loss`` (``pg``, ``topk_forward_kl``, ...);
  it sees the prompts only.
* ``sft:LR:STEPS``: supervised fine-tuning of the same parameters on the same questions' reference
  responses from S (labels X-OPD never sees), 8 a step, the same rehearsal rows and LR schedule.

Reuses the cached stages of a finished ``xopd demo`` run with the default settings (``runs/demo`` is
read, not written: every stage must be cached); each run trains into a temporary folder. Prints one
line per run: the kind's S accuracy on test / held-out, both benchmarks' S accuracy, dS and dT.

    python benchmarks/kind_probe.py [DEMO_DIR] [KIND] [RUNS]
    python benchmarks/kind_probe.py runs/demo instruct/reverse xopd-topk_forward_kl:2e-4:150,sft:2e-4:150
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DEFAULT_RUNS = ("xopd-pg:2e-4:150,xopd-topk_forward_kl:2e-4:150,sft:2e-4:150,xopd-topk_forward_kl:2e-4:600,sft:2e-4:600,"
                "xopd-topk_forward_kl:1e-3:600,sft:1e-3:600")


def main() -> None:
    from xopd.lab.train import run_train
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.data import by_task
    from xopd.lab.world.evaluate import evaluate_world, item_kind
    from xopd.lab.world.pipeline import xopd_train_cfg
    from xopd.lab.world.stages import (
        CACHE_DTYPE,
        REHEARSAL_TASKS,
        encoder_cache_file,
        final_model,
        prepare_world,
        xopd_pool,
    )
    from xopd.lab.world.tasks import BENCHES

    demo_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
    kind = sys.argv[2] if len(sys.argv) > 2 else "instruct/reverse"
    runs = (sys.argv[3] if len(sys.argv) > 3 else DEFAULT_RUNS).split(",")
    cfg = DemoConfig(output_dir=demo_dir)
    done = [Path(demo_dir, s, "stage.json") for s in ("data", "hearing", "stage1")] + [Path(demo_dir, "teacher/config.json")]
    if not all(p.is_file() for p in done):
        sys.exit(f"{demo_dir}: run `xopd demo` first (this probe reuses its cached stages)")
    world = prepare_world(cfg)  # every stage cached: loads the splits
    pool = [e for e in by_task(xopd_pool(world), *BENCHES) if item_kind(e) == kind]
    if not pool:
        sys.exit(f"no question of kind {kind!r} in the prompts pool; kinds look like instruct/reverse, reasoning/birds")
    replay = by_task(world.split["train"], *REHEARSAL_TASKS)
    splits = {k: v for k, v in world.split.items() if k in ("test", "heldout")}
    print(f"{len(pool)} prompts of kind {kind}", flush=True)
    print("run | kind S test / held-out | reasoning S | instruct S | dS test / held-out | dT test", flush=True)
    students = {"student_base": world.student1}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in runs:
            algo, lr, steps = spec.split(":")
            out = Path(tmp) / spec.replace(":", "_")
            over = dict(max_steps=int(steps), lr=float(lr), eval_every=0)
            if algo.startswith("xopd-"):
                tcfg = xopd_train_cfg(cfg, world, algo[len("xopd-"):], out, **over)
            else:
                tcfg = xopd_train_cfg(cfg, world, "pg", out, **over, algo="sft", sft_view="S",
                                      teacher_path=None)
            run_train(tcfg, examples=pool, replay=replay)
            students[spec] = final_model(out, int(steps))
        res = evaluate_world(world.teacher_dir, students, splits, cfg.max_new_tokens, cfg.eval_batch, CACHE_DTYPE,
                             encoder_cache_file(world.root))
    for name, per_split in res["models"].items():
        t, h = per_split["test"], per_split["heldout"]
        print(f"{name} | {100 * t['per_kind'][kind]['S']:.0f} / {100 * h['per_kind'][kind]['S']:.0f} % | "
              f"{100 * t['reasoning']['S']:.0f} | {100 * t['instruct']['S']:.0f} | "
              f"{t['avg_drop_S']:.2f} / {h['avg_drop_S']:.2f} % | {t['avg_drop_T']:.2f} %", flush=True)


if __name__ == "__main__":
    main()
