"""What an algorithm is: a function from a micro-batch of examples to a differentiable loss.

The trainer owns the loop (accumulation, optimizer, checkpoints, logging); an algorithm only turns
examples into ``StepOutput``. Algorithms share the rollout/scoring pieces in ``rollout.py`` and the
loss functions in ``xopd.losses`` rather than copying them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xopd.data.manifest import Example
from xopd.models.base import PolicyModel, Prompt


@dataclass
class StepOutput:
    """``loss``: scalar to backpropagate; ``metrics``: floats to log; ``tokens``: trained tokens."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    generated_tokens: int = 0


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


class Algorithm(ABC):
    """Base class. Subclasses set ``name`` and implement ``step``."""

    name: str = ""
    uses_teacher: bool = True

    def __init__(self, cfg, student: PolicyModel, teacher: PolicyModel | None, vocab_limit: int | None = None):
        self.cfg = cfg
        self.student = student
        self.teacher = teacher
        self.vocab_limit = vocab_limit

    @abstractmethod
    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        """Loss for one micro-batch (rollouts included for on-policy algorithms)."""
