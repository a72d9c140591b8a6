"""Typed config of ``xopd bench``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from xopd.config import field
from xopd.errors import ConfigError


@dataclass
class BenchConfig:
    vs_trl: bool = field(False, help="also run TRL's DistillationTrainer and GKDTrainer on the same world")
    sizes: str = field("S,M", help="comma list of sizes: S, M, XS, X")
    steps: int = field(5, help="timed optimizer steps per trainer (after warmup)")
    warmup: int = field(1, help="untimed first steps per trainer")
    rounds: int = field(2, help="repeat every trainer this often; keep the best")
    threads: int = field(0, help="torch threads for every trainer (0: torch default)")
    max_new_tokens: int = field(48, help="new tokens per response (S, M)")
    prompts: int = field(16, help="prompts per step (S, M)")
    rss: bool | None = field(None, help="peak RSS per step type in fresh processes (default: on unless quick)")
    demo_rss: str = field("none", choices=("none", "quick", "full"), help="also measure `xopd demo`'s peak RSS")
    work_dir: str = field("runs/bench", help="scratch models and runs")
    output: str | None = field(None, help="JSON report (default: WORK_DIR/bench.json)")
    quick: bool = field(False, help="XS model, 4 prompts, 8 tokens, 1 round: a smoke run")

    def validate(self) -> None:
        for key in ("steps", "rounds", "max_new_tokens", "prompts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bench: --{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError("bench: --warmup and --threads must be >= 0")

    def resolved(self) -> BenchConfig:
        """The budgets a run uses: ``--quick`` caps them for a smoke run and ``rss`` gets its default. A new
        config, so the one the user gave (and ``validate`` checked) is never changed behind their back."""
        out = replace(self)
        if out.quick:
            out.sizes = "XS" if out.sizes == "S,M" else out.sizes
            out.steps, out.warmup, out.rounds = min(out.steps, 2), min(out.warmup, 1), 1
            out.max_new_tokens, out.prompts = min(out.max_new_tokens, 8), min(out.prompts, 4)
        if out.rss is None:
            out.rss = not out.quick
        return out
