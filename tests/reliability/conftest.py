"""Fixtures for the reliability suite (helpers live in ``_helpers.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path, tiny_world) -> Path:
    """A fresh data folder with two good rows whose audio is copied from the tiny world."""
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    src = Path(tiny_world["audio_dir"])
    for name in ("0000.wav", "0001.wav"):
        shutil.copy(src / name, root / "audio" / name)
    return root
