"""``xopd plan``: per-GPU memory of one training step, by component, from the config and the models'
``config.json`` alone (models are built on the meta device: no weights are read or allocated).

The terms follow what the trainer does (docs/REAL_MODELS.md explains them):

* **static** (all step long): the student's weights (the LM sharded over the GPUs by FSDP2, its
  input-embedding table and the frozen towers replicated), AdamW's two fp32 moments of what trains
  (from step 2 on; step 1 has none yet), and the frozen teacher (``teacher_dtype``; its LM sharded
  like the student's with ``shard_teacher``, else replicated);
* **rollout** phase: the LM gathered whole once in FSDP2's compute dtype, plus the KV cache of one
  rollout (``rollout_batch_size``, by default a micro-batch: prompts x views x n rows, prompt + new
  tokens long);
* **training** phase: the gradients (sharded like the weights), the activations the backward keeps
  (per token and layer ``8h + 4f + 2kv`` values, measured on transformers' Qwen2/Llama layers; with
  gradient checkpointing one ``h`` per layer plus one layer recomputed), and the logits: the
  student's fp32 ``[rows, L, V]`` and its gradient, the teacher's ``[rows, L, V]``.

The peak is the static part plus the larger phase. It is an estimate: allocator fragmentation,
CUDA context (~0.5-1 GB) and temporary buffers are not modelled, hence the headroom asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xopd.errors import ConfigError

GB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    """Parameter counts by part and the text model's shape (what the memory terms need)."""

    lm: int  # decoder layers + final norm + LM head (what FSDP2 shards)
    embed: int  # input-embedding table (replicated)
    towers: dict[str, int] = field(default_factory=dict)  # frozen parts: audio tower, vision tower, ...
    layers: int = 0
    hidden: int = 0
    ffn: int = 0  # per token: intermediate size, or experts_per_tok x expert size for MoE
    kv_dim: int = 0  # num_key_value_heads x head_dim
    vocab: int = 0

    @property
    def total(self) -> int:
        return self.lm + self.embed + sum(self.towers.values())


def _text_config(cfg):
    for name in ("thinker_config", "text_config"):
        if getattr(cfg, name, None) is not None:
            return _text_config(getattr(cfg, name))
    return cfg


def _count(module: torch.nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def model_shape(path: str | Path) -> ModelShape:
    """Count a model directory's parameters from its config.json (meta device: nothing is loaded)."""
    import transformers
    from transformers import AutoConfig

    from xopd.models.qwen_omni import THINKER_CLASSES

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"plan: {p} has no config.json (the planner reads Hugging Face model directories)")
    cfg = AutoConfig.from_pretrained(p)
    mtype = cfg.model_type
    with torch.device("meta"):
        if mtype in THINKER_CLASSES:
            tcfg = getattr(cfg, "thinker_config", cfg)
            model = getattr(transformers, THINKER_CLASSES[mtype])._from_config(tcfg)
            base = model.model
            lm_body, head = base.language_model, model.lm_head
            towers = {"audio tower": _count(base.audio_tower)}  # the vision tower is dropped on load
        elif mtype == "qwen2_audio":
            model = transformers.Qwen2AudioForConditionalGeneration._from_config(cfg)
            base = model.model  # transformers 5: model.{audio_tower, multi_modal_projector, language_model}
            lm_body, head = base.language_model, model.lm_head
            towers = {"audio tower": _count(base.audio_tower), "projector": _count(base.multi_modal_projector)}
        else:
            model = transformers.AutoModelForCausalLM.from_config(cfg)
            lm_body, head, towers = model.get_decoder(), model.get_output_embeddings(), {}
    embed = _count(lm_body.get_input_embeddings())
    tied = head is not None and head.weight is lm_body.get_input_embeddings().weight
    text = _text_config(cfg)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    moe = getattr(text, "num_experts", 0) or 0
    ffn = text.num_experts_per_tok * text.moe_intermediate_size if moe else text.intermediate_size
    return ModelShape(lm=_count(lm_body) - embed + (0 if tied else _count(head)), embed=embed,
                      towers={k: v for k, v in towers.items() if v}, layers=text.num_hidden_layers,
                      hidden=text.hidden_size, ffn=ffn, kv_dim=text.num_key_value_heads * head_dim,
                      vocab=text.vocab_size)


def activation_values(shape: ModelShape, tokens: int, checkpointing: bool) -> int:
    """Values the backward keeps for ``tokens`` tokens through the decoder (see the module docstring)."""
    per_layer = 8 * shape.hidden + 4 * shape.ffn + 2 * shape.kv_dim
    if checkpointing:  # each layer's input, plus one layer's activations while it is recomputed
        return tokens * (shape.layers * shape.hidden + per_layer)
    return tokens * shape.layers * per_layer


def kv_cache_values(shape: ModelShape, rows: int, length: int) -> int:
    return 2 * shape.layers * shape.kv_dim * rows * length


@dataclass
class StepShape:
    gpus: int = 1
    rows: int = 0  # responses per micro-batch (prompts x views x n)
    rollout_rows: int = 0  # responses per rollout (rollout_batch_size x views x n; 0 = rows)
    n: int = 1  # responses per prompt
    prompt_len: int = 0
    new_tokens: int = 0
    checkpointing: bool = False
    shared_prompt: bool = True  # scored against one prompt forward (off under checkpointing)
    weight_bytes: int = 4
    compute_bytes: int = 2  # bf16 on CUDA (FSDP2 mixed precision / autocast)
    teacher_bytes: int = 2
    train_lm: bool = True
    shard_teacher: bool = True  # fsdp2 shards the teacher's LM too (its embedding table stays whole)
    lean_head: bool = False  # pg's sampled-token log-probs chunk by chunk: no [rows, L, V] logits
    head_chunk: int = 1024  # rows of logits per chunk with lean_head


def _teacher_local(teacher: ModelShape, gpus: int, sharded: bool) -> float:
    return (teacher.lm / gpus + teacher.embed + sum(teacher.towers.values())) if sharded and gpus > 1 else teacher.total


def _logit_values(s: StepShape, student: ModelShape, teacher: ModelShape | None) -> float:
    """Bytes of logits: the student's fp32 [rows, L, V] and its gradient, and the teacher's; with the lean
    head one chunk of fp32 logits at a time (its softmax and gradient beside it, ~3 copies)."""
    if s.lean_head:
        return min(s.rows * s.new_tokens, s.head_chunk) * student.vocab * 4 * 3
    # a rollout of several micro-batches keeps all their teacher logits until the last one has trained
    held = max(s.rows, s.rollout_rows)
    return s.new_tokens * (s.rows * student.vocab * 8 + (held * teacher.vocab * s.teacher_bytes if teacher else 0))


def plan_step(student: ModelShape, teacher: ModelShape | None, s: StepShape, step: int = 2) -> dict[str, float]:
    """GB per GPU of each term, the two phases and the peak (``step`` 1: no optimizer state yet)."""
    n = max(1, s.gpus)
    lm_local = student.lm / n if n > 1 else student.lm
    trainable = (lm_local + student.embed) if s.train_lm else 0
    frozen = sum(student.towers.values())
    length = s.prompt_len + s.new_tokens
    # shared prompt: each distinct prompt once, then every response; else every response with its prompt
    train_tokens = (s.rows // max(1, s.n)) * s.prompt_len + s.rows * s.new_tokens if s.shared_prompt \
        else s.rows * length
    g = {
        "student weights": (lm_local + student.embed + frozen) * s.weight_bytes / GB,
        "optimizer (AdamW fp32 moments)": (2 * 4 * trainable / GB) if step >= 2 else 0.0,
        "teacher weights": (_teacher_local(teacher, n, s.shard_teacher) * s.teacher_bytes / GB) if teacher else 0.0,
        "rollout: LM gathered whole": (student.lm * s.compute_bytes / GB) if n > 1 else 0.0,
        "rollout: KV cache": kv_cache_values(student, max(s.rows, s.rollout_rows), length) * s.compute_bytes / GB,
        "gradients": trainable * s.weight_bytes / GB,
        "activations": activation_values(student, train_tokens, s.checkpointing) * s.compute_bytes / GB,
        "activations without checkpointing": activation_values(student, train_tokens, False) * s.compute_bytes / GB,
        "logits": _logit_values(s, student, teacher) / GB,
    }
    static = g["student weights"] + g["optimizer (AdamW fp32 moments)"] + g["teacher weights"]
    rollout = g["rollout: LM gathered whole"] + g["rollout: KV cache"]
    train = g["gradients"] + g["activations"] + g["logits"]
    g.update({"static": static, "rollout phase": rollout, "training phase": train,
              "peak": static + max(rollout, train)})
    return g


def step_shape_from(cfg, gpus: int, prompt_len: int, device: str = "cuda") -> StepShape:
    """The StepShape a TrainConfig runs (X-OPD: both views unless lam is 0 or 1)."""
    views = 2 if 0.0 < getattr(cfg, "lam", 0.5) < 1.0 else 1
    on_cuda = device == "cuda"
    teacher = {"auto": "bfloat16" if on_cuda else cfg.dtype}.get(cfg.teacher_dtype, cfg.teacher_dtype)
    compute = "bfloat16" if on_cuda and cfg.autocast_bf16 else cfg.dtype
    return StepShape(gpus=gpus, rows=cfg.micro_batch_size * views * cfg.n_samples, n=cfg.n_samples,
                     rollout_rows=getattr(cfg, "rollout_batch_size", 0) * views * cfg.n_samples,
                     prompt_len=prompt_len,
                     new_tokens=cfg.max_new_tokens, checkpointing=cfg.gradient_checkpointing,
                     shared_prompt=not cfg.gradient_checkpointing, weight_bytes=_BYTES[cfg.dtype],
                     compute_bytes=_BYTES[compute], teacher_bytes=_BYTES[teacher], train_lm=cfg.train_lm,
                     shard_teacher=cfg.shard_teacher, head_chunk=cfg.logprob_chunk or 1024,
                     lean_head=cfg.loss == "pg" and not cfg.entropy_coef and (
                         cfg.lean_head == "on" or (cfg.lean_head == "auto" and on_cuda)))


def render(g: dict[str, float], gpu_mem: float, headroom: float) -> str:
    rows = [f"  {k:<42} {v:8.2f} GB" for k, v in g.items() if k not in ("static", "rollout phase", "training phase",
                                                                         "peak")]
    fits = g["peak"] <= gpu_mem * (1 - headroom)
    rows += ["", f"  {'static':<42} {g['static']:8.2f} GB", f"  {'rollout phase':<42} {g['rollout phase']:8.2f} GB",
             f"  {'training phase':<42} {g['training phase']:8.2f} GB",
             f"  {'peak = static + max(phases)':<42} {g['peak']:8.2f} GB of {gpu_mem:g} GB: "
             + ("fits" if fits else "DOES NOT FIT") + f" with {headroom:.0%} headroom"]
    return "\n".join(rows)


def cmd_plan(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import load_config
    from xopd.training.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, {k: v for k, v in (("student_path", args.student),
                                                                    ("teacher_path", args.teacher)) if v})
    student = model_shape(cfg.student_path)
    teacher = model_shape(cfg.teacher_path) if cfg.teacher_path else None
    shape = step_shape_from(cfg, args.gpus, args.prompt_len)
    out = {}
    for step in (1, 2):
        g = plan_step(student, teacher, shape, step=step)
        out[f"step{step}"] = g
        print(f"step {step}{' (from step 2 on: optimizer state exists)' if step == 2 else ''}:")
        print(render(g, args.gpu_mem, args.headroom))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    fits = out["step2"]["peak"] <= args.gpu_mem * (1 - args.headroom)
    print(json.dumps({"peak_gb": round(out["step2"]["peak"], 2), "gpu_mem_gb": args.gpu_mem, "fits": fits}),
          file=sys.stderr)
    return 0 if fits else 3


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser(
        "plan", help="per-GPU memory of one training step by component, from configs alone",
        description="Estimate the per-GPU memory of one step of a recipe (weights, optimizer, teacher, rollout "
        "gather and KV cache, gradients, activations with and without checkpointing, logits) from its YAML and "
        "the models' config.json; no weights are read. Exit code 3 when it does not fit.",
        epilog="examples:\n  xopd plan --config configs/qwen2.5-omni-7b.yaml --gpus 8 --gpu_mem 80\n"
        "  xopd plan --config configs/qwen3-omni-30b-a3b.yaml --gpus 8 --gpu_mem 80 --prompt_len 400 --json plan.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the training YAML (e.g. configs/qwen2.5-omni-7b.yaml)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the student is sharded over (default 8)")
    p.add_argument("--gpu_mem", type=float, default=80.0, help="memory per GPU in GB (default 80)")
    p.add_argument("--prompt_len", type=int, default=300,
                   help="prompt tokens incl. audio tokens (Qwen-Omni: ~25 per second of audio; default 300)")
    p.add_argument("--headroom", type=float, default=0.10, help="share of memory to keep free (default 0.10)")
    p.add_argument("--student", default=None, help="override the config's student_path")
    p.add_argument("--teacher", default=None, help="override the config's teacher_path")
    p.add_argument("--json", default=None, help="also write the terms as JSON here")
    handlers["plan"] = cmd_plan
