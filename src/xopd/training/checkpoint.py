"""Atomic checkpoints: a run never loses more than the steps since its last save.

Layout of ``OUTPUT_DIR/checkpoint-STEP/``::

    model/               the student, via its own save_pretrained (safetensors)
    optimizer.pt         optimizer state (tensors and numbers only: loaded with weights_only=True)
    scheduler.pt         LR scheduler state (same)
    rng.pt               torch / numpy / python RNG states
    trainer_state.json   step, data position, counters, config; written LAST = completeness marker

LoRA runs add ``adapter/`` (:mod:`xopd.training.lora`); ``distributed: fsdp2`` runs add ``dcp/`` (a torch
distributed checkpoint of model and optimizer, one shard per rank, which resume loads) while
``model/`` holds the consolidated weights. This module owns all checkpoint I/O of the trainer.

Everything is written into a hidden temp folder beside it, each file fsync'ed, then the folder is
renamed into place (atomic on POSIX) and the parent folder fsync'ed. Old checkpoints are pruned only
after the new one is complete, so the newest complete checkpoint always exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xopd.errors import ConfigError
from xopd.training.distributed import DistContext
from xopd.training.lora import load_adapter, merged_state_dict, save_adapter
from xopd.utils.io import fsync_dir, fsync_tree

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep_last: int = 3,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoint-{step}`` atomically, then prune to the newest ``keep_last``.

    ``optimizer=None`` skips ``optimizer.pt`` (FSDP2 runs keep it in ``dcp/``); ``extra(tmp)`` writes
    further parts (LoRA adapter, sharded state) into the temp folder before it is sealed.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(str(tmp / "model"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if extra is not None:
        extra(tmp)
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2, default=str))
    fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        trash = output_dir / f".trash-checkpoint-{step}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(output_dir)
    prune_checkpoints(output_dir, keep_last)
    return final


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    cks = list_checkpoints(output_dir)
    return cks[-1][1] if cks else None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and stale temp folders."""
    output_dir = Path(output_dir)
    cks = list_checkpoints(output_dir)
    for _, path in cks[: max(0, len(cks) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)
    for p in output_dir.glob(".tmp-checkpoint-*"):
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def load_training_state(ckpt: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer (unless None), scheduler and RNG from ``ckpt``; return its trainer_state dict."""
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
    return json.loads((ckpt / STATE_FILE).read_text())


# ----------------------------------------------------------------------------- checkpoints (fsdp2)
def _dcp_state(student: nn.Module, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(student, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_sharded(path: Path, student: nn.Module, optimizer, ctx: DistContext) -> None:
    """All ranks: write model + optimizer as a torch distributed checkpoint under ``path``."""
    import torch.distributed.checkpoint as dcp

    if ctx.is_main and path.exists():
        shutil.rmtree(path)
    ctx.barrier()
    dcp.save(_dcp_state(student, optimizer), checkpoint_id=str(path))
    ctx.barrier()


def load_sharded(path: Path, student: nn.Module, optimizer) -> None:
    """All ranks: restore model + optimizer from a DCP folder written by :func:`save_sharded`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp_state(student, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(student, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


@contextlib.contextmanager
def consolidated_state(student: nn.Module, ctx: DistContext) -> Iterator[None]:
    """Inside, on rank 0, ``state_dict()`` of the student (and of any submodule) returns full tensors.

    All ranks gather the full state (``get_model_state_dict``, offloaded to CPU on rank 0); a
    state-dict hook on every module swaps its shards for the full copies, so the model's own
    ``save_pretrained`` writes its usual layout (SpeechLLM: encoder/, lm/, projector) unchanged.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    handles = []
    if ctx.is_main:
        for fqn, mod in student.named_modules():
            own = [n for n, _ in mod.named_parameters(recurse=False)] + [
                n for n, _ in mod.named_buffers(recurse=False)
            ]
            if not own:
                continue

            def hook(module, sd, prefix, meta, fqn=fqn, own=own):
                for n in own:
                    src = f"{fqn}.{n}" if fqn else n
                    if prefix + n in sd and src in full:
                        sd[prefix + n] = full[src]

            handles.append(mod.register_state_dict_post_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def save_training_checkpoint(
    out: Path,
    step: int,
    student: nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep_last: int,
    ctx: DistContext,
    lora: bool,
) -> None:
    """Every rank calls this; rank 0 writes ``checkpoint-{step}`` (see module docstring for fsdp2)."""
    parts = []
    if lora:
        parts.append(lambda tmp: save_adapter(student, tmp))
    sharded = ctx.kind == "fsdp2"
    if sharded:
        dcp_tmp = Path(out) / f".tmp-dcp-{step}"
        save_sharded(dcp_tmp, student, optimizer, ctx)
        parts.append(lambda tmp: os.rename(dcp_tmp, tmp / "dcp"))

    def extra(tmp: Path) -> None:
        for part in parts:
            part(tmp)

    with consolidated_state(student, ctx) if sharded else contextlib.nullcontext():
        if ctx.is_main:
            with merged_state_dict():
                save_checkpoint(
                    out,
                    step,
                    student,
                    None if sharded else optimizer,
                    scheduler,
                    state,
                    keep_last=keep_last,
                    extra=extra,
                )
        ctx.barrier()


def load_training_checkpoint(
    ckpt: Path, student: nn.Module, optimizer, scheduler, ctx: DistContext, lora: bool
) -> dict[str, Any]:
    """Every rank: restore adapter (LoRA), model+optimizer (DCP for fsdp2), scheduler and RNG."""
    if lora and ctx.kind != "fsdp2":
        load_adapter(student, ckpt)
    if ctx.kind == "fsdp2":
        if not (ckpt / "dcp").is_dir():
            raise ConfigError(
                f"{ckpt}: no dcp/ folder: this checkpoint was not written by a distributed: fsdp2 "
                "run; resume it with the distributed setting it was trained with"
            )
        load_sharded(ckpt / "dcp", student, optimizer)
        return load_training_state(ckpt, None, scheduler)
    if not (ckpt / "optimizer.pt").is_file():
        raise ConfigError(
            f"{ckpt}: no optimizer.pt (written by an fsdp2 run): resume with distributed: fsdp2"
        )
    return load_training_state(ckpt, optimizer, scheduler)
