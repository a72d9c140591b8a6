"""What an algorithm is: a function from a micro-batch of examples to a differentiable loss.

The trainer owns the loop (accumulation, optimizer, checkpoints, logging); an algorithm only turns
examples into ``StepOutput``. Algorithms share the sampling and scoring pieces of :mod:`xopd.generation` and the
loss functions in ``xopd.losses`` rather than copying them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xopd.data.manifest import Example
from xopd.errors import ConfigError
from xopd.generation import SampleSpec, derive_seed, response_logprobs, sample
from xopd.generation.engine import HFEngine, RolloutEngine
from xopd.generation.sampling import Rollout
from xopd.losses import truncated_is_weight
from xopd.models.base import PolicyModel, Prompt, PromptBatch


@dataclass
class StepOutput:
    """``loss``: scalar to backpropagate; ``metrics``: floats to log; ``tokens``: trained tokens.

    ``step_mean``: the loss is already normalised over the whole step's tokens (Hugging Face's
    ``num_items_in_batch``), so the trainer backpropagates it as is instead of dividing it by the
    number of accumulated micro-batches.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    generated_tokens: int = 0
    step_mean: bool = False


def make_prompt(example: Example, view: str, max_audio_seconds: float | None = None) -> Prompt:
    """The S or T view of one example.

    S: the audio (plus the row's ``instruction`` if it has one, e.g. an audio-only question).
    T: the transcript (plus the same instruction), the teacher's view of the same request.
    A row marked ``text_only`` (meta) is always T: text instruction data mixed into a speech SFT,
    as speech LLMs do to keep their text skills while they learn to hear.
    """
    instruction = example.meta.get("instruction") if example.meta else None
    if view == "S" and example.meta and example.meta.get("text_only"):
        view = "T"
    if view == "S":
        wav = example.load_waveform(max_seconds=max_audio_seconds)
        return Prompt(text=instruction, audio=wav, view="S")
    text = example.text if not instruction else f"{example.text}\n{instruction}"
    return Prompt(text=text, view="T")


def make_prompts(examples: Sequence[Example], view: str, max_audio_seconds: float | None = None) -> list[Prompt]:
    return [make_prompt(ex, view, max_audio_seconds) for ex in examples]


@dataclass(frozen=True)
class AlgoContext:
    """Facts about the run an algorithm may need besides its own config: where outputs go, which
    teacher (for cache keys), the run's seed and the longest audio a prompt keeps."""

    seed: int = 0
    output_dir: str = "."
    teacher_path: str | None = None
    max_audio_seconds: float | None = None

    @classmethod
    def of(cls, cfg: Any) -> AlgoContext:
        """The context of a training config (any object with these attributes; missing ones default)."""
        return cls(**{f.name: getattr(cfg, f.name, f.default) for f in dataclasses.fields(cls)})


def own_config(cls: type, cfg: Any) -> Any:
    """An instance of exactly ``cls`` with its fields read from ``cfg`` (e.g. the flat ``TrainConfig``)."""
    if type(cfg) is cls:
        return cfg
    missing = [f.name for f in dataclasses.fields(cls) if not hasattr(cfg, f.name)]
    if missing:
        raise ConfigError(f"config: {cls.__name__} needs {', '.join(missing)}, which {type(cfg).__name__} lacks")
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


class Algorithm(ABC):
    """Base class. Subclasses set ``name`` and ``config_cls`` and implement ``step``.

    ``self.cfg`` is an instance of ``config_cls`` only (:mod:`xopd.algos.configs`): an algorithm sees
    its own keys and nothing else; run facts come as ``self.ctx`` (:class:`AlgoContext`). The student's
    rollouts go through ``self.engine`` (:mod:`xopd.generation.engine`; the trainer's, else ``hf``).
    """

    name: str = ""
    uses_teacher: bool = True
    #: the algorithm's own typed config; ``xopd train --help`` and docs/DESIGN.md list its keys
    config_cls: type = object

    def __init__(self, cfg, student: PolicyModel, teacher: PolicyModel | None = None, vocab_limit: int | None = None,
                 context: AlgoContext | None = None, engine: RolloutEngine | None = None):
        self.cfg = own_config(self.config_cls, cfg)
        self.engine = engine if engine is not None else HFEngine()
        self.ctx = context if context is not None else AlgoContext.of(cfg)
        self.student = student
        self.teacher = teacher
        self.vocab_limit = vocab_limit

    @abstractmethod
    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        """Loss for one micro-batch (rollouts included for on-policy algorithms)."""

    #: whether :meth:`prepare` rolls out several micro-batches at once (``rollout_batch_size``)
    supports_rollout_batches: bool = False

    def prepare(self, batches: Sequence[Sequence[Example]], generator: torch.Generator) -> list[Any]:
        """The no-grad work (rollouts, teacher scores) of several micro-batches in one go, one item per
        micro-batch, each then passed to ``step(..., prepared=item)``. Only for algorithms that set
        ``supports_rollout_batches``."""
        raise NotImplementedError(f"{type(self).__name__} rolls out per micro-batch")

    def rollout(self, model: PolicyModel, prompts, n: int, generator: torch.Generator, stream: int = 0,
                vocab_limit: int | None = None):
        """Sample ``n`` responses per prompt the way every on-policy algorithm here does.

        Per-prompt seeds come from the trainer's step generator (``prompt_seeds``, one per example, from
        (seed, step, position in the global batch)), mixed with ``stream`` so that two rollouts of one
        step (X-OPD's S and T views) draw independently. A prompt's samples are then the same whatever
        micro-batch or rank it lands in, so algorithms differ only in what they do with the samples.
        ``prompts`` is a :class:`~xopd.models.base.PromptBatch` whose rows follow the examples (repeated
        once per stream block, as X-OPD's views are).
        """
        cfg = self.cfg
        seeds = getattr(generator, "prompt_seeds", None)
        rows = prompts.embeds.shape[0]
        row_seeds = None
        if seeds is not None:
            blocks = rows // len(seeds)
            row_seeds = [derive_seed(s, stream + b) for b in range(blocks) for s in seeds]
        vocab = self.vocab_limit if vocab_limit is None else vocab_limit
        if model is not self.student:  # e.g. GKD's teacher-generated share: always xopd's own loop
            return sample(model, prompts, n, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, generator,
                          vocab_limit=vocab, row_seeds=row_seeds)
        spec = SampleSpec(n, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, vocab)
        engine = self.engine
        with engine.awake():
            ro = engine.generate(model, prompts, spec, generator, row_seeds)
        if not engine.trainer_logprobs:
            ro = self._rescore(model, prompts, ro, n, vocab)
        return ro

    def engine_corrected(self, adv: torch.Tensor, ro: Rollout) -> torch.Tensor:
        """``adv`` x the truncated importance weight (``tis_cap``) where the samples came from an engine's own
        kernels (``ro.engine_logprobs``); ``adv`` unchanged otherwise."""
        cap = getattr(self.cfg, "tis_cap", 0.0)
        if not cap or ro.engine_logprobs is None:
            return adv
        return adv * truncated_is_weight(ro.logprobs, ro.engine_logprobs, ro.mask, cap)

    def _rescore(self, model: PolicyModel, prompts: PromptBatch, ro: Rollout, n: int, vocab: int | None) -> Rollout:
        """pi_old from the trainer's own forward (the engine's log-probs kept in ``engine_logprobs``): the
        importance ratio then compares like with like, whatever kernels the engine runs."""
        temperature = self.cfg.temperature if self.cfg.temperature > 0 else 1.0  # greedy logs the plain softmax
        with torch.no_grad():
            trainer_lp = response_logprobs(model, prompts, ro.ids, ro.mask, temperature=temperature,
                                           vocab_limit=vocab, n=n)
        return dataclasses.replace(ro, logprobs=trainer_lp, engine_logprobs=ro.logprobs)
