"""X-OPD: cross-modal on-policy distillation (docs/DESIGN.md section 2).

For every prompt the student samples n responses from the speech view S (cross-modal term) and n
from the text view T (in-modal term). The frozen text teacher scores every sampled token given the
*transcript* T. Per-token advantage (k1): A = log pi_teacher(y_t | T, y_<t) - log pi_old(y_t | view, y_<t).

    L = lam * L_im + (1 - lam) * L_cm,   L_x = agg_j agg_t r_jt * A_jt,   r = pi_theta / pi_old

Both views go through ONE rollout, ONE teacher forward and ONE student forward (rows of the two
views side by side); the view only decides each row's weight. ``lam == 0`` or ``1`` drops the unused
view's rows entirely, so no compute is spent on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput, make_prompts
from xopd.algos.configs import PolicyLossConfig, RolloutConfig, XOPDConfig
from xopd.data.manifest import Example
from xopd.generation import response_logits, response_logprobs
from xopd.losses import (
    advantage,
    aggregate,
    entropy_from_logits,
    forward_kl_topk,
    gather_logprobs,
    generalized_jsd,
    policy_gradient_loss,
    reverse_kl,
)
from xopd.models.alignment import assert_same_response_length

VIEW_STREAM = {"S": 0, "T": 1}


def view_weights(lam: float) -> list[tuple[str, float]]:
    """[(view, weight)] with zero-weight views dropped: S carries 1 - lam, T carries lam."""
    return [(v, w) for v, w in (("S", 1.0 - lam), ("T", lam)) if w > 0.0]


class XOPD(Algorithm):
    name = "xopd"
    config_cls = (XOPDConfig, RolloutConfig, PolicyLossConfig)

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        cfg, student, teacher = self.cfg, self.student, self.teacher
        views = view_weights(cfg.lam)
        n = cfg.n_samples
        s_prompts, t_prompts = [], []
        for view, _ in views:
            s_prompts += make_prompts(examples, view, cfg.max_audio_seconds)
            t_prompts += make_prompts(examples, "T")
        rows_per_view = len(examples) * n

        # 1. rollout (no grad; the sampling log-probs are pi_old)
        with torch.no_grad():
            s_batch = student.embed_prompts(s_prompts)
            # one stream per view (S = 0, T = 1): a prompt's S and T samples are independent
            ro = self.rollout(student, s_batch, n, generator, stream=VIEW_STREAM[views[0][0]])
            # 2. teacher scores the same token ids given T
            t_batch = teacher.embed_prompts(t_prompts)  # each prompt once: its n responses share it
            direct = cfg.loss != "pg"
            if direct:
                t_logits = response_logits(teacher, t_batch, ro.ids, ro.mask, n=n)[..., : self.vocab_limit]
                t_lp = gather_logprobs(t_logits, ro.ids, chunk_size=cfg.logprob_chunk or None, mask=ro.mask)
            else:
                t_lp = response_logprobs(teacher, t_batch, ro.ids, ro.mask, vocab_limit=self.vocab_limit,
                                         chunk_size=cfg.logprob_chunk, n=n)
        assert_same_response_length(ro.ids, t_lp)

        # 3. student forward with grad (prompt embeddings recomputed so trainable parts get grads)
        s_train = student.embed_prompts(s_prompts)
        s_logits = response_logits(student, s_train, ro.ids, ro.mask, n=n)[..., : self.vocab_limit]
        s_lp = gather_logprobs(s_logits, ro.ids, temperature=cfg.temperature, chunk_size=cfg.logprob_chunk or None)
        mask = ro.mask
        chunk = cfg.logprob_chunk or None
        if direct:
            if cfg.loss == "reverse_kl":
                per_tok = reverse_kl(s_logits, t_logits, mask, temperature=cfg.temperature, chunk_size=chunk)
            elif cfg.loss == "jsd":
                per_tok = generalized_jsd(s_logits, t_logits, mask, beta=cfg.jsd_beta, temperature=cfg.temperature,
                                          chunk_size=chunk)
            else:
                per_tok = forward_kl_topk(s_logits, t_logits, mask, k=cfg.topk, chunk_size=chunk)
            adv = advantage(t_lp, ro.logprobs, mask, estimator="k1")  # logged only
        else:
            adv = advantage(t_lp, ro.logprobs, mask, estimator=cfg.estimator)
        # per-token k1 estimate of KL(student on its view || teacher on T), for logging
        kl_tok = (ro.logprobs - t_lp).masked_fill(~mask, 0.0)

        loss = s_lp.new_zeros(())
        metrics: dict[str, float] = {}
        for i, (view, weight) in enumerate(views):
            rows = slice(i * rows_per_view, (i + 1) * rows_per_view)
            m = mask[rows]
            if direct:
                term = aggregate(per_tok[rows], m, cfg.agg)
            else:
                term, stats = policy_gradient_loss(s_lp[rows], ro.logprobs[rows], adv[rows], m,
                                                   clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                                                   agg=cfg.agg)
                metrics[f"clip_frac_{view}"] = float(stats["clip_frac"])
            if cfg.entropy_coef:
                ent = entropy_from_logits(s_logits[rows], chunk_size=cfg.logprob_chunk or None)
                term = term - cfg.entropy_coef * aggregate(ent, m, cfg.agg)
            loss = loss + weight * term
            name = "cm" if view == "S" else "im"
            metrics[f"loss_{name}"] = float(term.detach())
            metrics[f"reverse_kl_{view}"] = float(kl_tok[rows].sum() / m.sum().clamp(min=1))
            metrics[f"response_len_{view}"] = float(m.sum(-1).float().mean())
        metrics["adv_mean"] = float(adv.sum() / mask.sum().clamp(min=1))
        metrics["reverse_kl"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
        metrics["eos_frac"] = ro.eos_fraction
        return StepOutput(loss=loss, metrics=metrics, tokens=ro.num_tokens, generated_tokens=ro.num_tokens)
