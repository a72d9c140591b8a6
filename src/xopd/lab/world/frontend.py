"""Stage 1, hearing: the student's front end learns to hear before its LM learns anything.

A speech LLM that cannot hear the numbers of a word problem has nothing a distillation signal could
fix, so the demo's student gets a front end trained for hearing alone: the frozen Whisper encoder's
states go through a small CTC adapter trained with CTC on the training clips' transcripts, in the
LM's own (word-level) tokenizer. This needs no LM, so it runs while the teacher trains.

The adapter is trained inside a *hearing student*: the same encoder + adapter + projector around a
randomly initialised LM of the teacher's shape (the LM is never trained or used here; it only makes
the directory a normal SpeechLLM that ``xopd train --algo ctc`` can train). Stage 1 then composes the
real student around the teacher's LM and copies the trained adapter in.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from xopd.data.manifest import Example


def _log(msg: str) -> None:
    print(f"[xopd demo] {msg}", file=sys.stderr, flush=True)


def load_encoder(encoder: str, cache_root: Path, seed: int = 0):
    """The audio tower: pretrained Whisper tiny.en (converted once, cached) or a small random one
    (initialised from ``seed``, not from whatever the global RNG holds, so two runs in one process agree)."""
    if encoder == "whisper-tiny.en":
        from xopd.lab.weights.convert_ct2 import prepare_whisper_tiny_en

        return prepare_whisper_tiny_en(cache_root)
    from xopd.lab.tiny import tiny_whisper_config
    from xopd.models.encoder import AudioEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AudioEncoder.from_config(tiny_whisper_config(64, 2, 80))


def compose_student(encoder, lm, *, tokenizer=None, stack: int, projector_hidden: int, adapter: dict | None,
                    seed: int):
    """Encoder + (CTC adapter) + fresh projector + ``lm`` (a directory, or a module with ``tokenizer``)."""
    from xopd.models.speech_llm import SpeechLLM

    return SpeechLLM.compose(encoder, lm, tokenizer=tokenizer, stack=stack, projector_hidden=projector_hidden or None,
                             seed=seed, adapter=adapter)


def build_hearing_student(out_dir: Path, encoder, adapter: dict, stack: int, projector_hidden: int, seed: int) -> Path:
    """A SpeechLLM around a random LM of the teacher's shape, saved to ``out_dir`` (see module docstring)."""
    from xopd.lab.world.teacher import TEACHER_SHAPE, build_model
    from xopd.lab.world.tokenizer import build_world_tokenizer

    tok = build_world_tokenizer()
    lm = build_model(tok, seed=seed, **TEACHER_SHAPE)
    student = compose_student(encoder, lm, tokenizer=tok, stack=stack, projector_hidden=projector_hidden,
                              adapter=adapter, seed=seed)
    student.save_pretrained(out_dir)
    return out_dir


def encode_all(model, examples: Sequence[Example], desc: str = "encode audio") -> float:
    """Fill the model's (process-wide) frozen-encoder cache with every example's clip; returns seconds.

    Each clip is encoded alone, as the cache always does (its value must not depend on a batch), so
    this only moves the work in front of training, where it can overlap with the teacher."""
    t0 = time.perf_counter()
    clips = [e for e in examples if not (e.meta and e.meta.get("text_only"))]
    with torch.no_grad():
        for i in tqdm(range(0, len(clips), 16), desc=desc, unit="batch", dynamic_ncols=True):
            model.encode_hidden([e.load_waveform() for e in clips[i : i + 16]])
    return time.perf_counter() - t0


def transplant_adapter(student, hearing_dir: Path) -> None:
    """Copy the trained CTC adapter of the hearing student at ``hearing_dir`` into ``student``."""
    from safetensors.torch import load_file

    student.adapter.load_state_dict(load_file(str(hearing_dir / "adapter.safetensors")))
