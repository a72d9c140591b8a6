"""Data-parallel training with ``torchrun``: replicated (``ddp``) or sharded with FSDP2 (``fsdp2``).

Launch: ``torchrun --nproc_per_node=N -m xopd.cli train --config c.yaml --distributed ddp|fsdp2``.
Without torchrun's environment a run with ``distributed != none`` becomes a 1-process group (same
code path, handy for tests and for checking a config before scaling out).

What is distributed, and why this way:
  * **Data**: every rank draws the same global data order; step s's ``batch_size`` prompts are split
    into contiguous per-rank slices (``batch_size`` stays the GLOBAL prompts per step). Sampling noise
    is drawn per prompt from ``(seed, step, global position)`` (see ``rollout.row_noise``), so a prompt
    samples the same tokens whichever rank or micro-batch it lands in: N processes reproduce the
    1-process run on the same global batch (up to float rounding).
  * **ddp**: the student is replicated; after the accumulation micro-batches, gradients are averaged
    with one bucketed ``all_reduce`` (what DDP's reducer computes, with ``no_sync`` during
    accumulation). We do not wrap the model in ``DistributedDataParallel`` because an X-OPD step is
    not one ``module(...)`` call: prompts are embedded outside the LM (audio encoder + projector),
    the rollout runs dozens of no-grad forwards, and DDP's reducer requires every backward to follow
    exactly one wrapper forward.
  * **fsdp2**: ``fully_shard`` on every decoder layer and on the causal LM root (final norm, LM head);
    the input-embedding table is left out of the shards (``ignored_params``) because prompts are
    embedded by direct calls outside the LM's forward, so it is replicated like everything else
    outside the LM and averaged by the same ``all_reduce``. Rollouts run with the LM unsharded once
    (:func:`full_params`), so decoding has no per-token collectives and ranks may stop at different
    lengths; the training forward/backward then runs sharded as usual (reduce-scatter of grads).
  * **teacher**: frozen, inference only; with fsdp2 (``shard_teacher``, on by default) its LM is sharded
    like the student's, else replicated on every rank.
  * **checkpoints**: rank 0 writes the usual layout; with fsdp2 the model and optimizer are also
    saved as a torch distributed checkpoint (``dcp/``, one shard file per rank) that resume loads,
    while ``model/`` holds the consolidated weights (so ``xopd eval`` and ``load_student`` work).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from xopd.errors import ConfigError
from xopd.utils.fsdp import is_dtensor

KINDS = ("none", "ddp", "fsdp2")


@dataclass
class DistContext:
    """Where this process sits in the run: ``kind``, ``rank`` of ``world``, and its device."""

    kind: str = "none"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled and self.world > 1:
            dist.barrier()

    def all_reduce_(self, t: torch.Tensor, op: str = "avg") -> torch.Tensor:
        """In-place sum/avg across ranks (gloo has no AVG: sum then divide)."""
        if self.enabled and self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            if op == "avg":
                t.div_(self.world)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # Every rank reaches this point before any tears its group down, so no rank destroys its gloo
            # pairs while a peer is still in the final checkpoint's collectives. Added against a rare abort
            # at interpreter exit ("terminate called without an active exception", SIGABRT, after "[xopd]
            # done"); it did not stop it (the abort still happens, rarely; docs/BENCHMARKS.md), cause unknown.
            self.barrier()
            dist.destroy_process_group()


def init_distributed(kind: str, device: torch.device) -> DistContext:
    """Join (or create) the process group for ``kind``; ``none`` returns a 1-process context."""
    if kind not in KINDS:
        raise ConfigError(f"config: 'distributed' must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "none":
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ConfigError(
                f"config: launched with {os.environ['WORLD_SIZE']} processes (torchrun) but 'distributed' is "
                "none: every process would train alone into the same output_dir; set --distributed ddp or fsdp2"
            )
        return DistContext(device=device)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and world > 1:
            dist.init_process_group(backend, rank=rank, world_size=world)
        else:  # no torchrun: a 1-process group so the same code path runs
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            rank, world = 0, 1
        owns = True
    else:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(kind, rank, world, local_rank, device, owns)


# ----------------------------------------------------------------------------- model wrapping
def _decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The LM's repeated blocks: HF's ``_no_split_modules`` classes, else the longest ModuleList."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    found = [m for m in lm.modules() if type(m).__name__ in names]
    if found:
        return found
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap_student(student: nn.Module, ctx: DistContext, param_dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    """Shard the student's LM for fsdp2 (no-op for ddp); return the REPLICATED trainable params.

    Those are averaged by :func:`sync_grads`; FSDP-managed params are reduce-scattered in backward.
    ``param_dtype`` (e.g. bf16 on GPUs): FSDP2's mixed precision, the unsharded weights (forward,
    backward, and the rollout's one gather) in that dtype, while the sharded master weights, the
    optimizer and the gradient reduction stay in the weights' own dtype (fp32).
    """
    trainable = [p for p in student.parameters() if p.requires_grad]
    if ctx.kind != "fsdp2":
        return trainable
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    lm = student.causal_lm()
    ignored = {p for p in lm.get_input_embeddings().parameters()}
    master = next(lm.parameters()).dtype
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=master) if param_dtype not in (None, master) \
        else MixedPrecisionPolicy()
    for layer in _decoder_layers(lm):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # the root's logits come back in the master dtype: the losses' log-softmax stays in fp32
    root = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype,
                                output_dtype=master if mp.param_dtype is not None else None)
    fully_shard(lm, mesh=mesh, ignored_params=ignored, mp_policy=root)
    return [p for p in student.parameters() if p.requires_grad and not is_dtensor(p)]


def shard_teacher(teacher: nn.Module, ctx: DistContext) -> bool:
    """fsdp2: shard the frozen teacher's LM over the ranks like the student's (each layer gathered for its
    forward and freed after), instead of a full copy per GPU. Every rank scores its micro-batch with the
    same number of teacher forwards, so the gathers line up; teacher rollouts (GKD) gather it whole once
    (:func:`~xopd.utils.fsdp.full_params`). Returns whether it sharded."""
    if ctx.kind != "fsdp2" or ctx.world < 2:
        return False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    lm = teacher.causal_lm()
    ignored = set(lm.get_input_embeddings().parameters())  # prompts are embedded outside the forward
    for layer in _decoder_layers(lm):
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh, ignored_params=ignored)
    return True


def sync_grads(params: Sequence[nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of replicated ``params`` across ranks with one flat all_reduce."""
    if not ctx.enabled or ctx.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    ctx.all_reduce_(flat, "avg")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[offset : offset + n].view_as(g)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float, ctx: DistContext) -> torch.Tensor:
    """Global grad-norm clipping over a mix of sharded (DTensor) and replicated params.

    ``torch.nn.utils.clip_grad_norm_`` is used unchanged when nothing is sharded (so single-process
    runs are bit-identical to before); otherwise shard norms are summed across ranks.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if ctx.kind != "fsdp2" or not any(is_dtensor(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    local = torch.zeros((), dtype=torch.float64, device=ctx.device)
    rep = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for g in grads:
        if is_dtensor(g):
            local += g.to_local().double().pow(2).sum()
        else:
            rep += g.double().pow(2).sum()
    ctx.all_reduce_(local, "sum")
    total = (local + rep).sqrt().float()
    if max_norm != float("inf"):
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            (g.to_local() if is_dtensor(g) else g).mul_(coef)
    return total


def reduce_step_metrics(
    values: dict[str, float], ctx: DistContext, sums: Sequence[str] = ()
) -> dict[str, float]:
    """Average (or, for keys in ``sums``, add) per-rank scalars so rank 0 logs global numbers."""
    if not ctx.enabled or ctx.world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    ctx.all_reduce_(t, "sum")
    return {k: float(v) if k in sums else float(v) / ctx.world for k, v in zip(keys, t.tolist())}


class NullLogger:
    """Metrics sink for non-zero ranks: rank 0 alone writes metrics.jsonl / TensorBoard."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


