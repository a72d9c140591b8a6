"""``TrainConfig``: every knob of the core trainer, with help text; YAML keys and ``--key value`` alike.

The CPU speed kit's keys (``xopd.cpu.CPUConfig``) and the lab's (``xopd.lab.train``: bootstrap,
rehearsal, encoder-cache files) are not here; ``xopd train`` accepts them too, through
``xopd.lab.train.LabTrainConfig``, which composes all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from xopd.algos.configs import CTCConfig, GKDConfig, GRPOConfig, OfflineKDConfig, SFTConfig, XOPDConfig
from xopd.config import field
from xopd.errors import ConfigError
from xopd.generation.engines import check_engine_name

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
    rollout_batch_size: int = field(0, help="prompts per rollout on each process (0 = micro_batch_size): xopd "
                                    "samples and scores that many at once, then trains on micro-batches of them "
                                    "(fewer, fuller decode batches on a GPU); a multiple of micro_batch_size")
    max_steps: int = field(100, help="optimizer steps")
    seed: int = field(0, help="seed for data order, sampling and init")


@dataclass
class EngineConfig:
    """Which engine generates the student's rollouts (:mod:`xopd.generation.engine`)."""

    rollout_engine: str = field("hf", help="hf: xopd's own decode loop on the training weights (every device and "
                                "student; the default, exact resume); vllm: a colocated vLLM engine per process "
                                "(plain causal-LM students: SpeechLLM, Qwen2-Audio), weights synced after every "
                                "step; other names: engines registered with xopd.generation.engine.register_engine")
    vllm_gpu_memory_utilization: float = field(0.3, help="rollout_engine vllm on CUDA: share of the GPU's memory "
                                               "vLLM may take (weights + KV cache), beside the trainer")
    vllm_max_model_len: int = field(4096, help="rollout_engine vllm: longest prompt + response it accepts")
    vllm_sleep: bool = field(True, help="rollout_engine vllm on CUDA: sleep (weights to host memory, KV cache "
                             "freed) outside rollouts, so the update has the GPU")

    def check(self) -> None:
        check_engine_name(self.rollout_engine)


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
    """What counts as a bad row."""

    strict: bool = field(False, help="fail on the first bad manifest row instead of skipping it")
    max_audio_seconds: float = field(30.0, help="rows with longer audio are skipped (or fatal if strict)")


@dataclass
class SystemConfig:
    """Checkpoints, logging, evaluation hook, devices and memory."""

    log_every: int = field(1, help="write metrics every N steps")
    save_every: int = field(50, help="checkpoint every N steps (and at the end)")
    keep_last: int = field(3, help="keep the newest N checkpoints")
    eval_every: int = field(0, help="run the eval hook every N steps (0 = only at start and end)")
    eval_prompts: int = field(16, help="prompts used by the eval hook")
    resume: bool = field(False, help="continue from the newest checkpoint in output_dir")
    device: str = field("auto", help="auto, cpu, cuda, cuda:N")
    dtype: str = field("float32", choices=("float32", "bfloat16", "float16"), help="model dtype")
    teacher_dtype: str = field("auto", choices=("auto", "float32", "bfloat16", "float16"),
                               help="teacher weights' dtype (it never trains): auto = bfloat16 on CUDA, "
                               "else the student's dtype")
    cache_encoder: bool = field(True, help="memoise frozen audio-encoder outputs per clip (saves recompute)")
    gradient_checkpointing: bool = field(False, help="recompute activations in backward to save memory")
    autocast_bf16: bool = field(True, help="on CUDA, run forwards under bf16 autocast (weights/optimizer stay "
                                "in dtype); ignored on CPU, which has no fast bf16")
    fsdp_param_dtype: str = field("auto", choices=("auto", "float32", "bfloat16"),
                                  help="fsdp2 mixed precision: the dtype layers compute in (master weights, "
                                  "optimizer and gradient reduction stay in dtype); auto = bfloat16 on CUDA "
                                  "with autocast_bf16, else no casting")
    shard_teacher: bool = field(True, help="with distributed fsdp2, shard the frozen teacher over the GPUs too "
                                "(a layer is gathered for its forward) instead of a full copy per GPU")
    distributed: str = field("none", choices=("none", "ddp", "fsdp2"),
                             help="data parallel under torchrun: ddp (replicated student) or fsdp2 (sharded "
                             "student); batch_size stays the global prompts per step")
    trust_remote_code: bool = field(False, help="allow model code from model directories (off: safer)")
    progress: bool = field(True, help="show a progress bar")
    report_to: str = field("jsonl,tensorboard", help="comma list of jsonl, tensorboard, wandb")


#: keys that left TrainConfig, and where they live now (build() names them in its error)
MOVED_KEYS = {
    **{k: "xopd.cpu.CPUConfig (the CPU speed kit)" for k in
       ("threads", "decode_threads", "linear_kernel", "trim_heap_every", "fast_decode")},
    **{k: "xopd.lab.train.LabTrainConfig (the lab's training options)" for k in
       ("bootstrap", "shared_prompt", "encoder_cache_file", "cache_encoder_dtype", "replay_manifest",
        "replay_batch", "replay_coef")},
}


@dataclass
class TrainConfig(
    SystemConfig, DataConfig, TrainableConfig, EngineConfig, OptimConfig, XOPDConfig, GRPOConfig, GKDConfig, OfflineKDConfig,
    SFTConfig, CTCConfig, RunConfig,
):
    """Every key of the core trainer: the groups above and the per-algorithm configs of
    :mod:`xopd.algos.configs`, flat (one YAML mapping, one ``--key value`` each). Each algorithm
    receives only its own config, read from these fields."""

    moved_keys = MOVED_KEYS

    def assets_required(self) -> bool:
        """Whether student/teacher paths must be set now (a subclass may build them later)."""
        return True

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
        if self.rollout_batch_size and (self.rollout_batch_size < 0 or self.rollout_batch_size % self.micro_batch_size
                                        or self.batch_size % self.rollout_batch_size):
            raise bad("rollout_batch_size", f"({self.rollout_batch_size}) must be a multiple of micro_batch_size "
                      f"({self.micro_batch_size}) that divides batch_size ({self.batch_size}), or 0")
        if self.algo == "grpo" and self.n_samples < 2:
            raise bad("n_samples", f"must be >= 2 for algo grpo (group-normalised advantages), got {self.n_samples}")
        if self.assets_required():
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
