"""The CPU decode backend: a thread policy, concurrent decode lanes and the lean decode step.

Registered with :mod:`xopd.generation.backend` by :func:`xopd.cpu.install`; it accepts only calls
whose prompts live on the CPU, so a GPU run never reaches it. Every piece keeps the core's results:
lanes split prompts that carry their own seeds (or decode greedily), the thread policy changes only
how ops are scheduled, and the lean step computes the model's forward (docs/BENCHMARKS.md has the
timings behind each threshold).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from xopd.cpu.fast_decode import fast_decoder
from xopd.cpu.heap import trim_heap
from xopd.cpu.onednn_linear import ONEDNN_MIN_PARAMS
from xopd.generation.backend import SampleSpec
from xopd.generation.sampling import Rollout, concat_rollouts, decode
from xopd.models.base import PolicyModel, PromptBatch

#: below this many FLOPs a decode step is bound by per-op overhead: one thread beats a fork/join per op
SMALL_DECODE_FLOPS = 1e8
#: above this many LM parameters one oneDNN-packed loop on all threads beats lanes (weights leave the cache)
LANE_MAX_PARAMS = ONEDNN_MIN_PARAMS
#: fewer rows than this a lane, and the per-lane Python loop costs more than the split saves
LANE_MIN_ROWS = 16


def _lm_params(model: PolicyModel) -> int:
    return sum(p.numel() for p in model.causal_lm().parameters())


@contextlib.contextmanager
def decode_threads(model: PolicyModel, rows: int, device: torch.device, threads: int = 0) -> Iterator[None]:
    """CPU threads for the decode loop: ``threads`` if > 0, else (auto) ONE thread when a step's matmuls
    are too small to split (< ``SMALL_DECODE_FLOPS``) and all threads otherwise. Restored on exit.

    Why: such steps are bound by per-op overhead, and every op split over OpenMP threads adds a
    fork/join; on a shared machine a descheduled worker thread stalls every op.
    """
    n = torch.get_num_threads()
    if threads <= 0:
        threads = 1 if 2 * rows * _lm_params(model) < SMALL_DECODE_FLOPS else n
    if device.type != "cpu" or threads == n:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def lanes_for(model: PolicyModel, prompts: PromptBatch, n: int, row_seeds, temperature: float,
              threads_setting: int) -> int:
    """Concurrent decode lanes: one per thread, each decoding its share of the prompts on ONE thread.

    Only where it cannot change results (prompts with their own seeds, or greedy; decode threads on
    auto) and where it is no slower than one loop split op by op: a small model (< ``LANE_MAX_PARAMS``,
    weights in cache) and >= ``LANE_MIN_ROWS`` rows per lane.
    """
    threads = torch.get_num_threads()
    batch = prompts.embeds.shape[0]
    if prompts.embeds.device.type != "cpu" or threads < 2 or batch < 2 or threads_setting > 0:
        return 1
    if row_seeds is None and temperature > 0:
        return 1
    lanes = min(threads, batch)
    if batch * n // lanes < LANE_MIN_ROWS:
        return 1
    return lanes if _lm_params(model) < LANE_MAX_PARAMS else 1


class CPUDecodeBackend:
    """Decodes CPU calls of :func:`xopd.generation.sample` (see the module docstring).

    ``fast_decode``: the lean decode step of :mod:`xopd.cpu.fast_decode` for Llama-family LMs;
    ``threads``: decode threads (0: auto, see :func:`decode_threads`); ``lanes``: allow decode lanes.
    """

    def __init__(self, fast_decode: bool = True, threads: int = 0, lanes: bool = True) -> None:
        self.fast_decode, self.threads, self.lanes = fast_decode, threads, lanes

    def accepts(self, model: PolicyModel, prompts: PromptBatch) -> bool:
        return prompts.embeds.device.type == "cpu"

    def release_memory(self) -> None:
        trim_heap()

    def _decode(self, model, prompts, spec, generator, row_seeds, static_cache, threads: int) -> Rollout:
        def loop(m: PolicyModel, rows: int, device: torch.device) -> contextlib.AbstractContextManager:
            return decode_threads(m, rows, device, threads)

        return decode(model, prompts, spec, generator, row_seeds, static_cache,
                      stepper=fast_decoder if self.fast_decode else None, loop_context=loop)

    def sample(self, model: PolicyModel, prompts: PromptBatch, spec: SampleSpec, generator: torch.Generator | None,
               row_seeds: Sequence[int] | None, static_cache: bool) -> Rollout:
        lanes = lanes_for(model, prompts, spec.n, row_seeds, spec.temperature, self.threads) if self.lanes else 1
        if lanes <= 1:
            return self._decode(model, prompts, spec, generator, row_seeds, static_cache, self.threads)
        return self._sample_in_lanes(model, prompts, spec, generator, row_seeds, static_cache, lanes)

    def _sample_in_lanes(self, model, prompts: PromptBatch, spec: SampleSpec, generator, row_seeds,
                         static_cache: bool, lanes: int) -> Rollout:
        """Split the prompts into ``lanes`` contiguous parts, decode them concurrently (Python threads;
        torch releases the GIL inside ops) with one intra-op thread each, and stitch the rollouts back.

        Per-prompt seeds make each part's samples exactly what the whole batch would give, so this is
        a pure speed-up.
        """
        batch = prompts.embeds.shape[0]
        bounds = [round(i * batch / lanes) for i in range(lanes + 1)]
        parts = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

        def run(lo: int, hi: int) -> Rollout:
            with torch.no_grad():  # grad mode is per thread
                part = PromptBatch(prompts.embeds[lo:hi], prompts.attention_mask[lo:hi])
                seeds = list(row_seeds[lo:hi]) if row_seeds is not None else None
                return self._decode(model, part, spec, generator, seeds, static_cache, 1)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(len(parts)) as pool:
                outs = list(pool.map(lambda b: run(*b), parts))
        finally:
            torch.set_num_threads(threads)
        return concat_rollouts(outs, model.pad_token_id, prompt_offsets=[lo for lo, _ in parts])
