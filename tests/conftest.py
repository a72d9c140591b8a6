"""Shared test fixtures: one tiny teacher/student/manifest world per test session.

Built with :func:`xopd.lab.tiny.build_tiny_world` (offline, seeded, ~2 s). Session-scoped and
read-only by convention: a test that modifies a model must copy the directory first.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# kernel measurements of the CPU kit (xopd.cpu.autotune) go to a throw-away cache, not the user's
import tempfile  # noqa: E402

os.environ.setdefault("XOPD_CACHE_DIR", tempfile.mkdtemp(prefix="xopd-test-cache-"))

import pytest  # noqa: E402


def _silence_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


_silence_transformers()

# Tiny models are overhead-bound: one thread is as fast as two and keeps parallel test runs sane.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict[str, str]:
    """Paths of a tiny world: ``root``, ``teacher``, ``student``, ``manifest``, ``audio_dir``."""
    from xopd.lab.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"), n=8, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_world) -> str:
    return tiny_world["teacher"]


@pytest.fixture(scope="session")
def tiny_student_dir(tiny_world) -> str:
    return tiny_world["student"]


@pytest.fixture(scope="session")
def tiny_manifest(tiny_world) -> str:
    return tiny_world["manifest"]
