"""Machine facts for benchmark reports: CPU model, threads, measured fp32 matmul peak, peak RSS."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def cpu_model() -> str:
    """``Model name`` from lscpu (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_seconds(f: Callable[[], object], n: int = 20, warmup: int = 3) -> float:
    """Median wall seconds of ``n`` calls of ``f`` after ``warmup`` untimed ones (the A/B probes in
    ``benchmarks/``: the median ignores the odd call a busy machine slows down)."""
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _best_gflops(product, n: int, reps: int, rounds: int) -> float:
    """Best GFLOP/s of ``product(a, b)`` on two ``n x n`` fp32 matrices (best of ``rounds`` x ``reps``).

    Best-of: on a shared machine the maximum is the closest estimate of what the hardware does.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    product(a, b)  # warm-up (library init, kernel build, page faults)
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            product(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def matmul_peak_gflops(n: int = 2048, reps: int = 5, rounds: int = 5) -> float:
    """Best fp32 GFLOP/s of an ``n x n`` ``torch.mm`` (MKL on CPU) with the current thread count."""
    out = torch.empty(n, n)
    return _best_gflops(lambda a, b: torch.mm(a, b, out=out), n, reps, rounds)


def onednn_peak_gflops(n: int = 2048, reps: int = 5, rounds: int = 5) -> float | None:
    """Best fp32 GFLOP/s of an ``n x n`` product through oneDNN (``cpu/onednn_linear.py``), or None
    without it. On an AMD CPU with AVX-512 it is about twice ``matmul_peak_gflops`` (MKL takes AVX2 there)."""
    from xopd.cpu.onednn_linear import _gemm, onednn_linear_available

    if not onednn_linear_available():
        return None
    return _best_gflops(lambda a, b: _gemm(a, b, None), n, reps, rounds)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` from /proc/self/status, not ``ru_maxrss``: Linux keeps ru_maxrss across ``exec``, so a
    child started by a big parent would report the parent's size.
    """
    try:
        for line in open("/proc/self/status", encoding="utf-8"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, args: list[str], timeout: float = 1800) -> dict:
    """Run ``python -m module args`` and parse the JSON object on its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
