"""SFT: cross-entropy on reference responses (the paper's SFT baseline; also stage-1 alignment).

The response is the example's ``reference`` (or, for offline KD, a teacher-written response put
there), tokenized with the student's tokenizer and closed with EOS, teacher-forced after the prompt
of the configured view (``sft_view``: S for the speech LLM baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput, make_prompts
from xopd.algos.configs import SFTConfig
from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.generation import response_logits
from xopd.losses import aggregate, sft_cross_entropy


def tokenize_responses(tokenizer, texts: Sequence[str], eos_id: int, pad_id: int,
                       max_len: int | None = None, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids [N, L] (text + EOS, cut at ``max_len``) and their mask."""
    rows = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=False)["input_ids"]) + [eos_id]
        rows.append(ids[:max_len] if max_len else ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def reference_of(example: Example, field: str = "reference") -> str:
    text = getattr(example, field, None) if field in ("reference", "answer") else example.meta.get(field)
    if not text:
        raise DataError(f"example {example.id!r}: no {field!r} to train on (SFT needs reference responses)")
    return text


class SFT(Algorithm):
    name = "sft"
    uses_teacher = False
    config_cls = SFTConfig
    response_field = "reference"

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        cfg, student = self.cfg, self.student
        view = cfg.sft_view
        texts = [reference_of(ex, self.response_field) for ex in examples]
        ids, mask = tokenize_responses(student.tokenizer, texts, student.eos_token_ids[0], student.pad_token_id,
                                       cfg.max_new_tokens, student.device)
        batch = student.embed_prompts(make_prompts(examples, view, self.ctx.max_audio_seconds))
        logits = response_logits(student, batch, ids, mask)
        nll = sft_cross_entropy(logits, ids, mask, label_smoothing=cfg.label_smoothing)
        loss = aggregate(nll, mask, cfg.agg)
        return StepOutput(loss=loss, metrics={"nll": float(loss.detach()),
                                              "response_len": float(mask.sum(-1).float().mean())},
                          tokens=int(mask.sum()))
