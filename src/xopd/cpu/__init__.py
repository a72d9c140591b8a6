"""The CPU speed kit: what makes xopd fast on a few CPU cores, kept out of the device-agnostic core.

Pieces (each keeps the core's results, up to float rounding, and acts only on CPU tensors):
  * :mod:`xopd.cpu.decode` — a decode backend for :func:`xopd.generation.sample`: thread policy,
    concurrent decode lanes, and the lean decode step of :mod:`xopd.cpu.fast_decode`;
  * :mod:`xopd.cpu.onednn_linear` — fp32 linears through oneDNN, chosen by measurement
    (:mod:`xopd.cpu.autotune`);
  * :mod:`xopd.cpu.heap` — handing freed C-heap memory back to the OS.

It plugs in explicitly, like nanochat's ``flash_attention.py`` behind one API that falls back by device:
:func:`install` registers the decode backend for the process, :class:`CPUTrainerHooks` is the
trainer callback (threads, linear kernel, heap trimming). Without them the core runs its plain path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields

import torch

from xopd.cpu.config import CPUConfig
from xopd.cpu.decode import CPUDecodeBackend
from xopd.cpu.heap import trim_heap
from xopd.cpu.onednn_linear import select_linear_kernel
from xopd.generation.backend import register_backend, registered_backends, unregister_backend
from xopd.training.callbacks import TrainerCallback, TrainRun

__all__ = ["CPUConfig", "CPUDecodeBackend", "CPUTrainerHooks", "activated", "cpu_config", "install", "trim_heap"]


def cpu_config(cfg) -> CPUConfig:
    """The kit's settings read from any config with (some of) its keys; missing keys keep their defaults."""
    return CPUConfig(**{f.name: getattr(cfg, f.name) for f in fields(CPUConfig) if hasattr(cfg, f.name)})


def install(cfg: CPUConfig | None = None) -> CPUDecodeBackend:
    """Register the CPU decode backend for this process (replacing an earlier one) and set the thread
    count; returns the backend. ``cfg`` may be any config with the kit's keys."""
    cfg = cpu_config(cfg) if cfg is not None else CPUConfig()
    for b in registered_backends():
        if isinstance(b, CPUDecodeBackend):
            unregister_backend(b)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    backend = CPUDecodeBackend(fast_decode=cfg.fast_decode, threads=cfg.decode_threads)
    register_backend(backend)
    return backend


@contextlib.contextmanager
def activated(cfg: CPUConfig | None = None) -> Iterator[CPUDecodeBackend]:
    """:func:`install` for the duration of a ``with`` block; the previous backends come back after it."""
    before = registered_backends()
    threads = torch.get_num_threads()
    backend = install(cfg)
    try:
        yield backend
    finally:
        unregister_backend(backend)
        for b in reversed(before):
            if b not in registered_backends():
                register_backend(b)
        torch.set_num_threads(threads)


class CPUTrainerHooks(TrainerCallback):
    """The kit's trainer callback: thread count at the start, the linear kernel once the models are
    ready, a heap trim every ``trim_heap_every`` steps (so RSS tracks live tensors)."""

    def __init__(self, cfg) -> None:
        self.cfg = cpu_config(cfg)

    def on_train_begin(self, run: TrainRun) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)

    def on_models_ready(self, run: TrainRun) -> None:
        select_linear_kernel(self.cfg.linear_kernel, run.device, run.dtype, run.student, run.teacher)

    def on_step_end(self, run: TrainRun, step: int) -> None:
        every = self.cfg.trim_heap_every
        if every and step % every == 0 and run.device.type == "cpu":
            trim_heap()
