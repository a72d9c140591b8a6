"""Run one function in a fresh process, so the memory it touched goes back to the OS when it ends.

A long pipeline in one Python process only ever grows: the allocator keeps freed arenas, and every
stage leaves tensors, caches and fragments behind, so a later stage in the pipeline's own process peaks
much higher than the same stage alone in a fresh process (``xopd demo``'s figures: docs/BENCHMARKS.md,
'Process isolation'). Each stage reads its inputs from disk and writes its outputs there, so it can run
in a child as well as in this process; only its (picklable) return value travels back.
"""

from __future__ import annotations

import multiprocessing
import resource
import traceback
from collections.abc import Callable
from typing import Any

from xopd.errors import XopdError


def _child(conn: Any, threads: int | None, fn: Callable, args: tuple, kwargs: dict) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent, then the child exits
        traceback.print_exc()
        try:
            conn.send(("error", e))
        except Exception:  # an exception that does not pickle travels as its text
            conn.send(("error", XopdError(f"{type(e).__name__}: {e}")))
        raise SystemExit(1) from None
    conn.send(("ok", result))


def run_isolated(name: str, fn: Callable, *args: Any, threads: int | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a spawned child process; returns its result or re-raises its exception.

    ``fn`` and its arguments must pickle (a module-level function; dataclasses, paths, lists). The child
    starts from a clean interpreter (spawn, not fork: no copy of this process's heap or threads) and
    uses ``threads`` torch threads. A child that dies without a word (killed, out of memory) raises
    :class:`XopdError` naming ``name`` and its exit code."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child_conn, threads, fn, args, kwargs), name=f"xopd-{name}")
    proc.start()
    child_conn.close()  # so recv() sees EOF if the child dies before sending
    try:
        try:
            status, payload = parent_conn.recv()
        except EOFError:
            status, payload = "died", None
        proc.join()
    finally:
        if proc.is_alive():  # e.g. Ctrl-C in this process while the child still runs
            proc.terminate()
            proc.join()
        parent_conn.close()
    if status == "ok":
        return payload
    if status == "error":
        raise payload
    raise XopdError(f"{name}: its process ended with exit code {proc.exitcode} before reporting a result "
                    "(killed, or out of memory?)")


def peak_rss_mb() -> float:
    """The larger of this process's peak resident set and that of its largest finished child, in MB
    (Linux reports ``ru_maxrss`` in KB; for children it is the largest single child, not a sum)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0
