"""A text-only causal LM behind the PolicyModel interface: the teacher, or a text student.

Loads any Hugging Face causal-LM directory with its own tokenizer and chat template. The teacher is
frozen: ``requires_grad_(False)`` and ``eval()``; callers score it under ``torch.no_grad``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from xopd.errors import ModelError
from xopd.models.base import PolicyModel, Prompt, PromptBatch, left_pad


class TextLM(PolicyModel):
    """Wraps ``AutoModelForCausalLM`` + ``AutoTokenizer``; prompts must be text (view T)."""

    adapter = None  # no CTC front end

    def __init__(self, lm: nn.Module, tokenizer) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer

    def causal_lm(self) -> nn.Module:
        return self.lm

    def embed_prompts(self, prompts: Sequence[Prompt]) -> PromptBatch:
        rows = []
        emb = self.lm.get_input_embeddings()
        for p in prompts:
            if p.audio is not None or any(t.audio is not None for t in p.history):
                raise ModelError("a text LM cannot take audio: give it the transcript (view T)")
            ids = torch.tensor(self.text_prompt_ids(p), device=self.device)
            rows.append(emb(ids))
        return left_pad(rows)

    def save_pretrained(self, path: str) -> None:
        self.lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        frozen: bool = False,
        device: str | torch.device = "cpu",
    ) -> TextLM:
        """Load a standard HF causal-LM directory (config.json, weights, tokenizer files)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load as a causal LM: {str(e).splitlines()[0]}") from e
        model = cls(lm.to(device), tok)
        if frozen:
            model.requires_grad_(False)
            model.eval()
        return model


def load_teacher(path: str | os.PathLike, **kwargs) -> TextLM:
    """The text teacher: frozen, eval mode, its own tokenizer and chat template."""
    return TextLM.from_pretrained(path, frozen=True, **kwargs)
