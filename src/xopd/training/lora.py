"""LoRA (peft) on the student's LM, and its adapter files in checkpoints.

LoRA checkpoints: ``model/`` holds the FULL student with the adapters merged into the weights (so
``load_student``/``xopd eval`` need nothing special), and ``adapter/adapter.safetensors`` holds the
LoRA tensors themselves. Resume loads the base from ``student_path`` and the adapter from the
checkpoint, which is exact: merging is never applied in place (it would round the base weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from xopd.errors import ConfigError

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter.safetensors"
_MERGING = {"on": False}


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _merged_state_hook(module, state_dict, prefix, local_metadata) -> None:
    """While :func:`merged_state_dict` is active: ``x.base_layer.weight + delta -> x.weight``, no lora keys."""
    if not _MERGING["on"]:
        return
    key = prefix + "base_layer.weight"
    if key in state_dict:
        state_dict[prefix + "weight"] = (state_dict.pop(key) + _delta(module, state_dict, prefix)).detach()
    if prefix + "base_layer.bias" in state_dict:
        state_dict[prefix + "bias"] = state_dict.pop(prefix + "base_layer.bias")
    for k in [k for k in state_dict if k.startswith(prefix + "lora_")]:
        del state_dict[k]


def _delta(module, state_dict, prefix: str) -> torch.Tensor:
    """sum_a scaling_a * B_a @ A_a, from the tensors already in ``state_dict`` (so it also works when
    the live parameters are FSDP2 shards and the state dict holds consolidated copies)."""
    delta = 0.0
    for a in module.active_adapters:
        lora_a = state_dict.get(f"{prefix}lora_A.{a}.weight")
        lora_b = state_dict.get(f"{prefix}lora_B.{a}.weight")
        if lora_a is None or lora_b is None:  # not a plain linear LoRA: let peft compute it
            d = module.get_delta_weight(a)
        else:
            d = (lora_b.float() @ lora_a.float()) * module.scaling[a]
            d = d.T if getattr(module, "fan_in_fan_out", False) else d
        delta = delta + d
    return delta


def apply_lora(student, r: int, alpha: int, targets: str, seed: int = 0) -> None:
    """Inject LoRA adapters (rank ``r``) into the student's causal LM in place; only they train.

    In place (``peft.inject_adapter_in_model``) rather than a ``PeftModel`` wrapper: the student keeps
    its class and ``causal_lm()`` stays the same module, so rollout/scoring code is unchanged.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = [t.strip() for t in targets.split(",") if t.strip()]
    if not names:
        raise ConfigError(
            "config: 'lora_targets' is empty: name the linear layers to adapt (e.g. q_proj,v_proj)"
        )
    lm = student.causal_lm()
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=names, lora_dropout=0.0, bias="none")
    try:
        inject_adapter_in_model(cfg, lm)
    except ValueError as e:
        raise ConfigError(f"config: lora_targets {targets!r}: {str(e).splitlines()[0]}") from e
    for m in _lora_layers(lm):
        m.register_state_dict_post_hook(_merged_state_hook)


def lora_parameters(student) -> list[nn.Parameter]:
    return [p for n, p in student.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def merged_state_dict() -> Iterator[None]:
    """Inside: ``state_dict()`` of LoRA-injected models returns merged plain weights (for saving)."""
    _MERGING["on"] = True
    try:
        yield
    finally:
        _MERGING["on"] = False


def save_adapter(student, ckpt_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous().cpu() for n, p in student.named_parameters() if "lora_" in n}
    (ckpt_dir / ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(ckpt_dir / ADAPTER_DIR / ADAPTER_FILE), metadata={"format": "pt"})


def load_adapter(student, ckpt_dir: Path) -> None:
    """Copy the checkpoint's LoRA tensors into the (freshly injected) adapters; every one must match."""
    from safetensors.torch import load_file

    path = ckpt_dir / ADAPTER_DIR / ADAPTER_FILE
    if not path.is_file():
        raise ConfigError(
            f"{ckpt_dir}: no {ADAPTER_DIR}/{ADAPTER_FILE}; was this run trained with lora_r > 0?"
        )
    tensors = load_file(str(path))
    params = dict(student.named_parameters())
    missing = [n for n in params if "lora_" in n and n not in tensors]
    if missing or any(n not in params for n in tensors):
        raise ConfigError(
            f"{path}: adapter does not match lora_r/lora_targets of this config "
            f"(e.g. {(missing or list(tensors))[0]})"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


