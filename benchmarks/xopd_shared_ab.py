"""The demo's X-OPD step with and without the shared-prompt path and the oneDNN linears, side by side.

Each setting runs in a fresh process on the cached world of a finished ``xopd demo`` (its data, teacher,
encoder cache and stage-1 student): ``STEPS`` steps of the demo's own X-OPD run (the paper's loss,
8 prompts x 2 views x 4 samples, 8 rehearsal rows), three ways:

* ``shared_prompt: false, linear_kernel: torch``: every sample recomputes its prompt, MKL linears
  (the step as it was before the speed work);
* ``shared_prompt: true, linear_kernel: torch``: each prompt computed once for its 4 samples (rollout
  prefill, teacher scoring, student update);
* ``shared_prompt: true, linear_kernel: auto`` (the default): plus oneDNN's GEMM for the student's and
  the teacher's linears on CPU (``cpu/onednn_linear.py``).

Prints the median step seconds after 3 warm-up steps and the speedups against the first, in one run.

    python benchmarks/xopd_shared_ab.py [DEMO_DIR] [STEPS]      # DEMO_DIR default runs/demo, STEPS 30
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(demo_dir: str, steps: int, shared: bool, kernel: str, out: str) -> None:
    from xopd.lab.train import run_train
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.data import by_task
    from xopd.lab.world.pipeline import xopd_train_cfg
    from xopd.lab.world.stages import REHEARSAL_TASKS, prepare_world, xopd_pool
    from xopd.lab.world.tasks import BENCHES
    from xopd.training.logging import read_metrics

    cfg = DemoConfig(output_dir=demo_dir)
    world = prepare_world(cfg)  # every stage cached: loads the splits
    tcfg = xopd_train_cfg(cfg, world, cfg.xopd_loss, Path(out), max_steps=steps, shared_prompt=shared,
                          linear_kernel=kernel, eval_every=10**6, progress=False)
    run_train(tcfg, examples=by_task(xopd_pool(world), *BENCHES),
              replay=by_task(world.split["train"], *REHEARSAL_TASKS))
    rows = [r for r in read_metrics(Path(out) / "metrics.jsonl") if "step_seconds" in r][3:]
    print(json.dumps({"shared_prompt": shared, "linear_kernel": kernel, "step_s": statistics.median(r["step_seconds"] for r in rows),
                      "loss": statistics.mean(r["loss"] for r in rows)}))


def main() -> None:
    demo_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    variants = [(False, "torch"), (True, "torch"), (True, "auto")]
    results = {}
    for shared, kernel in variants:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", demo_dir, str(steps), str(shared), kernel, tmp],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[shared, kernel] = json.loads(out)
        print(results[shared, kernel], flush=True)
    base = results[variants[0]]["step_s"]
    print(f"\ndemo X-OPD step, median of {steps - 3}:")
    for (shared, kernel), r in results.items():
        print(f"  shared_prompt {str(shared):5s} linear_kernel {kernel:5s}: {r['step_s']:.3f} s, "
              f"{base / r['step_s']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "True", sys.argv[5], sys.argv[6])
    else:
        main()
