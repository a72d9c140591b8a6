"""GKD: generalised knowledge distillation (Agarwal et al. 2024) as TRL's ``GKDTrainer`` runs it.

Per micro-batch, with probability ``gkd_lambda`` (TRL's ``lmbda``) the responses are the student's
own samples from the speech view S (on-policy); otherwise they are the dataset's reference
responses (off-policy, supervised KD), or with ``gkd_seq_kd`` fresh teacher samples on T (TRL's
``seq_kd``). On those response tokens the student (given S) is pulled toward the teacher (given T,
never the audio) by the token-level full-vocabulary generalised JSD
(:func:`xopd.losses.generalized_jsd`, TRL's convention: ``beta=0`` is forward KL(teacher || student),
the paper's GKD row, ``beta=1`` reverse KL), on the vocabulary the two tokenizers share.

Mirrored from TRL: one coin per micro-batch, not per row; the divergence runs at temperature 1 (TRL
passes no temperature to its loss; ``temperature`` only shapes sampling); the teacher is frozen
and detached. Differences, kept for a fair comparison with X-OPD: the coin is seeded by the
micro-batch's first prompt (``u < lambda``: lambda 0 never samples, 1 always; a resumed or a
2-process run draws the same coins), on-policy micro-batches sample ``n_samples`` responses per prompt like X-OPD and GRPO do,
and per-token losses are averaged with ``agg`` like every other algorithm here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xopd.algos.base import Algorithm, StepOutput, make_prompts
from xopd.algos.configs import GKDConfig
from xopd.algos.sft import reference_of, tokenize_responses
from xopd.data.manifest import Example
from xopd.errors import ConfigError
from xopd.generation import derive_seed, response_logits
from xopd.losses import aggregate, generalized_jsd

COIN_STREAM = 0x6B6D  # the coin's own stream of a prompt seed (the rollout's samples use 0, 1, ...)


class GKD(Algorithm):
    name = "gkd"
    config_cls = GKDConfig

    def __init__(self, cfg, student, teacher, vocab_limit=None, context=None, engine=None):
        super().__init__(cfg, student, teacher, vocab_limit, context, engine)
        if teacher is None:
            raise ConfigError("config: algo gkd needs a teacher (set teacher_path)")

    def draw_on_policy(self, generator: torch.Generator) -> bool:
        """One coin per micro-batch: True with probability ``gkd_lambda``.

        Under the trainer the coin is drawn from the micro-batch's first prompt seed (a function of seed,
        step and position in the global batch), so a 2-process run draws the coins a 1-process run draws
        for the same micro-batches and a resumed run draws them again; elsewhere from ``generator``."""
        seeds = getattr(generator, "prompt_seeds", None)
        if seeds:
            generator = torch.Generator().manual_seed(derive_seed(seeds[0], COIN_STREAM))
        u = float(torch.rand(1, generator=generator))
        return u < self.cfg.gkd_lambda

    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        cfg, student, teacher = self.cfg, self.student, self.teacher
        # references are checked whichever way the coin falls, so a manifest without them fails at once
        needs_refs = cfg.gkd_lambda < 1.0 and not cfg.gkd_seq_kd
        refs = [reference_of(ex) for ex in examples] if needs_refs else []
        on_policy = self.draw_on_policy(generator)
        s_prompts = make_prompts(examples, "S", self.ctx.max_audio_seconds)
        t_prompts = make_prompts(examples, "T")
        generated = 0
        with torch.no_grad():
            if on_policy:
                n = cfg.n_samples
                ro = self.rollout(student, student.embed_prompts(s_prompts), n, generator)
                ids, mask, generated = ro.ids, ro.mask, ro.num_tokens
            elif cfg.gkd_seq_kd:
                n = 1
                ro = self.rollout(teacher, teacher.embed_prompts(t_prompts), n, generator, stream=2)
                ids, mask, generated = ro.ids, ro.mask, ro.num_tokens
            else:
                n = 1
                ids, mask = tokenize_responses(
                    student.tokenizer,
                    refs,
                    student.eos_token_ids[0],
                    student.pad_token_id,
                    cfg.max_new_tokens,
                    student.device,
                )
            t_batch = teacher.embed_prompts(t_prompts)  # each prompt once: its n responses share it
            t_logits = response_logits(teacher, t_batch, ids, mask, n=n)[..., : self.vocab_limit]
        s_batch = student.embed_prompts(s_prompts)
        s_logits = response_logits(student, s_batch, ids, mask, n=n)[..., : self.vocab_limit]
        per_tok = generalized_jsd(
            s_logits, t_logits, mask, beta=cfg.gkd_beta, chunk_size=cfg.logprob_chunk or None
        )
        loss = aggregate(per_tok, mask, cfg.agg)
        metrics = {
            "gkd_divergence": float(loss.detach()),
            "on_policy": float(on_policy),
            "response_len": float(mask.sum(-1).float().mean()),
        }
        return StepOutput(loss=loss, metrics=metrics, tokens=int(mask.sum()), generated_tokens=generated)
