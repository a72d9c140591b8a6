"""Helpers for the reliability suite: run ``xopd`` as a real subprocess, write odd wav files, and
build the common ``xopd train`` argument list for the tiny world (fast: 2 samples, 8 tokens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

XOPD = Path(sys.executable).with_name("xopd")

#: the tiny world's fast ``xopd train`` settings; tests change what they need with :func:`fast_args`
FAST_SETTINGS = {"n_samples": 2, "max_new_tokens": 8, "batch_size": 4, "micro_batch_size": 2, "lr": "1e-3",
                 "progress": "false", "report_to": "jsonl", "eval_prompts": 2, "threads": 1}


def fast_args(**over) -> list[str]:
    """``FAST_SETTINGS`` with ``over`` applied, as ``--key value`` tokens."""
    return [tok for k, v in {**FAST_SETTINGS, **over}.items() for tok in (f"--{k}", str(v))]


FAST = fast_args()


def subprocess_env() -> dict[str, str]:
    """One thread, offline, quiet: what a user's shell would run, minus the noise."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=NPROC -m xopd.cli ARGS`` (gloo on CPU, one thread per process);
    asserts it succeeded and returns the completed process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", "-m", "xopd.cli", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_xopd(
    *args: str, cwd: str | os.PathLike | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``xopd ARGS`` as a subprocess (argument list, no shell); returns the completed process."""
    exe = str(XOPD) if XOPD.exists() else shutil.which("xopd")
    assert exe, "the xopd console script is not installed in this environment"
    return subprocess.run(
        [exe, *map(str, args)],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def popen_xopd(*args: str, log: Path, cwd: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start ``xopd ARGS`` in the background, stdout+stderr to ``log`` (a file: a pipe nobody reads
    could fill up and stall the child)."""
    exe = str(XOPD) if XOPD.exists() else shutil.which("xopd")
    with open(log, "w") as f:
        return subprocess.Popen(
            [exe, *map(str, args)],
            cwd=cwd,
            env=subprocess_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
        )


def train_argv(
    world: dict[str, str], out: str | os.PathLike, steps: int, *extra: str, manifest: str | None = None
) -> list[str]:
    """``train ...`` argv for the tiny world (``manifest`` overrides the world's)."""
    return [
        "train",
        "--student_path",
        world["student"],
        "--teacher_path",
        world["teacher"],
        "--manifest",
        manifest or world["manifest"],
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        *FAST,
        *extra,
    ]


def write_wav(
    path: Path, data: np.ndarray, sr: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype, format=fmt)
    return path


def tone(seconds: float = 0.3, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_manifest_lines(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON), str (written as is) or bytes (raw, e.g. invalid UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row)
            f.write(row if isinstance(row, bytes) else row.encode("utf-8"))
            f.write(b"\n")
    return path


def one_line_error(stderr: str) -> str:
    """The single user-facing error line; fails if there is a traceback or no error line."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1, stderr
    return errors[0]


GOOD_ROWS = [
    {
        "id": "good-0",
        "audio": "audio/0000.wav",
        "text": "what is 6 plus 3?",
        "task": "arithmetic",
        "answer": "9",
    },
    {"id": "good-1", "audio": "audio/0001.wav", "text": "repeat after me cat red"},
]
