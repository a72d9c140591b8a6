"""Kernel choice by a short measurement on the machine at hand, cached on disk.

Why: whether oneDNN beats torch's default CPU GEMM depends on the CPU (MKL takes its AVX-512 path only
on Intel), its cache size, the thread count and the shapes, so a size threshold picks wrong somewhere
(docs/BENCHMARKS.md). A candidate kernel is used only when it measured faster than the plain one by
``MARGIN``, so no machine runs a path slower than plain, and a near-tie keeps the plain path (and its
digits). Decisions are cached per (CPU, torch, threads, shapes) in ``$XOPD_CACHE_DIR/kernels.json``
(default ``~/.cache/xopd``); ``XOPD_AUTOTUNE=0`` skips measuring and keeps every plain path.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: a candidate must run at least this much faster than the plain kernel to be chosen
MARGIN = 1.15
_MEMO: dict[str, bool] = {}


def cache_file() -> Path:
    root = os.environ.get("XOPD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "xopd")
    return Path(root) / "kernels.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{_cpu_name()}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def _best_time(fn: Callable[[], None], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(plain: Callable[[], None], candidate: Callable[[], None], reps: int = 5) -> float:
    """Speed-up of ``candidate`` over ``plain`` (> 1: faster): best of ``reps`` each, interleaved, after a warm-up."""
    plain(), candidate()
    tp = tc = float("inf")
    for _ in range(reps):
        tp = min(tp, _best_time(plain, 1))
        tc = min(tc, _best_time(candidate, 1))
    return tp / max(tc, 1e-12)


def _load() -> dict[str, dict]:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _store(key: str, entry: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load()
        data[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:  # a read-only home still works, it just measures again next time
        pass


def prefer(name: str, shape_key: str, plain: Callable[[], None], candidate: Callable[[], None]) -> bool:
    """Whether ``candidate`` beats ``plain`` by ``MARGIN`` here; measured once, then read from the cache."""
    if os.environ.get("XOPD_AUTOTUNE", "1") == "0":
        return False
    key = f"{name}|{shape_key}|{machine_key()}"
    if key in _MEMO:
        return _MEMO[key]
    entry = _load().get(key)
    if entry is None:
        with torch.no_grad() if name.endswith("no_grad") else torch.enable_grad():
            speedup = measure(plain, candidate)
        entry = {"speedup": round(speedup, 3), "chosen": speedup >= MARGIN}
        _store(key, entry)
    _MEMO[key] = bool(entry["chosen"])
    return _MEMO[key]
