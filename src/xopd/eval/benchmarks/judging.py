"""Judges for the benchmarks' LLM-graded metrics: an OpenAI-compatible endpoint or a local HF model.

Both answer ``complete(messages, n=, temperature=, top_p=, max_tokens=) -> list[str]``:

* :class:`xopd.eval.judge.Judge` (``--judge-url`` + ``--judge-model``) sends the official sampling
  settings (VoiceBench: ``n=3``, temperature 0.5, top_p 0.95) and returns every choice;
* :class:`LocalJudge` (``--judge-model-dir``) runs any Hugging Face causal-LM directory with its
  own chat template, **greedy and one sample** whatever ``n`` asks: deterministic, and the report
  says so. A small local model is a weaker judge than the official GPT-4o-mini / o4-mini; numbers
  from it are comparable with each other, not with published tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from xopd.errors import ModelError

__all__ = ["LocalJudge", "describe_judge"]


@dataclass
class LocalJudge:
    """A local causal LM as judge (greedy decoding through xopd's own rollout code)."""

    model_dir: str
    device: str = "cpu"
    _model: Any = field(default=None, init=False, repr=False)

    def _load(self):
        if self._model is None:
            from xopd.models.text_lm import load_teacher

            if not os.path.isdir(self.model_dir):
                raise ModelError(f"--judge-model-dir {self.model_dir}: not a directory")
            self._model = load_teacher(self.model_dir, device=self.device)
        return self._model

    @torch.no_grad()
    def complete(
        self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        max_tokens: int = 256,
    ) -> list[str]:  # fmt: skip
        """One greedy reply to ``messages`` (``n``, ``temperature``, ``top_p`` are ignored: see module doc)."""
        from xopd.generation import sample
        from xopd.models.base import left_pad, render_messages_ids

        model = self._load()
        try:
            ids = render_messages_ids(model.tokenizer, messages)
        except Exception as e:  # templates that reject a system turn (e.g. Gemma): fold it into the user turn
            if messages and messages[0]["role"] == "system" and len(messages) > 1:
                merged = [{"role": messages[1]["role"], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
                ids = render_messages_ids(model.tokenizer, merged + messages[2:])
            elif isinstance(e, ModelError):
                raise
            else:
                raise ModelError(f"--judge-model-dir {self.model_dir}: chat template failed ({e})") from e
        emb = model.causal_lm().get_input_embeddings()
        batch = left_pad([emb(torch.tensor(ids, device=model.device))])
        ro = sample(model, batch, 1, max_tokens, temperature=0.0)
        out = ro.ids[0][ro.mask[0]].tolist()
        return [model.tokenizer.decode(out, skip_special_tokens=True).strip()]

    def grade(self, question: str, response: str, rubric: str | None = None, reference: str | None = None) -> float:
        """A manifest row's rubric grade, with the same prompt the HTTP judge gets."""
        from xopd.eval.judge import grade_with

        return grade_with(self, question, response, rubric, reference)


def describe_judge(judge: Any) -> dict[str, Any] | None:
    """The judge as the report names it."""
    if judge is None:
        return None
    if isinstance(judge, LocalJudge):
        return {"kind": "local", "model_dir": judge.model_dir, "decoding": "greedy, 1 sample"}
    return {"kind": "http", "url": judge.url, "model": judge.model, "decoding": "official sampling settings"}
