"""Giving freed C-heap memory back to the OS (glibc ``malloc_trim``)."""

from __future__ import annotations

_LIBC: dict = {}


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Why: glibc keeps freed blocks of a few hundred KB (activations, encoder outputs) in its heap
    instead of unmapping them, so a long run's RSS tracks its *largest* transient heap rather than
    its live tensors. A trim is not free: the next step faults the pages back in, which costs much more
    when trimming every step than every few steps, hence the trainer's default ``trim_heap_every``
    (``benchmarks/trim_ab.py``); eval trims once per generation batch. Allocation itself is unchanged; a
    fixed mmap threshold also cut RSS but made training steps far slower through page faults, so it is
    not used (docs/BENCHMARKS.md, 'Heap trimming'). ``XOPD_MALLOC_TRIM=0`` turns this off.
    """
    import os
    import sys

    if "fn" not in _LIBC:
        fn = None
        if sys.platform.startswith("linux") and os.environ.get("XOPD_MALLOC_TRIM", "1") != "0":
            import ctypes
            import ctypes.util

            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
                fn = None
        _LIBC["fn"] = fn
    fn = _LIBC["fn"]
    if fn is None:
        return False
    fn(0)
    return True
