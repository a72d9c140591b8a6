"""``xopd export``: a trained student as a directory other tools load with transformers' own class.

A checkpoint's ``model/`` is the student's own ``save_pretrained``: for Qwen2-Audio (and xopd's
SpeechLLM) that is already the directory to hand on, and it is copied. The paper's students start
from a full Omni checkpoint (thinker + talker + code2wav/token2wav, speakers); xopd trains only the
thinker and drops its unused vision tower. So for an Omni base the export loads the base with its own
class (full model or thinker), puts the trained thinker's weights in (the vision tower stays the
base's), and saves the whole model in the base's layout and dtype, with every other file of the base
(speakers, chat template, processors) beside it.

Everything is written to a temp folder and renamed into place (:func:`~xopd.utils.io.atomic_dir`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from xopd.errors import ConfigError, ModelError
from xopd.utils.io import atomic_dir

#: full Omni model_type -> transformers class that holds a ``.thinker`` (and the talker)
FULL_OMNI_CLASSES = {
    "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
    "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration",
}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json")

EPILOG = """examples:
  xopd export --checkpoint runs/qwen2.5-omni-7b-xopd --out exported/omni-xopd        # newest checkpoint
  xopd export --checkpoint runs/qwen2.5-omni-7b-xopd/checkpoint-500 --out exported/omni-xopd \\
      --base models/Qwen2.5-Omni-7B --dtype bfloat16
then, elsewhere:  Qwen2_5OmniForConditionalGeneration.from_pretrained("exported/omni-xopd")
"""


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``checkpoint-N`` folder, or a run's output folder (its newest complete checkpoint)."""
    from xopd.training.checkpoint import STATE_FILE, latest_checkpoint

    p = Path(path)
    if (p / STATE_FILE).is_file() and (p / "model").is_dir():
        return p
    ckpt = latest_checkpoint(p) if p.is_dir() else None
    if ckpt is None:
        raise ConfigError(f"export: {p} is neither a checkpoint-N folder nor a run folder holding one")
    return ckpt


def base_of(ckpt: Path) -> Path | None:
    """The student the run started from (``student_path`` in the checkpoint's trainer_state.json)."""
    from xopd.training.checkpoint import STATE_FILE

    state = json.loads((ckpt / STATE_FILE).read_text())
    base = (state.get("config") or {}).get("student_path")
    return Path(base) if base else None


def _model_type(path: Path) -> str | None:
    cfg = path / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None


def export(checkpoint: str | Path, out: str | Path, base: str | Path | None = None, dtype: str = "auto") -> dict:
    """Write the checkpoint's student to ``out``; returns what was written (kind, class, base, out)."""
    from xopd.models.qwen_omni import THINKER_CLASSES

    if base and not Path(base).is_dir():
        raise ConfigError(f"export: --base {base} is not a directory")
    ckpt = resolve_checkpoint(checkpoint)
    model_dir = ckpt / "model"
    base_dir = Path(base) if base else base_of(ckpt)
    mtype = _model_type(base_dir) if base_dir and base_dir.is_dir() else None
    if mtype in THINKER_CLASSES:  # Omni: merge the trained thinker into the base (full model or thinker)
        return _merge_omni(model_dir, base_dir, FULL_OMNI_CLASSES.get(mtype) or THINKER_CLASSES[mtype],
                           Path(out), dtype, ckpt)
    if _model_type(model_dir) in THINKER_CLASSES:
        raise ConfigError(f"export: {ckpt} holds an Omni thinker without its vision tower; pass --base with the "
                          "checkpoint the run started from (the run's student_path is not available)")
    with atomic_dir(out) as tmp:  # the checkpoint's own layout is the transformers (or xopd SpeechLLM) layout
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    return {"out": str(out), "kind": "as saved", "class": _model_type(model_dir) or "xopd SpeechLLM",
            "checkpoint": str(ckpt)}


def _merge_omni(model_dir: Path, base_dir: Path, cls_name: str, out: Path, dtype: str, ckpt: Path) -> dict:
    """The base loaded with its own class, the trained thinker's weights put in (the vision tower, which
    xopd drops, stays the base's), saved whole with the base's other files beside it."""
    import transformers

    from xopd.models import load_student

    trained = load_student(model_dir)
    cls = getattr(transformers, cls_name)
    try:
        full = cls.from_pretrained(base_dir, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise ModelError(f"export: cannot load the base {base_dir} with {cls_name}: {str(e).splitlines()[0]}") from e
    thinker = getattr(full, "thinker", full)
    missing, unexpected = thinker.load_state_dict(trained.model.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith(("model.visual.", "visual."))]
    if missing or unexpected:
        raise ModelError(f"export: the checkpoint's thinker does not fit {base_dir}'s thinker "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); is --base the run's student?")
    with atomic_dir(out) as tmp:
        full.save_pretrained(tmp)
        for f in base_dir.iterdir():  # speakers, tokenizer, processors, chat template: as in the base
            if f.is_file() and f.name not in _WEIGHT_FILES and not f.name.endswith(".safetensors") \
                    and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
    kind = "thinker merged into the full model" if hasattr(full, "thinker") else "thinker merged into the base thinker"
    return {"out": str(out), "kind": kind, "class": cls_name, "base": str(base_dir), "checkpoint": str(ckpt)}


def cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    info = export(args.checkpoint, args.out, base=args.base, dtype=args.dtype)
    print(json.dumps(info), file=sys.stderr)
    print(info["out"])
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained student as a directory transformers loads with its own class",
        description="Export a checkpoint's student. Qwen2-Audio, Omni-thinker and SpeechLLM checkpoints are "
        "copied as saved; a run that started from a full Omni checkpoint (thinker + talker) gets the trained "
        "thinker merged back into that checkpoint's layout, so Qwen2_5OmniForConditionalGeneration / "
        "Qwen3OmniMoeForConditionalGeneration (and servers built on them) load it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint-N folder, or a run folder (newest checkpoint)")
    p.add_argument("--out", required=True, help="the directory to write (replaced atomically if it exists)")
    p.add_argument("--base", default=None, help="the full checkpoint to merge into (default: the run's student_path)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights' dtype when merging (default auto: the base's own dtype)")
    handlers["export"] = cmd_export
