"""run_isolated: a function in a fresh process gives back its result, its exception, or a clear error."""

from __future__ import annotations

import os

import pytest

from xopd.errors import ConfigError, XopdError
from xopd.utils.isolate import peak_rss_mb, run_isolated


def _pid_and_threads(x: int, *, add: int = 0) -> tuple[int, int, int]:
    import torch

    return os.getpid(), torch.get_num_threads(), x + add


def _fails() -> None:
    raise ConfigError("bad key 'lr' in job.yaml")


def _dies() -> None:
    os._exit(3)  # no word back: as when the OS kills a process that ran out of memory


def test_result_comes_back_from_another_process():
    pid, threads, value = run_isolated("job", _pid_and_threads, 40, add=2, threads=1)
    assert value == 42 and threads == 1 and pid != os.getpid()
    assert peak_rss_mb() > 0


def test_child_exception_is_reraised_with_its_type_and_message():
    with pytest.raises(ConfigError, match="bad key 'lr' in job.yaml"):
        run_isolated("job", _fails)


def test_child_that_dies_silently_is_named():
    with pytest.raises(XopdError, match=r"stage x: its process ended with exit code 3"):
        run_isolated("stage x", _dies)
