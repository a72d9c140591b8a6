"""The benchmark's fixed world: tiny Llama-style student/teacher pairs (S, M), one shared tokenizer,
and 16 text prompts of ~29 chat-templated tokens.

Built from configs on the spot (no downloads) and saved as standard HF directories so xopd and TRL
load exactly the same weights, tokenizer and chat template. Student and teacher share the
architecture of their size and differ only in their random init (seeds), as in a fresh on-policy
distillation run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from xopd.lab.tiny import DEFAULT_WORDS, build_tiny_tokenizer, tiny_llama
from xopd.utils.hf import quiet_hf

#: d_model, layers, ffn width, attention heads (head dim 64 at M, 32 at S).
SIZES: dict[str, dict[str, int]] = {
    "S": {"d": 128, "layers": 4, "ffn": 512, "heads": 4},
    "M": {"d": 384, "layers": 6, "ffn": 1536, "heads": 6},
    "XS": {"d": 32, "layers": 2, "ffn": 64, "heads": 2},  # for the --quick smoke run only
    # X-OPD-shaped workload on M's model (bench/x_shape.py): long prompts, short answers, n samples
    "X": {"d": 384, "layers": 6, "ffn": 1536, "heads": 6},
}
PROMPT_WORDS = 22  # + the chat template's tokens -> 29 prompt tokens with the tiny tokenizer


@dataclass
class BenchWorld:
    """Paths of one size's pair plus the prompts (user-turn texts) every trainer gets."""

    size: str
    student: Path
    teacher: Path
    prompts: list[str]
    params: int  # student parameters (all trainable)


def bench_prompts(n: int = 16, seed: int = 0, words: int = PROMPT_WORDS) -> list[str]:
    """``n`` seeded word-salad prompts; their chat-templated length is ~29 tokens."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(DEFAULT_WORDS, k=words)) for _ in range(n)]


def _llama(tok, spec: dict[str, int], seed: int):
    return tiny_llama(tok, spec["d"], spec["layers"], spec["heads"], spec["ffn"], seed, max_positions=512).eval()


def build_bench_world(size: str, root: str | Path, n_prompts: int = 16, seed: int = 0,
                      words: int = PROMPT_WORDS, spec: dict[str, int] | None = None) -> BenchWorld:
    """Build (or reuse) ``root/size/{student,teacher}`` and return the world for ``size`` (its models
    from ``SIZES[size]`` unless ``spec`` is given; ``n_prompts`` prompts of ``words`` words)."""
    if size not in SIZES:
        raise ValueError(f"unknown bench size {size!r}; choose from {', '.join(SIZES)}")
    quiet_hf(offline=False)
    spec = spec or SIZES[size]
    base = Path(root) / size
    marker = base / "world.json"
    key = {"spec": spec, "seed": seed}
    if not (marker.is_file() and json.loads(marker.read_text()).get("key") == key):
        tok = build_tiny_tokenizer()
        for name, s in (("student", seed + 1), ("teacher", seed + 2)):
            model = _llama(tok, spec, s)
            model.save_pretrained(base / name)
            tok.save_pretrained(base / name)
        params = sum(p.numel() for p in _llama(tok, spec, seed + 1).parameters())
        marker.write_text(json.dumps({"key": key, "params": params}))
    params = int(json.loads(marker.read_text())["params"])
    return BenchWorld(size, base / "student", base / "teacher", bench_prompts(n_prompts, seed, words), params)
