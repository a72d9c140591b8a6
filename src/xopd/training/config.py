"""``TrainConfig``: every knob of ``xopd train``, with help text; YAML keys and ``--key value`` alike."""

from __future__ import annotations

from dataclasses import dataclass

from xopd.algos.configs import (
    CTCConfig,
    GKDConfig,
    GRPOConfig,
    OfflineKDConfig,
    PolicyLossConfig,
    RolloutConfig,
    SFTConfig,
    XOPDConfig,
)
from xopd.config import field
from xopd.errors import ConfigError

ALGOS = ("xopd", "sft", "offline_kd", "gkd", "grpo", "ctc")
TEACHER_ALGOS = ("xopd", "offline_kd", "gkd")


@dataclass
class RunConfig:
    """What to train, on what, and where the outputs go."""

    student_path: str | None = field(None, help="student directory (SpeechLLM, Qwen2-Audio or causal LM)")
    teacher_path: str | None = field(None, help="text teacher: any Hugging Face causal-LM directory")
    manifest: str | None = field(None, help="training JSONL manifest: id, audio (relative path), text")
    eval_manifest: str | None = field(None, help="manifest for the periodic eval hook (default: manifest)")
    output_dir: str = field("runs/train", help="checkpoints, metrics.jsonl and TensorBoard logs go here")
    bootstrap: str | None = field(
        None, choices=("tiny",), help="build missing assets first: 'tiny' makes a tiny student/teacher/manifest"
    )
    algo: str = field("xopd", choices=ALGOS, help="training algorithm")


@dataclass
class OptimConfig:
    """The optimizer, its schedule and the batch."""

    lr: float = field(1e-5, help="peak learning rate (AdamW)")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    adam_beta1: float = field(0.9, help="AdamW beta1")
    adam_beta2: float = field(0.999, help="AdamW beta2")
    adam_eps: float = field(1e-8, help="AdamW epsilon")
    warmup_steps: int = field(0, help="linear warm-up steps")
    lr_scheduler: str = field("constant", choices=("constant", "cosine", "linear"), help="after warm-up")
    max_grad_norm: float = field(1.0, help="gradient clipping (0 = off)")
    max_nonfinite_steps: int = field(5, help="stop after this many updates in a row with NaN/inf loss or grads")
    batch_size: int = field(8, help="prompts per optimizer step")
    micro_batch_size: int = field(8, help="prompts per forward/backward (gradient accumulation)")
    max_steps: int = field(100, help="optimizer steps")
    seed: int = field(0, help="seed for data order, sampling and init")


@dataclass
class TrainableConfig:
    """Which parts of the student train (the paper: the LLM backbone only), and LoRA."""

    train_lm: bool = field(True, help="train the LLM backbone")
    train_encoder: bool = field(False, help="train the audio encoder (paper: frozen)")
    train_projector: bool = field(False, help="train the projector (paper: frozen)")
    train_adapter: bool = field(False, help="train the CTC adapter, if the student has one (paper: frozen; "
                                "algo ctc trains it)")
    lora_r: int = field(0, help="LoRA rank on the backbone via peft (0 = full fine-tuning)")
    lora_alpha: int = field(16, help="LoRA alpha")
    lora_targets: str = field("q_proj,k_proj,v_proj,o_proj", help="comma-separated LoRA target modules")


@dataclass
class DataConfig:
    """Rehearsal rows and what counts as a bad row."""

    replay_manifest: str | None = field(None, help="rehearsal rows (e.g. ASR / audio-only) trained with SFT on S "
                                        "alongside the algorithm, to limit forgetting (None: off)")
    replay_batch: int = field(0, help="rehearsal rows per optimizer step (0: off)")
    replay_coef: float = field(1.0, help="weight of the rehearsal SFT loss")
    strict: bool = field(False, help="fail on the first bad manifest row instead of skipping it")
    max_audio_seconds: float = field(30.0, help="rows with longer audio are skipped (or fatal if strict)")


@dataclass
class SystemConfig:
    """Checkpoints, logging, evaluation hook, devices, memory and speed."""

    log_every: int = field(1, help="write metrics every N steps")
    save_every: int = field(50, help="checkpoint every N steps (and at the end)")
    keep_last: int = field(3, help="keep the newest N checkpoints")
    eval_every: int = field(0, help="run the eval hook every N steps (0 = only at start and end)")
    eval_prompts: int = field(16, help="prompts used by the eval hook")
    resume: bool = field(False, help="continue from the newest checkpoint in output_dir")
    device: str = field("auto", help="auto, cpu, cuda, cuda:N")
    dtype: str = field("float32", choices=("float32", "bfloat16", "float16"), help="model dtype")
    threads: int = field(0, help="torch CPU threads (0 = torch default)")
    logprob_chunk: int = field(0, help="rows per chunk for log-softmax over the vocab (0 = no chunking)")
    cache_encoder: bool = field(True, help="memoise frozen audio-encoder outputs per clip (saves recompute)")
    cache_encoder_dtype: str = field("auto", choices=("auto", "float32", "float16", "bfloat16"),
                                     help="storage dtype of the encoder cache (auto: the encoder's; float16 "
                                     "halves its memory on a large dataset)")
    encoder_cache_file: str | None = field(None, help="safetensors file of frozen-encoder outputs to preload into "
                                           "the cache (SpeechLLM.save_encoder_cache; `xopd demo` writes one)")
    gradient_checkpointing: bool = field(False, help="recompute activations in backward to save memory")
    autocast_bf16: bool = field(True, help="on CUDA, run forwards under bf16 autocast (weights/optimizer stay "
                                "in dtype); ignored on CPU, which has no fast bf16")
    distributed: str = field("none", choices=("none", "ddp", "fsdp2"),
                             help="data parallel under torchrun: ddp (replicated student) or fsdp2 (sharded "
                             "student); batch_size stays the global prompts per step")
    shared_prompt: bool = field(True, help="compute each distinct prompt once for its n samples (rollout "
                                "prefill, teacher scoring, student update); False repeats it per sample, "
                                "as TRL and verl do: the same computation up to float rounding, for benchmarks")
    trim_heap_every: int = field(10, help="return freed C-heap memory to the OS every N steps (glibc "
                                 "malloc_trim; 0 = never). Measured on the demo's stage-1 step "
                                 "(benchmarks/trim_ab.py): every step 1.45x the untrimmed step time, every 10 "
                                 "steps 1.07x, peak RSS within 60 MB of each other")
    linear_kernel: str = field("auto", choices=("auto", "onednn", "torch"),
                               help="fp32 CPU linears (student and teacher): oneDNN's GEMM (models/onednn_linear.py; "
                               "benchmarks/linear_ab.py: the bench's M model 1.46x faster forward+backward on a 2-core "
                               "AMD EPYC, where MKL skips AVX-512) or torch's default (MKL). auto: oneDNN for LMs of "
                               ">= 8 M parameters on CPU in float32 (smaller ones, like the demo's, ran slower with "
                               "it); onednn: for any size")
    trust_remote_code: bool = field(False, help="allow model code from model directories (off: safer)")
    progress: bool = field(True, help="show a progress bar")
    report_to: str = field("jsonl,tensorboard", help="comma list of jsonl, tensorboard, wandb")


@dataclass
class TrainConfig(
    SystemConfig, DataConfig, CTCConfig, TrainableConfig, OptimConfig, PolicyLossConfig, RolloutConfig, GRPOConfig, OfflineKDConfig, GKDConfig, SFTConfig, XOPDConfig, RunConfig,
):
    """Every key of ``xopd train``: the groups above and the per-algorithm groups of
    :mod:`xopd.algos.configs`, flat (one YAML mapping, one ``--key value`` each)."""

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config: '{key}' {why}")

        for group in type(self).__mro__:  # each group's own checks (xopd.algos.configs)
            if "check" in vars(group):
                group.check(self)
        for key in ("n_samples", "max_new_tokens", "batch_size", "micro_batch_size", "max_steps",
                    "log_every", "save_every", "keep_last", "eval_prompts"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.batch_size % self.micro_batch_size:
            raise bad("batch_size", f"({self.batch_size}) must be a multiple of micro_batch_size "
                      f"({self.micro_batch_size})")
        if self.replay_batch < 0:
            raise bad("replay_batch", f"must be >= 0 (0: off), got {self.replay_batch}")
        if self.replay_coef < 0:
            raise bad("replay_coef", f"must be >= 0, got {self.replay_coef}")
        if self.algo == "grpo" and self.n_samples < 2:
            raise bad("n_samples", f"must be >= 2 for algo grpo (group-normalised advantages), got {self.n_samples}")
        if self.bootstrap is None:
            needed = ("student_path",) + (("teacher_path",) if self.algo in TEACHER_ALGOS else ())
            for key in needed:
                if not getattr(self, key):
                    raise bad(key, "is required (or set bootstrap: tiny)")
        if not (self.train_lm or self.train_encoder or self.train_projector or self.train_adapter):
            raise bad("train_lm", "nothing would train: enable train_lm, train_encoder, train_projector or "
                      "train_adapter")

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size
