"""The trainer's eval hook: how far the student is from the teacher, as mean per-token reverse KL on the
student's own samples.

    KL_S = E_{y ~ pi_theta(.|S)} 1/|y| sum_t KL( pi_theta(.|S, y_<t) || pi_teacher(.|T, y_<t) )

computed exactly over the (shared) vocabulary at every sampled position, which has far less variance
than the single-sample k1 estimate the training loss uses. With a fixed seed the samples are
reproducible, so before/after numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import make_prompts
from xopd.data.manifest import Example
from xopd.generation import response_logits, sample
from xopd.generation.seeds import eval_seed
from xopd.losses import aggregate, reverse_kl
from xopd.models.base import PolicyModel
from xopd.utils.fsdp import full_params


@torch.no_grad()
def measure_reverse_kl(
    student: PolicyModel,
    teacher: PolicyModel,
    examples: Sequence[Example],
    view: str = "S",
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 1234,
    vocab_limit: int | None = None,
    batch_size: int = 16,
    max_audio_seconds: float | None = None,
) -> dict[str, float]:
    """Mean full-vocabulary reverse KL (student on ``view`` vs teacher on T), token-weighted."""
    gen = torch.Generator(device=student.device).manual_seed(seed)  # multinomial needs it on the probs' device
    total, tokens, lengths = 0.0, 0, []
    was_training = student.training
    student.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        s_batch = student.embed_prompts(make_prompts(chunk, view, max_audio_seconds))
        ro = sample(student, s_batch, n, max_new_tokens, temperature, generator=gen, vocab_limit=vocab_limit)
        t_batch = teacher.embed_prompts(make_prompts(chunk, "T")).repeat_interleave(n)
        s_logits = response_logits(student, s_batch.repeat_interleave(n), ro.ids, ro.mask)[..., :vocab_limit]
        t_logits = response_logits(teacher, t_batch, ro.ids, ro.mask)[..., :vocab_limit]
        kl = reverse_kl(s_logits, t_logits, ro.mask, temperature=temperature)
        ntok = int(ro.mask.sum())
        total += float(aggregate(kl, ro.mask, "token-mean")) * ntok
        tokens += ntok
        lengths += ro.mask.sum(-1).tolist()
    student.train(was_training)
    return {
        f"eval_reverse_kl_{view}": total / max(tokens, 1),
        f"eval_response_len_{view}": sum(lengths) / max(len(lengths), 1),
    }


class EvalHook:
    """Reverse KL on the eval prompts, per view (S and T when the rows have audio, else T), with the same
    seeded samples every time it runs; ``{}`` without a teacher or eval prompts."""

    def __init__(self, student: PolicyModel, teacher: PolicyModel | None, examples: Sequence[Example], cfg,
                 vocab_limit: int | None) -> None:
        self.student, self.teacher, self.examples, self.vocab_limit = student, teacher, examples, vocab_limit
        self.max_new_tokens, self.temperature = cfg.max_new_tokens, cfg.temperature
        self.seed, self.max_audio_seconds = eval_seed(cfg.seed), cfg.max_audio_seconds

    def __call__(self) -> dict[str, float]:
        if self.teacher is None or not self.examples:
            return {}
        with_audio = any(e.audio or e.waveform is not None for e in self.examples)
        res: dict[str, float] = {}
        for view in ["S", "T"] if with_audio else ["T"]:
            with full_params(self.student):  # every rank evaluates (same numbers); rank 0 logs
                res.update(measure_reverse_kl(self.student, self.teacher, self.examples, view=view, n=1,
                                              max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                              seed=self.seed, vocab_limit=self.vocab_limit,
                                              max_audio_seconds=self.max_audio_seconds))
        return res
