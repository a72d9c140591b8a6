"""Rollout comparisons shared by the CPU tests and their CUDA twins in tests/gpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xopd.generation import decode
from xopd.generation.backend import SampleSpec
from xopd.lab.tiny_recipes import RECIPE_BUILDERS
from xopd.models import load_student
from xopd.models.base import Prompt


def static_and_dynamic_rollouts(recipe: str, root: Path, device: str = "cpu"):
    """(student, rollout over a static cache, rollout over the dynamic cache) of the recipe's tiny student
    on one spoken and one written prompt, n 2, 10 new tokens, per-prompt seeds."""
    student = load_student(RECIPE_BUILDERS[recipe](root)[0]).eval().to(device)
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    batch = student.embed_prompts([Prompt(text=None, audio=wav, view="S"), Prompt(text="hello there", view="T")])
    spec = SampleSpec(n=2, max_new_tokens=10, temperature=1.0, top_p=1.0, top_k=0, vocab_limit=None)
    with torch.no_grad():
        static = decode(student, batch, spec, row_seeds=[1, 2], static_cache=True)
        dynamic = decode(student, batch, spec, row_seeds=[1, 2], static_cache=False)
    return student, static, dynamic
