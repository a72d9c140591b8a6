"""Offline KD: SFT on the teacher's own responses to the transcript T (the paper's Offline KD row).

The teacher answers every training prompt from T once (greedy by default, or sampled with
``kd_temperature`` > 0); the student is then trained exactly like :class:`~xopd.algos.sft.SFT` (speech
view S, cross-entropy, EOS-closed target) with that response in place of the dataset's reference.

Teacher responses are generated lazily, the first time a row is seen, and kept in a JSONL cache
(``kd_cache``, default ``<output_dir>/kd_cache.jsonl``) keyed by (teacher directory, example id,
T prompt, generation settings), so a resumed run, another seed or another algorithm sharing the cache
never calls the teacher again for a row it has answered. The file is rewritten atomically (temp file +
``os.replace``), merged with what is on disk at that moment, so a crash never leaves a torn cache.
``prepare`` fills the cache for a whole data set up front (to time generation separately).

Sampled responses use one generator per row, seeded by (``seed``, example id), so what the teacher
says about a row does not depend on which micro-batch it first appeared in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from xopd.algos.base import StepOutput, make_prompts
from xopd.algos.configs import OfflineKDConfig
from xopd.algos.grpo import decode_responses
from xopd.algos.sft import SFT
from xopd.data.manifest import Example
from xopd.errors import ConfigError, DataError
from xopd.generation import sample

RESPONSE_FIELD = "teacher_response"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class TeacherResponseCache:
    """A JSONL file of teacher responses: one object per line with ``key``, ``id``, ``response``, ...

    Unreadable lines (hand edits) are ignored, not fatal: a missing entry is only regenerated.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(row, dict)
                and isinstance(row.get("key"), str)
                and isinstance(row.get("response"), str)
            ):
                out[row["key"]] = row
        return out

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def __len__(self) -> int:
        return len(self.entries)

    def put_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows and rewrite the file atomically (merged with entries other runs wrote meanwhile)."""
        rows = list(rows)
        if not rows:
            return
        merged = self._read()
        merged.update(self.entries)
        merged.update({r["key"]: r for r in rows})
        self.entries = merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in merged.values():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class OfflineKD(SFT):
    name = "offline_kd"
    uses_teacher = True
    config_cls = OfflineKDConfig
    response_field = RESPONSE_FIELD

    def __init__(self, cfg, student, teacher, vocab_limit=None, context=None, engine=None):
        super().__init__(cfg, student, teacher, vocab_limit, context, engine)
        cfg = self.cfg
        if teacher is None:
            raise ConfigError(
                "config: algo offline_kd needs a teacher to write its responses (set teacher_path)"
            )
        path = cfg.kd_cache or Path(self.ctx.output_dir) / "kd_cache.jsonl"
        self.cache = TeacherResponseCache(path)
        if self.ctx.teacher_path:
            self.teacher_id = str(Path(self.ctx.teacher_path).resolve())
        else:
            self.teacher_id = str(
                getattr(teacher.causal_lm().config, "_name_or_path", "") or type(teacher).__name__
            )

    # -- cache keys ---------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything besides the teacher and the prompt that decides what the teacher writes."""
        cfg = self.cfg
        temp = float(cfg.kd_temperature)
        out: dict[str, Any] = {
            "temperature": temp,
            "max_new_tokens": cfg.max_new_tokens,
            "vocab_limit": self.vocab_limit,
        }
        if temp > 0:
            out.update(top_p=cfg.top_p, top_k=cfg.top_k, seed=self.ctx.seed)
        return out

    def key(self, example: Example) -> str:
        prompt = make_prompts([example], "T")[0].text
        return _digest([self.teacher_id, example.id, prompt, self.settings()])

    # -- generation ---------------------------------------------------------------------------
    def _generate(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        """Teacher responses to T for ``examples`` (no cache involved): one cache row each."""
        cfg, teacher, settings = self.cfg, self.teacher, self.settings()
        temp = settings["temperature"]
        # One batched call. Sampled rows draw from per-example seeds (seed, example id), so a response
        # is independent of batch composition, rank and order; greedy needs no seed. Same decode path
        # (and decode backend) as every on-policy rollout.
        row_seeds = [int(_digest([self.ctx.seed, ex.id])[:15], 16) for ex in examples] if temp > 0 else None
        ro = sample(
            teacher,
            teacher.embed_prompts(make_prompts(examples, "T")),
            1,
            cfg.max_new_tokens,
            temp,
            cfg.top_p,
            cfg.top_k,
            torch.Generator(device=teacher.device).manual_seed(self.ctx.seed),
            vocab_limit=self.vocab_limit,
            row_seeds=row_seeds,
        )
        rollouts = [(ro, i) for i in range(len(examples))]
        rows = []
        for ex, (ro, i) in zip(examples, rollouts):
            text = decode_responses(teacher.tokenizer, ro.ids[i : i + 1], ro.mask[i : i + 1])[0]
            rows.append(
                {
                    "key": self.key(ex),
                    "id": ex.id,
                    "teacher": self.teacher_id,
                    "settings": settings,
                    "response": text,
                    "ended": bool(ro.ended[i]),
                    "ids": ro.ids[i][ro.mask[i]].tolist(),
                }
            )
        return rows

    @torch.no_grad()
    def teacher_responses(self, examples: Sequence[Example]) -> tuple[list[str], int]:
        """(the teacher's response to each example, how many had to be generated now)."""
        keys = [self.key(ex) for ex in examples]
        missing: dict[str, Example] = {}
        for k, ex in zip(keys, examples):
            if self.cache.get(k) is None:
                missing.setdefault(k, ex)
        if missing:
            self.cache.put_many(self._generate(list(missing.values())))
        return [self.cache.get(k)["response"] for k in keys], len(missing)

    def prepare(self, examples: Sequence[Example], batch_size: int = 32) -> int:
        """Fill the cache for every example up front; returns how many responses were generated."""
        done = 0
        for i in range(0, len(examples), batch_size):
            done += self.teacher_responses(examples[i : i + batch_size])[1]
        return done

    # -- training -----------------------------------------------------------------------------
    def step(self, examples: Sequence[Example], generator: torch.Generator) -> StepOutput:
        texts, generated = self.teacher_responses(examples)
        # An empty teacher answer cannot be an SFT target (it would only teach "stop at once"); drop it.
        rows = [
            dataclasses.replace(ex, meta={**ex.meta, RESPONSE_FIELD: t})
            for ex, t in zip(examples, texts)
            if t
        ]
        if not rows:
            raise DataError(
                f"offline_kd: the teacher wrote empty responses for every row of a micro-batch "
                f"({', '.join(ex.id for ex in examples[:3])}, ...); check the teacher and its "
                "chat template, or raise max_new_tokens"
            )
        out = super().step(rows, generator)
        out.metrics["kd_generated"] = float(generated)
        out.metrics["kd_empty_frac"] = 1.0 - len(rows) / len(examples)
        return out
