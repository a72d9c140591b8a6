"""Small pieces of a run's state: the resumable data order, and stopping cleanly on a signal."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from xopd.errors import XopdError
from xopd.generation.seeds import epoch_seed


class DataOrder:
    """Endless, seeded, resumable stream of example indices: a fresh permutation every epoch."""

    def __init__(self, size: int, seed: int, epoch: int = 0, index: int = 0) -> None:
        self.size, self.seed, self.epoch, self.index = size, seed, epoch, index
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.size:
                self.epoch, self.index = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            out.append(self._perm[self.index])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


class TrainingInterrupted(XopdError):
    """SIGINT/SIGTERM stopped an unfinished run after saving a checkpoint.

    Exits 128 + signal (130 for SIGINT, 143 for SIGTERM) rather than 0, so a scheduler or a
    ``train && eval`` pipeline never mistakes a stopped run for a finished one; ``--resume`` continues it.
    """

    def __init__(self, signum: int, step: int, output_dir: Path) -> None:
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; saved {output_dir / f'checkpoint-{step}'}; "
                         "continue with --resume")


class StopFlag:
    """SIGINT/SIGTERM ask the loop to save and exit after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
