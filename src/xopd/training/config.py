"""``TrainConfig``: every knob of ``xopd train``, with help text; YAML keys and ``--key value`` alike."""

from __future__ import annotations

from dataclasses import dataclass

from xopd.config import field
from xopd.errors import ConfigError

ALGOS = ("xopd", "sft", "offline_kd", "gkd", "grpo", "ctc")
LOSSES = ("pg", "reverse_kl", "jsd", "topk_forward_kl")
TEACHER_ALGOS = ("xopd", "offline_kd", "gkd")
AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")


@dataclass
class TrainConfig:
    # -- what to train on ---------------------------------------------------------------------
    student_path: str | None = field(None, help="student directory (SpeechLLM, Qwen2-Audio or causal LM)")
    teacher_path: str | None = field(None, help="text teacher: any Hugging Face causal-LM directory")
    manifest: str | None = field(None, help="training JSONL manifest: id, audio (relative path), text")
    eval_manifest: str | None = field(None, help="manifest for the periodic eval hook (default: manifest)")
    output_dir: str = field("runs/train", help="checkpoints, metrics.jsonl and TensorBoard logs go here")
    bootstrap: str | None = field(
        None, choices=("tiny",), help="build missing assets first: 'tiny' makes a tiny student/teacher/manifest"
    )
    # -- algorithm ------------------------------------------------------------------------------
    algo: str = field("xopd", choices=ALGOS, help="training algorithm")
    lam: float = field(0.5, help="X-OPD lambda: weight of the in-modal (T) term; 1-lam on cross-modal (S)")
    n_samples: int = field(4, help="responses sampled per prompt and view")
    loss: str = field("pg", choices=LOSSES, help="pg: policy gradient on per-token advantage (paper); "
                      "reverse_kl/jsd/topk_forward_kl: direct (supervised) losses on full logits")
    estimator: str = field("k1", choices=("k1", "k3"), help="per-token advantage estimator for loss=pg")
    agg: str = field("seq-mean-token-mean", choices=AGGS, help="how per-token losses are averaged")
    clip_eps: float | None = field(None, help="PPO clip range for the importance ratio (None: no clip)")
    clip_eps_high: float | None = field(None, help="upper clip range (default: clip_eps)")
    jsd_beta: float = field(0.5, help="beta for loss=jsd (0: forward KL, 1: reverse KL)")
    topk: int = field(20, help="k for loss=topk_forward_kl")
    sft_view: str = field("S", choices=("S", "T"), help="prompt view for sft/offline_kd (S: speech, as the paper)")
    label_smoothing: float = field(0.0, help="sft/offline_kd: label smoothing of the cross-entropy (0 = off)")
    entropy_coef: float = field(0.0, help="entropy bonus weight (0 = off)")
    # -- baselines (docs/DESIGN.md section 3) ---------------------------------------------------------
    gkd_lambda: float = field(0.5, help="gkd: probability that a micro-batch trains on the student's own samples "
                              "from S (on-policy); otherwise on the reference responses (TRL's lmbda)")
    gkd_beta: float = field(0.0, help="gkd: generalised-JSD beta (0: forward KL(teacher || student), 1: reverse KL)")
    gkd_seq_kd: bool = field(False, help="gkd: off-policy micro-batches use fresh teacher samples on T instead of "
                             "the references (TRL's seq_kd)")
    kd_cache: str | None = field(None, help="offline_kd: JSONL cache of teacher responses, shareable across runs "
                                 "(default: <output_dir>/kd_cache.jsonl)")
    kd_temperature: float = field(0.0, help="offline_kd: teacher temperature for its responses (0: greedy; "
                                  ">0: sampled with top_p/top_k, seeded by seed and example id)")
    grpo_reward: str = field("task", choices=("task", "exact"), help="grpo: task = score by the row's task "
                             "(reasoning/instruct/audio_only exact, asr 1-WER; other tasks exact match); "
                             "exact = normalised exact match for every row")
    grpo_scale_std: bool = field(True, help="grpo: divide group-centred rewards by the group std "
                                 "(False: centre only, as Dr. GRPO)")
    # -- rollout --------------------------------------------------------------------------------
    max_new_tokens: int = field(64, help="longest sampled response")
    temperature: float = field(1.0, help="sampling temperature (student log-probs use the same)")
    top_p: float = field(1.0, help="nucleus sampling (1.0 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    # -- optimisation ---------------------------------------------------------------------------
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
    # -- what trains ----------------------------------------------------------------------------
    train_lm: bool = field(True, help="train the LLM backbone")
    train_encoder: bool = field(False, help="train the audio encoder (paper: frozen)")
    train_projector: bool = field(False, help="train the projector (paper: frozen)")
    train_adapter: bool = field(False, help="train the CTC adapter, if the student has one (paper: frozen; "
                                "algo ctc trains it)")
    ctc_punctuation: bool = field(True, help="algo ctc: align to the transcript as written (punctuation "
                                  "included, as Whisper writes it) instead of normalised words")
    ctc_augment: bool = field(True, help="algo ctc: SpecAugment-style time masks and channel dropout on the "
                              "encoder states (regularises a small adapter)")
    lora_r: int = field(0, help="LoRA rank on the backbone via peft (0 = full fine-tuning)")
    lora_alpha: int = field(16, help="LoRA alpha")
    lora_targets: str = field("q_proj,k_proj,v_proj,o_proj", help="comma-separated LoRA target modules")
    # -- data -----------------------------------------------------------------------------------
    replay_manifest: str | None = field(None, help="rehearsal rows (e.g. ASR / audio-only) trained with SFT on S "
                                        "alongside the algorithm, to limit forgetting (None: off)")
    replay_batch: int = field(0, help="rehearsal rows per optimizer step (0: off)")
    replay_coef: float = field(1.0, help="weight of the rehearsal SFT loss")
    strict: bool = field(False, help="fail on the first bad manifest row instead of skipping it")
    max_audio_seconds: float = field(30.0, help="rows with longer audio are skipped (or fatal if strict)")
    # -- bookkeeping ----------------------------------------------------------------------------
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
    fast_decode: bool = field(True, help="rollouts with a preallocated KV cache and a lean decode step for "
                              "Llama-family LMs (same tokens and log-probs up to float rounding)")
    decode_threads: int = field(0, help="CPU threads while decoding rollouts (0 = auto: 1 thread for small "
                                "models, whose decode steps are overhead-bound, else all)")
    trust_remote_code: bool = field(False, help="allow model code from model directories (off: safer)")
    progress: bool = field(True, help="show a progress bar")
    report_to: str = field("jsonl,tensorboard", help="comma list of jsonl, tensorboard, wandb")

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config: '{key}' {why}")

        if not 0.0 <= self.lam <= 1.0:
            raise bad("lam", f"must be in [0, 1], got {self.lam}")
        for key in ("n_samples", "max_new_tokens", "batch_size", "micro_batch_size", "max_steps",
                    "log_every", "save_every", "keep_last", "eval_prompts"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.temperature <= 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.batch_size % self.micro_batch_size:
            raise bad("batch_size", f"({self.batch_size}) must be a multiple of micro_batch_size "
                      f"({self.micro_batch_size})")
        if self.clip_eps is not None and self.clip_eps <= 0:
            raise bad("clip_eps", f"must be > 0 or None, got {self.clip_eps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise bad("jsd_beta", f"must be in [0, 1], got {self.jsd_beta}")
        for key in ("gkd_lambda", "gkd_beta"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, f"must be in [0, 1], got {getattr(self, key)}")
        if self.replay_batch < 0:
            raise bad("replay_batch", f"must be >= 0 (0: off), got {self.replay_batch}")
        if self.replay_coef < 0:
            raise bad("replay_coef", f"must be >= 0, got {self.replay_coef}")
        if self.kd_temperature < 0:
            raise bad("kd_temperature", f"must be >= 0 (0: greedy), got {self.kd_temperature}")
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
