"""CTC: teach a SpeechLLM's front end to hear (stage-1 alignment of its CTC adapter).

The adapter's CTC head is trained against each row's transcript ``text`` (what was said), tokenized
with the LM's own tokenizer, so the recognised tokens are the LM's tokens. No LM forward is needed:
a step is the frozen encoder (cached) + the adapter. Rows marked ``text_only`` have no audio and
are skipped. ``ctc_punctuation`` keeps the transcript as written (punctuation included: an ASR
model such as Whisper writes it, from pauses and intonation); off, the targets are normalised words.

``ctc_augment`` (SpecAugment-style, Park et al. 2019, on the frozen encoder's states): two time masks
of up to 10 frames (0.2 s) per clip and 10 % channel dropout, drawn from the step's generator so a
resumed run sees the same masks; with the adapter's own dropout, this is what keeps a small adapter
from memorising a few thousand clips (it lowered the held-out token error; docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput
from xopd.algos.configs import CTCConfig
from xopd.data.manifest import Example
from xopd.errors import ConfigError, DataError
from xopd.metrics import normalize_text


def ctc_target(tokenizer, text: str, punctuation: bool = True) -> list[int]:
    """Token ids the adapter should emit for ``text`` (as written, or normalised words only)."""
    ids = list(tokenizer(text if punctuation else normalize_text(text), add_special_tokens=False)["input_ids"])
    if not ids:
        raise DataError(f"transcript {text!r} has no tokens to align to")
    return ids


def spec_augment(hidden: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, time_masks: int = 2,
                 max_width: int = 10, channel_drop: float = 0.1) -> torch.Tensor:
    """Zero ``time_masks`` random spans of up to ``max_width`` frames per clip (inside its length) and drop
    channels with probability ``channel_drop`` (rescaled, as dropout): ``[B, T, D]`` -> same shape."""
    out = hidden.clone()
    for b in range(out.shape[0]):
        n = int(lengths[b])
        for _ in range(time_masks):
            w = int(torch.randint(0, max_width + 1, (1,), generator=generator))
            if n > w:
                start = int(torch.randint(0, n - w + 1, (1,), generator=generator))
                out[b, start : start + w] = 0.0
    if channel_drop > 0:
        keep = (torch.rand(out.shape, generator=generator) >= channel_drop).to(out.device)
        out = out * keep.to(out.dtype) / (1.0 - channel_drop)
    return out


class CTC(Algorithm):
    name = "ctc"
    uses_teacher = False
    config_cls = CTCConfig

    def __init__(self, cfg, student, teacher=None, vocab_limit=None, context=None, engine=None) -> None:
        super().__init__(cfg, student, teacher, vocab_limit, context, engine)
        if student.adapter is None:
            raise ConfigError("config: algo 'ctc' needs a student with a CTC adapter (compose one with "
                              "`xopd models compose --adapter ctc`)")

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        cfg, student = self.cfg, self.student
        rows = [e for e in examples if not (e.meta and e.meta.get("text_only"))]
        if not rows:
            zero = sum(p.sum() * 0.0 for p in student.adapter.parameters())
            return StepOutput(loss=zero, metrics={"ctc": 0.0})
        wavs = [e.load_waveform(max_seconds=self.ctx.max_audio_seconds) for e in rows]
        hidden, h_len = student.encode_hidden(wavs)
        adapter = student.adapter
        hidden = hidden.to(adapter.inp.weight.dtype)
        if cfg.ctc_augment:
            hidden = spec_augment(hidden, h_len, generator)
        was_training = adapter.training
        adapter.train()  # the adapter's dropout is part of the recipe (the trainer keeps models in eval mode)
        try:
            _, logits, n = adapter.frames(hidden, h_len)
        finally:
            adapter.train(was_training)
        targets = [ctc_target(student.tokenizer, e.text, cfg.ctc_punctuation) for e in rows]
        loss = adapter.ctc_loss(logits, n, targets)
        return StepOutput(loss=loss, metrics={"ctc": float(loss.detach())}, tokens=sum(map(len, targets)))
