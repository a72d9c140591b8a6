"""Heap trimming cadence on the demo's stage-1 step: step time and peak RSS, side by side.

Each setting runs in a fresh process (peak RSS only ever grows) on the cached world of a finished
``xopd demo`` (its data, encoder cache and stage-1 student): ``STEPS`` spoken-instruction SFT steps of
the demo's stage 1b (32 prompts, label smoothing 0.1, projector + LM training), with
``trim_heap_every`` = 1 (every step), 10, 50 and 0 (never). Prints median step seconds after 3
warm-up steps and the child's peak RSS, in one run, so the ratios compare like with like.

    python benchmarks/trim_ab.py [DEMO_DIR] [STEPS]      # DEMO_DIR default runs/demo, STEPS 40
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = (1, 10, 50, 0)


def child(demo_dir: str, steps: int, every: int, out: str) -> None:
    from xopd.lab.train import run_train
    from xopd.lab.world.config import DemoConfig
    from xopd.lab.world.data import text_only_rows
    from xopd.lab.world.stages import encoder_cache_file, prepare_world, train_cfg
    from xopd.lab.world.tasks import BENCHES
    from xopd.training.logging import read_metrics

    cfg = DemoConfig(output_dir=demo_dir)
    world = prepare_world(cfg)  # every stage cached: loads the splits
    train = world.split["train"]
    text_rows = text_only_rows([e for e in train if e.task in BENCHES])
    tcfg = train_cfg(Path(out), algo="sft", sft_view="S", batch_size=cfg.stage1_batch,
                     micro_batch_size=cfg.stage1_batch, max_new_tokens=cfg.max_new_tokens, seed=0,
                     threads=cfg.threads, train_projector=True, label_smoothing=cfg.stage1_label_smoothing,
                     encoder_cache_file=encoder_cache_file(world.root), student_path=str(world.student1),
                     max_steps=steps, lr=cfg.sft_lr, trim_heap_every=every, save_every=10**6, progress=False)
    run_train(tcfg, examples=train + text_rows)
    rows = [r for r in read_metrics(Path(out) / "metrics.jsonl") if "step_seconds" in r][3:]
    print(json.dumps({"every": every, "step_s": statistics.median(r["step_seconds"] for r in rows),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    demo_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    results = []
    for every in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", demo_dir, str(steps), str(every), tmp],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(results[-1], flush=True)
    base = next(r for r in results if r["every"] == 0)
    print(f"\n{'trim every':>10} {'step s':>8} {'vs never':>9} {'peak RSS MB':>12}")
    for r in results:
        label = "never" if r["every"] == 0 else str(r["every"])
        print(f"{label:>10} {r['step_s']:8.3f} {r['step_s'] / base['step_s']:8.2f}x {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
