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
from dataclasses import dataclass

import torch

from xopd.algos.base import Algorithm, StepOutput, make_prompts
from xopd.algos.configs import XOPDConfig
from xopd.data.manifest import Example
from xopd.generation import response_logits, response_logprobs
from xopd.generation.lean_head import lean_head_ok, lean_response_logprobs
from xopd.generation.sampling import Rollout
from xopd.losses import (
    advantage,
    aggregate,
    direct_loss,
    entropy_from_logits,
    gather_logprobs,
    policy_gradient_loss,
)
from xopd.models.alignment import assert_same_response_length
from xopd.models.base import Prompt

VIEW_STREAM = {"S": 0, "T": 1}


def view_weights(lam: float) -> list[tuple[str, float]]:
    """[(view, weight)] with zero-weight views dropped: S carries 1 - lam, T carries lam."""
    return [(v, w) for v, w in (("S", 1.0 - lam), ("T", lam)) if w > 0.0]


@dataclass
class XOPDRollout:
    """What the no-grad phase (rollout + teacher scores) leaves for one micro-batch's loss."""

    student_prompts: list[Prompt]
    ro: Rollout
    teacher_logits: torch.Tensor | None  # full logits, for the direct losses only
    teacher_lp: torch.Tensor


class XOPD(Algorithm):
    """Names below: ``student_*`` / ``teacher_*`` say whose forward a tensor comes from; the views are
    always spelled out (``view`` "S" = speech, "T" = text), never abbreviated to a prefix."""

    name = "xopd"
    config_cls = XOPDConfig
    supports_rollout_batches = True

    def _lean(self) -> bool:
        """pg without an entropy bonus needs only the sampled tokens' log-probs: no full logits."""
        cfg = self.cfg
        return cfg.loss == "pg" and not cfg.entropy_coef and cfg.lean_head_on(self.student.device) \
            and lean_head_ok(self.student) and lean_head_ok(self.teacher)

    def prepare(self, batches: Sequence[Sequence[Example]], generator: torch.Generator) -> list[XOPDRollout]:
        """Steps 1-2 for several micro-batches at once (``rollout_batch_size``): ONE rollout and ONE teacher
        scoring of all their prompts, split back per micro-batch. Per-prompt seeds make each prompt's
        samples the same as in a rollout of its micro-batch alone."""
        cfg, student, teacher = self.cfg, self.student, self.teacher
        views = view_weights(cfg.lam)
        n = cfg.n_samples
        examples = [ex for b in batches for ex in b]
        # the student reads each kept view; the teacher always reads the transcript (T)
        student_prompts, teacher_prompts = [], []
        for view, _ in views:
            student_prompts += make_prompts(examples, view, self.ctx.max_audio_seconds)
            teacher_prompts += make_prompts(examples, "T")
        # 1. rollout (no grad; the sampling log-probs are pi_old); 2. the teacher scores the same ids given T
        with torch.no_grad():
            # one stream per view (S = 0, T = 1): a prompt's S and T samples are independent
            ro = self.rollout(student, student.embed_prompts(student_prompts), n, generator,
                              stream=VIEW_STREAM[views[0][0]])
            teacher_logits, teacher_lp = self._teacher_scores(teacher.embed_prompts(teacher_prompts), ro, n,
                                                              cfg.loss != "pg", self._lean())
        assert_same_response_length(ro.ids, teacher_lp)
        if len(batches) == 1:
            return [XOPDRollout(student_prompts, ro, teacher_logits, teacher_lp)]
        parts, lo, total = [], 0, len(examples)
        for b in batches:  # rows are [view][prompt][sample]: a micro-batch owns a slice of every view block
            prompts = [v * total + lo + i for v in range(len(views)) for i in range(len(b))]
            rows = torch.tensor([p * n + k for p in prompts for k in range(n)], device=ro.ids.device)
            sub = ro.select(rows)
            width = sub.ids.shape[1]
            parts.append(XOPDRollout([student_prompts[p] for p in prompts], sub,
                                     None if teacher_logits is None else teacher_logits[rows, :width],
                                     teacher_lp[rows, :width]))
            lo += len(b)
        return parts

    def step(self, examples: Sequence[Example], generator: torch.Generator,
             prepared: XOPDRollout | None = None) -> StepOutput:
        cfg, student = self.cfg, self.student
        views = view_weights(cfg.lam)
        n = cfg.n_samples
        prep = prepared if prepared is not None else self.prepare([examples], generator)[0]
        ro, teacher_logits, teacher_lp = prep.ro, prep.teacher_logits, prep.teacher_lp
        direct = cfg.loss != "pg"
        chunk = cfg.logprob_chunk or None

        # 3. student forward with grad (prompt embeddings recomputed so trainable parts get grads)
        student_batch = student.embed_prompts(prep.student_prompts)
        if self._lean():
            student_logits = None
            student_lp = lean_response_logprobs(student, student_batch, ro.ids, ro.mask, temperature=cfg.temperature,
                                                chunk=chunk or 1024, vocab_limit=self.vocab_limit, n=n)
        else:
            student_logits = response_logits(student, student_batch, ro.ids, ro.mask, n=n)[..., : self.vocab_limit]
            student_lp = gather_logprobs(student_logits, ro.ids, temperature=cfg.temperature, chunk_size=chunk)
        mask = ro.mask
        if direct:
            per_tok = direct_loss(cfg.loss)(student_logits, teacher_logits, mask, temperature=cfg.temperature,
                                            jsd_beta=cfg.jsd_beta, topk=cfg.topk, chunk_size=chunk)
            adv = advantage(teacher_lp, ro.logprobs, mask, estimator="k1")  # logged only
        else:
            per_tok = None
            adv = self.engine_corrected(advantage(teacher_lp, ro.logprobs, mask, estimator=cfg.estimator), ro)
        # per-token k1 estimate of KL(student on its view || teacher on T), for logging
        kl_tok = (ro.logprobs - teacher_lp).masked_fill(~mask, 0.0)
        loss, metrics = self._mix_views(views, len(examples) * n, ro, student_logits, student_lp, adv, per_tok, kl_tok)
        metrics["adv_mean"] = float(adv.sum() / mask.sum().clamp(min=1))
        metrics["reverse_kl"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
        metrics["eos_frac"] = ro.eos_fraction
        metrics.update(ro.engine_metrics())
        return StepOutput(loss=loss, metrics=metrics, tokens=ro.num_tokens, generated_tokens=ro.num_tokens)

    def _teacher_scores(self, teacher_batch, ro, n: int, direct: bool, lean: bool = False):
        """(full teacher logits or None, teacher log-probs of the sampled ids), prompts scored once for n."""
        cfg, teacher = self.cfg, self.teacher
        if lean:
            return None, lean_response_logprobs(teacher, teacher_batch, ro.ids, ro.mask, chunk=cfg.logprob_chunk or 1024,
                                                vocab_limit=self.vocab_limit, n=n)
        if direct:
            teacher_logits = response_logits(teacher, teacher_batch, ro.ids, ro.mask, n=n)[..., : self.vocab_limit]
            return teacher_logits, gather_logprobs(teacher_logits, ro.ids, chunk_size=cfg.logprob_chunk or None,
                                                   mask=ro.mask)
        return None, response_logprobs(teacher, teacher_batch, ro.ids, ro.mask, vocab_limit=self.vocab_limit,
                                       chunk_size=cfg.logprob_chunk, n=n)

    def _mix_views(self, views, rows_per_view: int, ro, student_logits, student_lp, adv, per_tok, kl_tok):
        """``sum_view weight * loss(view rows)`` and per-view metrics (``cm`` = S, ``im`` = T)."""
        cfg = self.cfg
        mask = ro.mask
        loss = student_lp.new_zeros(())
        metrics: dict[str, float] = {}
        for i, (view, weight) in enumerate(views):
            rows = slice(i * rows_per_view, (i + 1) * rows_per_view)
            m = mask[rows]
            if per_tok is not None:
                term = aggregate(per_tok[rows], m, cfg.agg)
            else:
                term, stats = policy_gradient_loss(student_lp[rows], ro.logprobs[rows], adv[rows], m,
                                                   clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                                                   agg=cfg.agg)
                metrics[f"clip_frac_{view}"] = float(stats["clip_frac"])
            if cfg.entropy_coef:
                ent = entropy_from_logits(student_logits[rows], chunk_size=cfg.logprob_chunk or None)
                term = term - cfg.entropy_coef * aggregate(ent, m, cfg.agg)
            loss = loss + weight * term
            name = "cm" if view == "S" else "im"
            metrics[f"loss_{name}"] = float(term.detach())
            metrics[f"reverse_kl_{view}"] = float(kl_tok[rows].sum() / m.sum().clamp(min=1))
            metrics[f"response_len_{view}"] = float(m.sum(-1).float().mean())
        return loss, metrics
