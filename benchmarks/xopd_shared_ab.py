"""The demo's X-OPD step with and without the shared-prompt path, side by side.

Each setting runs in a fresh process on the cached world of a finished ``xopd demo`` (its data, teacher,
encoder cache and stage-1 student): ``STEPS`` steps of the demo's own X-OPD run (the paper's loss,
8 prompts x 2 views x 4 samples, 8 rehearsal rows) with ``shared_prompt`` true (each prompt computed
once for its 4 samples: rollout prefill, teacher scoring, student update) and false (every sample
recomputes its prompt). Prints the median step seconds after 3 warm-up steps and the speedup, in one run.

    python benchmarks/xopd_shared_ab.py [DEMO_DIR] [STEPS]      # DEMO_DIR default runs/demo, STEPS 30
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(demo_dir: str, steps: int, shared: bool, out: str) -> None:
    from xopd.training.logging import read_metrics
    from xopd.training.trainer import train as run_train
    from xopd.world.config import DemoConfig
    from xopd.world.data import by_task
    from xopd.world.pipeline import xopd_train_cfg
    from xopd.world.stages import REHEARSAL_TASKS, prepare_world, xopd_pool
    from xopd.world.tasks import BENCHES

    cfg = DemoConfig(output_dir=demo_dir)
    world = prepare_world(cfg)  # every stage cached: loads the splits
    tcfg = xopd_train_cfg(cfg, world, cfg.xopd_loss, Path(out), max_steps=steps, shared_prompt=shared,
                          eval_every=10**6, progress=False)
    run_train(tcfg, examples=by_task(xopd_pool(world), *BENCHES),
              replay=by_task(world.split["train"], *REHEARSAL_TASKS))
    rows = [r for r in read_metrics(Path(out) / "metrics.jsonl") if "step_seconds" in r][3:]
    print(json.dumps({"shared_prompt": shared, "step_s": statistics.median(r["step_seconds"] for r in rows),
                      "loss": statistics.mean(r["loss"] for r in rows)}))


def main() -> None:
    demo_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    results = {}
    for shared in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", demo_dir, str(steps), str(shared), tmp],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[shared] = json.loads(out)
        print(results[shared], flush=True)
    off, on = results[False]["step_s"], results[True]["step_s"]
    print(f"\ndemo X-OPD step, median of {steps - 3}: per-sample prompts {off:.3f} s, shared prompts {on:.3f} s: "
          f"{off / on:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "True", sys.argv[5])
    else:
        main()
