"""GRPO: RL with a verifiable reward and group-normalised advantages (the paper's RL baseline).

For every prompt the student samples ``n_samples`` responses from the speech view S. Each response
gets one scalar reward from the row's verifiable ``answer`` (:func:`verifiable_reward`: exact answer
for reasoning / instruction rows, ``1 - WER`` for ASR rows); the advantage of a response is its
reward standardised within its group (the n responses to the same prompt),

    A_j = (R_j - mean_g R) / (std_g R + eps)        (std: unbiased, as TRL and verl)

broadcast to every token of the response, and the loss is the same importance-weighted policy
gradient X-OPD uses (:func:`xopd.losses.policy_gradient_loss`, optional PPO clip). No teacher and no
KL-to-reference term: the reward is the only signal, which is the point of this baseline (the paper
reports that RL with a sparse verifiable reward does not recover the speech gap).

A group whose rewards are all equal carries no signal: its advantage is exactly 0 (not 0/eps noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput, make_prompts
from xopd.algos.configs import GRPOConfig
from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.generation import response_logits
from xopd.losses import aggregate, entropy_from_logits, gather_logprobs, policy_gradient_loss
from xopd.metrics import score_item

#: Tasks :func:`xopd.metrics.score_item` knows; any other task is scored by exact match.
SCORED_TASKS = ("reasoning", "instruct", "audio_only", "asr")
GROUP_EPS = 1e-6


def verifiable_reward(task: str | None, response: str, answer: str, mode: str = "task") -> float:
    """Reward in [0, 1] of one decoded response against the row's answer.

    ``mode="task"``: the mini world's own scoring for its tasks (``score_item``); rows of any other
    task (e.g. a user's ``arithmetic``) get the normalised exact match that ``instruct`` uses (the
    text after ``The answer is``, or the whole response when there is no such phrase).
    ``mode="exact"``: that exact match for every row, whatever its task.
    """
    if mode == "task" and task in SCORED_TASKS:
        return score_item(task, response, answer)
    return score_item("instruct", response, answer)


def group_advantages(
    rewards: torch.Tensor, n: int, scale_std: bool = True, eps: float = GROUP_EPS
) -> torch.Tensor:
    """Group-normalised advantages ``[N] -> [N]`` for rows ordered prompt0 x n, prompt1 x n, ...

    ``(R - group mean) / (group std + eps)`` (``scale_std=False``: only centred). Groups of one, and
    groups whose rewards are all equal, get exactly 0.
    """
    if rewards.numel() % n:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {n}")
    g = rewards.float().view(-1, n)
    if n == 1:
        return torch.zeros_like(rewards, dtype=torch.float32)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    flat = (g.amax(dim=1, keepdim=True) == g.amin(dim=1, keepdim=True)).expand_as(g)
    return torch.where(flat, torch.zeros_like(adv), adv).reshape(-1)


def decode_responses(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response texts ``[N, L] -> N`` strings (special tokens such as EOS dropped, stripped), as eval does."""
    return [
        tokenizer.decode(ids[i][mask[i]].tolist(), skip_special_tokens=True).strip()
        for i in range(ids.shape[0])
    ]


def sampling_vocab(model, vocab_limit: int | None) -> int:
    """Ids a policy may sample: the shared vocab if given, else the tokenizer's (never padding rows)."""
    size = min(model.vocab_size, len(model.tokenizer))
    return size if vocab_limit is None else min(size, vocab_limit)


class GRPO(Algorithm):
    name = "grpo"
    uses_teacher = False
    config_cls = GRPOConfig

    def rewards(
        self, examples: Sequence[Example], texts: Sequence[str], prompt_index: torch.Tensor
    ) -> torch.Tensor:
        """``[N]`` rewards of decoded responses, row i answering ``examples[prompt_index[i]]``."""
        mode = self.cfg.grpo_reward
        out = [
            verifiable_reward(examples[int(p)].task, t, examples[int(p)].answer, mode)
            for t, p in zip(texts, prompt_index.tolist())
        ]
        return torch.tensor(out, dtype=torch.float32)

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        cfg, student = self.cfg, self.student
        for ex in examples:
            if not ex.answer:
                raise DataError(
                    f"example {ex.id!r}: no 'answer' to reward (grpo needs a verifiable answer per "
                    "row; add 'answer' to the manifest or choose another algo)"
                )
        n = cfg.n_samples
        vocab = sampling_vocab(student, self.vocab_limit)
        prompts = make_prompts(examples, "S", self.ctx.max_audio_seconds)
        with torch.no_grad():
            ro = self.rollout(student, student.embed_prompts(prompts), n, generator, vocab_limit=vocab)
        texts = decode_responses(student.tokenizer, ro.ids, ro.mask)
        rewards = self.rewards(examples, texts, ro.prompt_index)
        seq_adv = group_advantages(rewards, n, cfg.grpo_scale_std).to(ro.logprobs.device)
        adv = self.engine_corrected(torch.where(ro.mask, seq_adv[:, None].expand_as(ro.logprobs), 0.0), ro)

        s_train = student.embed_prompts(prompts)  # each prompt once: its n samples share it
        s_logits = response_logits(student, s_train, ro.ids, ro.mask, n=n)[..., :vocab]
        s_lp = gather_logprobs(
            s_logits, ro.ids, temperature=cfg.temperature, chunk_size=cfg.logprob_chunk or None
        )
        loss, stats = policy_gradient_loss(
            s_lp,
            ro.logprobs,
            adv,
            ro.mask,
            clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high,
            agg=cfg.agg,
        )
        if cfg.entropy_coef:
            ent = entropy_from_logits(s_logits, chunk_size=cfg.logprob_chunk or None)
            loss = loss - cfg.entropy_coef * aggregate(ent, ro.mask, cfg.agg)
        groups = rewards.view(-1, n)
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_group_std": float(groups.std(dim=1).mean()),
            "solved_frac": float((groups.amax(dim=1) >= 1.0).float().mean()),  # groups with a correct answer
            "flat_group_frac": float((groups.amax(dim=1) == groups.amin(dim=1)).float().mean()),
            "adv_abs_mean": float(seq_adv.abs().mean()),
            "clip_frac": float(stats["clip_frac"]),
            "response_len": float(ro.mask.sum(-1).float().mean()),
            "eos_frac": ro.eos_fraction,
            **ro.engine_metrics(),
        }
        return StepOutput(loss=loss, metrics=metrics, tokens=ro.num_tokens, generated_tokens=ro.num_tokens)
