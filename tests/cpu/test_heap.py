"""Heap trimming: glibc malloc_trim, switchable off by the environment."""

from __future__ import annotations


def test_trim_heap_runs_on_linux_and_can_be_disabled(monkeypatch):
    import sys

    from xopd.cpu import heap as memory

    monkeypatch.setattr(memory, "_LIBC", {})
    monkeypatch.setenv("XOPD_MALLOC_TRIM", "0")
    assert memory.trim_heap() is False
    monkeypatch.setattr(memory, "_LIBC", {})
    monkeypatch.delenv("XOPD_MALLOC_TRIM")
    assert memory.trim_heap() is sys.platform.startswith("linux")
