"""Rollout engines: what generates an on-policy algorithm's samples of the student.

The trainer owns ONE engine for the student and passes it to the algorithm, which rolls out through
it (:meth:`xopd.algos.base.Algorithm.rollout`). The contract, as TRL's / verl's colocated engines
have it:

* ``generate``: n samples per prompt from prompt embeddings (a :class:`~xopd.models.base.PromptBatch`,
  so every student's audio goes through xopd's own tower and projector), with per-prompt seeds where
  the engine honours them; returns a :class:`~xopd.generation.sampling.Rollout` (ids, mask, sampling
  log-probs).
* ``update_weights``: called by the trainer after every optimizer step that changed the weights.
* ``sleep`` / ``wake``: an engine that holds memory of its own frees it while the trainer updates
  (``awake()`` wraps each rollout).

``hf`` (the default) is xopd's own decode loop (:func:`~xopd.generation.sampling.sample`) on the live
training module: its weights are always current, so the update and sleep calls are no-ops and a
resumed run samples exactly what an uninterrupted one does. Engines are chosen by name in
:mod:`xopd.generation.engines` (the registry; ``vllm`` is :mod:`xopd.generation.vllm_engine`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from xopd.generation.backend import SampleSpec
from xopd.generation.sampling import Rollout, sample
from xopd.models.base import PolicyModel, PromptBatch


class RolloutEngine:
    """Base class: the HF engine's behaviour is the default of every hook."""

    name = "base"
    #: whether ``Rollout.logprobs`` are the trainer's own log-probs of the sampling policy (pi_old). An
    #: engine with kernels of its own sets False; the algorithm then rescores the samples with the
    #: trainer's model for the importance ratio and logs the engine's log-probs against them.
    trainer_logprobs = True

    def generate(self, model: PolicyModel, prompts: PromptBatch, spec: SampleSpec,
                 generator: torch.Generator | None = None, row_seeds: Sequence[int] | None = None) -> Rollout:
        raise NotImplementedError

    def update_weights(self, model: PolicyModel) -> None:
        """Take the trainer's current weights (after an optimizer step)."""

    def sleep(self) -> None:
        """Free the engine's own memory while the trainer updates."""

    def wake(self) -> None:
        """Undo :meth:`sleep` before a rollout."""

    @contextlib.contextmanager
    def awake(self) -> Iterator[None]:
        """Awake for the duration of one rollout, asleep after it."""
        self.wake()
        try:
            yield
        finally:
            self.sleep()


class HFEngine(RolloutEngine):
    """xopd's own decode loop on the training module (any device; decode backends plug in below it)."""

    name = "hf"

    def generate(self, model: PolicyModel, prompts: PromptBatch, spec: SampleSpec,
                 generator: torch.Generator | None = None, row_seeds: Sequence[int] | None = None) -> Rollout:
        return sample(model, prompts, spec.n, spec.max_new_tokens, spec.temperature, spec.top_p, spec.top_k,
                      generator, vocab_limit=spec.vocab_limit, row_seeds=row_seeds)
