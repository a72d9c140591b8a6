"""How far the student is from the teacher: mean per-token reverse KL on the student's own samples.

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
from xopd.losses import aggregate, reverse_kl
from xopd.models.base import PolicyModel


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
    gen = torch.Generator().manual_seed(seed)
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
