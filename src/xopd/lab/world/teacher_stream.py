"""The teacher's data and loss: an endless stream of fresh problems, pre-tokenized, and next-token NLL
on their responses with a token mean over the whole optimizer step (what :func:`train_teacher
<xopd.lab.world.teacher.train_teacher>` feeds the core trainer)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput
from xopd.algos.configs import SFTConfig
from xopd.data.manifest import Example
from xopd.lab.world.tasks import generate_items
from xopd.losses import sft_cross_entropy
from xopd.metrics import normalize_text
from xopd.models.base import render_chat_ids

__all__ = ["TEACHER_TASKS", "PretokenizedSFT", "TeacherStream"]

TEACHER_TASKS = ("reasoning", "instruct")


class TeacherStream:
    """Endless fresh training problems: chunks of ``generate_items(train)`` with chunk-dependent seeds,
    mixed so that a ``reasoning_frac`` share of every batch is reasoning (the harder task)."""

    def __init__(
        self, tok, seed: int, reasoning_frac: float, kind_weights: dict | None = None, chunk: int = 512,
        unpunctuated_frac: float = 0.0,
    ) -> None:
        self.tok, self.seed, self.frac, self.chunk = tok, seed, reasoning_frac, chunk
        self.unpunctuated_frac = unpunctuated_frac
        w = dict(kind_weights or {})
        self.accept = {k: v / max(w.values()) for k, v in w.items()} if w else {}
        self.rng = random.Random(f"teacher-mix:{seed}")
        self.pools: dict[str, list] = {t: [] for t in TEACHER_TASKS}
        self.chunks = dict.fromkeys(TEACHER_TASKS, 0)
        self.tokens = self.response_tokens = 0  # all tokens and response tokens served so far

    def _next(self, task: str):
        if not self.pools[task]:
            c = self.chunks[task]
            self.chunks[task] += 1
            seed = 1_000_003 * (self.seed + 1) + c  # never the eval seeds; deterministic per chunk
            self.pools[task] = generate_items(task, "train", self.chunk, seed=seed, unique=False)[::-1]
        return self.pools[task].pop()

    def _instruct(self):
        """An instruct item, kinds re-weighted by rejection (slow-to-learn kinds more often)."""
        while True:
            item = self._next("instruct")
            if self.rng.random() < self.accept.get(item.template.split("/")[1], 1.0):
                return item

    def batch(self, n: int, micro: int = 2) -> list[list[Example]]:
        """``n`` fresh rows as ``micro`` length-sorted micro-batches of pre-tokenized examples
        (``meta``: ``input_ids`` = prompt + response + EOS, ``prompt_len``, and the whole batch's
        ``step_response_tokens``, by which each micro-batch's summed NLL is divided).

        Why length buckets: a reasoning row is much longer than an instruct row, so one padded batch
        wastes much of its compute on padding; two buckets cut that for one extra (cheap) forward.
        """
        rows: list[tuple[str, list[int], int]] = []
        for _ in range(n):
            item = self._next("reasoning") if self.rng.random() < self.frac else self._instruct()
            text = item.text
            if self.unpunctuated_frac and self.rng.random() < self.unpunctuated_frac:
                text = normalize_text(text)  # text as people also type it: no punctuation
            prompt = render_chat_ids(self.tok, text)
            resp = self.tok(item.reference, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            rows.append((text, prompt + resp, len(prompt)))
        n_resp = sum(len(ids) - p for _, ids, p in rows)
        self.tokens += sum(len(ids) for _, ids, _ in rows)
        self.response_tokens += n_resp
        order = sorted(range(n), key=lambda i: len(rows[i][1]))
        size = -(-n // max(1, micro))
        meta = lambda i: {"input_ids": rows[i][1], "prompt_len": rows[i][2], "step_response_tokens": n_resp}  # noqa: E731
        return [[Example(id=f"teacher-{i}", text=rows[i][0], meta=meta(i)) for i in order[lo : lo + size]]
                for lo in range(0, n, size)]


class PretokenizedSFT(Algorithm):
    """The teacher's loss: next-token NLL on the response tokens of pre-tokenized rows (right-padded
    per micro-batch), summed and divided by the whole step's response tokens (``step_mean``)."""

    name = "teacher_sft"
    uses_teacher = False
    config_cls = SFTConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_loss = torch.zeros(())  # the step's loss so far, summed in float32 like the recipe always has

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        pad = self.student.pad_token_id
        width = max(len(ex.meta["input_ids"]) for ex in examples)
        ids, labels, mask = [], [], []
        for ex in examples:
            row, p, n_pad = ex.meta["input_ids"], ex.meta["prompt_len"], width - len(ex.meta["input_ids"])
            ids.append(row + [pad] * n_pad)
            labels.append([-100] * p + row[p:] + [-100] * n_pad)
            mask.append([1] * len(row) + [0] * n_pad)
        dev = self.student.device
        ids, labels, mask = (torch.tensor(x, device=dev) for x in (ids, labels, mask))
        logits = self.student.causal_lm()(input_ids=ids, attention_mask=mask).logits
        nll = sft_cross_entropy(logits[:, :-1], labels[:, 1:], labels[:, 1:] >= 0)
        loss = nll.sum() / max(1, examples[0].meta["step_response_tokens"])
        self.step_loss = self.step_loss + loss.detach().to(self.step_loss.device)
        return StepOutput(loss=loss, tokens=int(mask.sum()), step_mean=True)
