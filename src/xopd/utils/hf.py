"""Quiet Hugging Face libraries: no download progress bars or info logs in our own progress output."""

from __future__ import annotations

import os


def quiet_hf(offline: bool = True) -> None:
    """Silence transformers' logging and progress bars; with ``offline`` never reach for the Hub (every
    model xopd loads is a local directory). Environment settings the user made win (``setdefault``)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
