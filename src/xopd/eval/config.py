"""``EvalConfig``: every setting of one evaluation, as ``xopd eval`` takes it and recipes pass it."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from xopd.config import field
from xopd.errors import ConfigError


@dataclass
class EvalConfig:
    student: str = field(help="student directory (SpeechLLM, Qwen2-Audio, Omni thinker, LM)")
    output: str = field(help="report JSON path (the .md table is written next to it)")
    teacher: str | None = field(None, help="text teacher directory (base of the Avg. Drop)")
    manifest: list[str] = field([], help="JSONL manifests, one benchmark each")
    bench: list[str] = field([], help="benchmarks from local copies: NAME[:SUBSET,...], each with its --data")
    data: list[str] = field([], help="the local copy of each --bench, in the same order")
    limit: int | None = field(None, help="first N items of every benchmark / subset / split")
    voicebench_src: str | None = field(None, help="a checkout of VoiceBench's code for its official rules")
    scorer: str = field("auto", help="scorer of manifest rows without a 'scorer' field")
    resume: bool = field(False, help="reuse the responses already in OUTPUT.responses.jsonl")
    seed: int = field(0, help="seed of the official scorers' random fallbacks")
    max_new_tokens: int = field(64, help="longest answer (greedy decoding)")
    batch_size: int = field(16, help="prompts per generation batch")
    judge_url: str | None = field(None, help="OpenAI-compatible endpoint for open-ended rows")
    judge_model: str | None = field(None, help="model name to send to the judge")
    judge_model_dir: str | None = field(None, help="a local Hugging Face causal LM as judge")
    device: str = field("cpu", help="cpu, cuda, cuda:N")
    threads: int = field(0, help="torch CPU threads (0 = default)")
    strict: bool = field(False, help="fail on the first bad manifest row instead of skipping it")
    no_progress: bool = field(False, help="no progress bars")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvalConfig:
        """The config from ``xopd eval``'s parsed arguments (their ``dest`` names are the field names)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--max_new_tokens and --batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be >= 1")
        if not self.manifest and not self.bench:
            raise ConfigError("nothing to evaluate: give --manifest FILE and/or --bench NAME --data PATH")
        if len(self.data) != len(self.bench):
            raise ConfigError(
                f"{len(self.bench)} --bench but {len(self.data)} --data: give one --data PATH per --bench, "
                "in the same order"
            )
        if bool(self.judge_url) != bool(self.judge_model):
            raise ConfigError("--judge-url and --judge-model go together: give both or neither")
        if self.judge_url and self.judge_model_dir:
            raise ConfigError("give either --judge-url/--judge-model or --judge-model-dir, not both")
