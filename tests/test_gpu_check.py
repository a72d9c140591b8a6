"""benchmarks/gpu_check.py runs end to end on CPU at tiny scale (what a GPU session runs at full width)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--scale", "tiny", "--device",
                           "cpu", "--skip-pytest", "--rows", "2,4", "--new_tokens", "6", "--step_tokens", "6",
                           "--micro_batch", "2", "--n", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert [r["rows"] for r in rep["rollout"]] == [2, 4]
    assert all(r["ms_per_step"] > 0 and r["tok_per_s"] > 0 for r in rep["rollout"])
    step = rep["xopd_step"]
    assert step["rows"] == 8 and step["checkpointing"] is True and step["tokens"] > 0
    assert rep["plan_step1_gb"]["peak"] > 0
