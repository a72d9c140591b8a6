"""``xopd train`` as users run it: the core trainer with the CPU speed kit and the lab's options.

:class:`LabTrainConfig` composes the core ``TrainConfig``, the kit's ``CPUConfig`` and the groups
below, so every key users write in YAML or on the command line keeps working. :func:`run_train`
builds tiny assets when asked (``bootstrap: tiny``), turns the options into trainer callbacks and
runs :func:`xopd.training.trainer.train` with the kit active (it acts only on CPU tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xopd import cpu
from xopd.algos.base import AlgoContext
from xopd.algos.configs import SFTConfig
from xopd.algos.sft import SFT
from xopd.config import field
from xopd.cpu.config import CPUConfig
from xopd.data.manifest import Example, read_manifest
from xopd.errors import ConfigError
from xopd.generation.seeds import replay_seed
from xopd.training.callbacks import TrainerCallback, TrainRun
from xopd.training.config import TrainConfig
from xopd.training.memory import autocast_context
from xopd.training.state import DataOrder
from xopd.training.trainer import train


@dataclass
class RehearsalConfig:
    """Rehearsal rows trained with SFT on S beside the algorithm, against forgetting (the demo's X-OPD)."""

    replay_manifest: str | None = field(None, help="rehearsal rows (e.g. ASR / audio-only) trained with SFT on S "
                                        "alongside the algorithm, to limit forgetting (None: off)")
    replay_batch: int = field(0, help="rehearsal rows per optimizer step (0: off)")
    replay_coef: float = field(1.0, help="weight of the rehearsal SFT loss")

    def check(self) -> None:
        if self.replay_batch < 0:
            raise ConfigError(f"config: 'replay_batch' must be >= 0 (0: off), got {self.replay_batch}")
        if self.replay_coef < 0:
            raise ConfigError(f"config: 'replay_coef' must be >= 0, got {self.replay_coef}")


@dataclass
class LabConfig:
    """Lab options: tiny assets, encoder-cache files, and the per-sample prompt path for benchmarks."""

    bootstrap: str | None = field(
        None, choices=("tiny",), help="build missing assets first: 'tiny' makes a tiny student/teacher/manifest"
    )
    shared_prompt: bool = field(True, help="compute each distinct prompt once for its n samples (rollout "
                                "prefill, teacher scoring, student update); False repeats it per sample, "
                                "as TRL and verl do: the same computation up to float rounding, for benchmarks")
    cache_encoder_dtype: str = field("auto", choices=("auto", "float32", "float16", "bfloat16"),
                                     help="storage dtype of the encoder cache (auto: the encoder's; float16 "
                                     "halves its memory on a large dataset)")
    encoder_cache_file: str | None = field(None, help="safetensors file of frozen-encoder outputs to preload into "
                                           "the cache (SpeechLLM.save_encoder_cache; `xopd demo` writes one)")


@dataclass
class LabTrainConfig(TrainConfig, CPUConfig, RehearsalConfig, LabConfig):
    """Every key of ``xopd train``: the core trainer's, the CPU speed kit's and the lab's."""

    moved_keys = {}

    def assets_required(self) -> bool:
        return self.bootstrap is None


def bootstrap_assets(cfg: LabTrainConfig) -> LabTrainConfig:
    """``bootstrap: tiny`` builds a tiny student/teacher/manifest (cached) and points the config at it."""
    if cfg.bootstrap != "tiny":
        return cfg
    from xopd.lab.tiny import build_tiny_world

    assets = build_tiny_world(Path(cfg.output_dir).parent / "tiny-assets", seed=0)
    cfg.student_path = cfg.student_path or str(assets["student"])
    cfg.teacher_path = cfg.teacher_path or str(assets["teacher"])
    cfg.manifest = cfg.manifest or str(assets["manifest"])
    return cfg


class ModelOptions(TrainerCallback):
    """``shared_prompt: false`` (the per-sample prompt path) and the encoder cache's dtype and file."""

    def __init__(self, cfg: LabTrainConfig) -> None:
        self.cfg = cfg

    def on_models_loaded(self, run: TrainRun) -> None:
        cfg = self.cfg
        if not cfg.shared_prompt:  # the per-sample prompt path (benchmarks compare it with the shared one)
            for m in (run.student, run.teacher):
                if m is not None:
                    m.shared_prompt_ok = False
        if cfg.cache_encoder and not cfg.train_encoder:
            if cfg.cache_encoder_dtype != "auto":
                run.student.enable_encoder_cache(dtype=cfg.cache_encoder_dtype)
            if cfg.encoder_cache_file and Path(cfg.encoder_cache_file).is_file():
                run.student.load_encoder_cache(cfg.encoder_cache_file)


class Rehearsal(TrainerCallback):
    """``replay_batch`` rehearsal rows a step, SFT on S (so the algorithm's update does not erase them),
    added to the step's loss with weight ``replay_coef``; its data order resumes from checkpoints."""

    state_key = "replay_data"

    def __init__(self, cfg: LabTrainConfig, rows: list[Example]) -> None:
        self.cfg, self.rows = cfg, rows
        self.order = DataOrder(len(rows), replay_seed(cfg.seed))
        self.sft: SFT | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = DataOrder(len(self.rows), replay_seed(self.cfg.seed), **(state or {"epoch": 0, "index": 0}))

    def state_dict(self) -> dict[str, Any]:
        return self.order.state()

    def on_models_loaded(self, run: TrainRun) -> None:
        if self.cfg.replay_batch % run.dist.world:
            raise ConfigError(f"config: 'replay_batch' ({self.cfg.replay_batch}) must be a multiple of the process "
                              f"count ({run.dist.world})")

    def extra_loss(self, run: TrainRun, step: int, generator: torch.Generator) -> tuple[float, dict[str, float]]:
        cfg = self.cfg
        if self.sft is None:
            sft_cfg = SFTConfig(**{**{k: getattr(cfg, k) for k in SFTConfig.__dataclass_fields__}, "sft_view": "S"})
            self.sft = SFT(sft_cfg, run.student, None, context=AlgoContext.of(cfg))
        idx = self.order.take(cfg.replay_batch)
        per_rank = cfg.replay_batch // run.dist.world
        batch = [self.rows[i] for i in idx[run.dist.rank * per_rank:(run.dist.rank + 1) * per_rank]]
        with autocast_context(run.device, cfg.autocast_bf16):
            out = self.sft.step(batch, generator)
        (cfg.replay_coef * out.loss).backward()
        nll = float(out.loss.detach())
        return cfg.replay_coef * nll, {"replay_nll": nll}


def callbacks_for(cfg: LabTrainConfig, replay: list[Example] | None = None) -> list[TrainerCallback]:
    """The trainer callbacks ``cfg`` asks for: the CPU kit's, the model options, rehearsal."""
    out: list[TrainerCallback] = [cpu.CPUTrainerHooks(cfg), ModelOptions(cfg)]
    if replay is None and cfg.replay_manifest and cfg.replay_batch:
        replay = read_manifest(cfg.replay_manifest, strict=cfg.strict, max_audio_seconds=cfg.max_audio_seconds)[0]
        if not replay:
            raise ConfigError(f"config: 'replay_manifest' {cfg.replay_manifest!r} has no usable rows")
    if replay is not None and cfg.replay_batch:
        if not replay:
            raise ConfigError("config: the rehearsal rows are empty")
        out.append(Rehearsal(cfg, replay))
    return out


def run_train(cfg: LabTrainConfig, examples: list[Example] | None = None,
              replay: list[Example] | None = None) -> Path:
    """Train ``cfg`` as ``xopd train`` does; ``examples`` / ``replay`` override the manifests (pipelines)."""
    cfg = bootstrap_assets(cfg)
    with cpu.activated(cfg):
        return train(cfg, examples, callbacks_for(cfg, replay))
