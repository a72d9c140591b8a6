"""Per-algorithm settings, one typed config each (TRL's ``GKDConfig`` style).

Each algorithm's config (``XOPDConfig``, ``SFTConfig``, ...) is built from the shared groups it reads
(``RolloutConfig``, ``PolicyLossConfig``, ...) plus its own keys, and the algorithm receives an
instance of exactly that class (:attr:`xopd.algos.base.Algorithm.config_cls`), nothing else.
``xopd.training.config.TrainConfig`` inherits all of them, so one YAML file or command line still sets
every key flat (``lam: 0.5``, ``gkd_beta: 0.0``). Validation of a group lives with the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xopd.config import field
from xopd.errors import ConfigError
from xopd.losses.functional import AGG_MODES
from xopd.losses.registry import DIRECT_LOSSES

#: "pg" (the paper) and the registered direct losses
LOSSES = ("pg", *DIRECT_LOSSES)


def _bad(key: str, why: str) -> ConfigError:
    return ConfigError(f"config: '{key}' {why}")


@dataclass
class RolloutConfig:
    """How responses are sampled (every on-policy algorithm and offline KD's teacher)."""

    n_samples: int = field(4, help="responses sampled per prompt and view")
    max_new_tokens: int = field(64, help="longest sampled response")
    temperature: float = field(1.0, help="sampling temperature (student log-probs use the same)")
    top_p: float = field(1.0, help="nucleus sampling (1.0 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")

    def check(self) -> None:
        if self.temperature <= 0:
            raise _bad("temperature", f"must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class LossAggConfig:
    """How per-token losses become one number, and how the vocabulary is chunked on the way."""

    agg: str = field("seq-mean-token-mean", choices=AGG_MODES, help="how per-token losses are averaged")
    logprob_chunk: int = field(0, help="rows per chunk for log-softmax over the vocab (0 = no chunking)")

    def check(self) -> None:
        if self.logprob_chunk < 0:
            raise _bad("logprob_chunk", f"must be >= 0 (0: no chunking), got {self.logprob_chunk}")


@dataclass
class PolicyLossConfig(LossAggConfig):
    """The PPO-style knobs of policy-gradient losses."""

    clip_eps: float | None = field(None, help="PPO clip range for the importance ratio (None: no clip)")
    clip_eps_high: float | None = field(None, help="upper clip range (default: clip_eps)")
    entropy_coef: float = field(0.0, help="entropy bonus weight (0 = off)")
    lean_head: str = field("auto", choices=("auto", "on", "off"),
                           help="loss pg: sampled-token log-probs straight from the LM head, logprob_chunk rows at "
                           "a time (1024 if 0), never the [rows, length, vocab] logits; auto = on on CUDA")
    tis_cap: float = field(0.0, help="truncated importance sampling for rollouts whose engine samples with kernels "
                           "of its own: each token's advantage x min(pi_trainer / pi_engine, tis_cap) (verl's TIS; "
                           "2.0 is common); 0 = off. The hf engine samples from the trainer's own log-probs: no effect")

    def lean_head_on(self, device: torch.device) -> bool:
        return self.lean_head == "on" or (self.lean_head == "auto" and device.type == "cuda")

    def check(self) -> None:
        if self.clip_eps is not None and self.clip_eps <= 0:
            raise _bad("clip_eps", f"must be > 0 or None, got {self.clip_eps}")
        if self.tis_cap < 0:
            raise _bad("tis_cap", f"must be >= 0 (0: off), got {self.tis_cap}")


@dataclass
class XOPDConfig(RolloutConfig, PolicyLossConfig):
    """X-OPD (docs/DESIGN.md section 2): the views' mix and the per-token loss."""

    lam: float = field(0.5, help="X-OPD lambda: weight of the in-modal (T) term; 1-lam on cross-modal (S)")
    loss: str = field("pg", choices=LOSSES, help="pg: policy gradient on per-token advantage (paper); "
                      "reverse_kl/jsd/topk_forward_kl: direct (supervised) losses on full logits")
    estimator: str = field("k1", choices=("k1", "k3"), help="per-token advantage estimator for loss=pg")
    jsd_beta: float = field(0.5, help="beta for loss=jsd (0: forward KL, 1: reverse KL)")
    topk: int = field(20, help="k for loss=topk_forward_kl")

    def check(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise _bad("lam", f"must be in [0, 1], got {self.lam}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise _bad("jsd_beta", f"must be in [0, 1], got {self.jsd_beta}")


@dataclass
class SFTConfig(LossAggConfig):
    """SFT and offline KD: supervised cross-entropy on references or teacher outputs."""

    max_new_tokens: int = field(64, help="longest sampled response (sft: references are cut to it)")
    sft_view: str = field("S", choices=("S", "T"), help="prompt view for sft/offline_kd (S: speech, as the paper)")
    label_smoothing: float = field(0.0, help="sft/offline_kd: label smoothing of the cross-entropy (0 = off)")

    def check(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise _bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


@dataclass
class GKDConfig(RolloutConfig, LossAggConfig):
    """GKD (Agarwal et al.; TRL's GKDTrainer): mixed on-/off-policy generalised JSD."""

    gkd_lambda: float = field(0.5, help="gkd: probability that a micro-batch trains on the student's own samples "
                              "from S (on-policy); otherwise on the reference responses (TRL's lmbda)")
    gkd_beta: float = field(0.0, help="gkd: generalised-JSD beta (0: forward KL(teacher || student), 1: reverse KL)")
    gkd_seq_kd: bool = field(False, help="gkd: off-policy micro-batches use fresh teacher samples on T instead of "
                             "the references (TRL's seq_kd)")

    def check(self) -> None:
        for key in ("gkd_lambda", "gkd_beta"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise _bad(key, f"must be in [0, 1], got {getattr(self, key)}")


@dataclass
class OfflineKDConfig(RolloutConfig, SFTConfig):
    """Offline KD: SFT on the teacher's own responses, generated once and cached."""

    kd_cache: str | None = field(None, help="offline_kd: JSONL cache of teacher responses, shareable across runs "
                                 "(default: <output_dir>/kd_cache.jsonl)")
    kd_temperature: float = field(0.0, help="offline_kd: teacher temperature for its responses (0: greedy; "
                                  ">0: sampled with top_p/top_k, seeded by seed and example id)")

    def check(self) -> None:
        if self.kd_temperature < 0:
            raise _bad("kd_temperature", f"must be >= 0 (0: greedy), got {self.kd_temperature}")


@dataclass
class GRPOConfig(RolloutConfig, PolicyLossConfig):
    """GRPO: group-normalised verifiable rewards."""

    grpo_reward: str = field("task", choices=("task", "exact"), help="grpo: task = score by the row's task "
                             "(reasoning/instruct/audio_only exact, asr 1-WER; other tasks exact match); "
                             "exact = normalised exact match for every row")
    grpo_scale_std: bool = field(True, help="grpo: divide group-centred rewards by the group std "
                                 "(False: centre only, as Dr. GRPO)")


@dataclass
class CTCConfig:
    """algo ctc: training a SpeechLLM's CTC adapter to hear."""

    ctc_punctuation: bool = field(True, help="algo ctc: align to the transcript as written (punctuation "
                                  "included, as Whisper writes it) instead of normalised words")
    ctc_augment: bool = field(True, help="algo ctc: SpecAugment-style time masks and channel dropout on the "
                              "encoder states (regularises a small adapter)")
