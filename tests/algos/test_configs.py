"""Typed configs: each algorithm receives exactly its own config; TrainConfig composes them flat."""

from __future__ import annotations

import dataclasses

import pytest

from xopd.algos import get_algorithm
from xopd.algos.base import AlgoContext, own_config
from xopd.algos.configs import GKDConfig, RolloutConfig, SFTConfig, XOPDConfig
from xopd.config import build
from xopd.cpu.config import CPUConfig
from xopd.errors import ConfigError
from xopd.lab.train import LabTrainConfig
from xopd.training.config import ALGOS, MOVED_KEYS, TrainConfig


def test_every_algorithm_config_is_part_of_train_config():
    for name in ALGOS:
        algo = get_algorithm(name)
        assert dataclasses.is_dataclass(algo.config_cls), f"{name} declares no config"
        assert algo.config_cls in TrainConfig.__mro__, f"{name}: {algo.config_cls.__name__} is not part of TrainConfig"


def test_an_algorithm_receives_only_its_own_config(tiny_world, tmp_path):
    from xopd.algos.sft import SFT
    from xopd.algos.xopd import XOPD
    from xopd.models import load_student, load_teacher

    cfg = TrainConfig(student_path="s", teacher_path="t", manifest="m", output_dir=str(tmp_path), lam=0.25, seed=7,
                      max_audio_seconds=12.0)
    student, teacher = load_student(tiny_world["student"]), load_teacher(tiny_world["teacher"])
    algo = XOPD(cfg, student, teacher)
    assert type(algo.cfg) is XOPDConfig and algo.cfg.lam == 0.25
    assert not hasattr(algo.cfg, "lr") and not hasattr(algo.cfg, "gkd_beta")  # other groups stay out
    assert algo.ctx == AlgoContext(seed=7, output_dir=str(tmp_path), teacher_path="t", max_audio_seconds=12.0)
    assert type(SFT(cfg, student).cfg) is SFTConfig


def test_own_config_names_what_is_missing():
    with pytest.raises(ConfigError, match="XOPDConfig needs .*lam"):
        own_config(XOPDConfig, RolloutConfig())


def test_per_algorithm_keys_are_declared_once():
    """Each key has one declaring group along the MRO (shared groups, e.g. RolloutConfig, are inherited)."""
    groups = [b for b in TrainConfig.__mro__[1:] if dataclasses.is_dataclass(b)]
    owned = [n for g in groups for n in vars(g).get("__annotations__", {})]
    dup = {n for n in owned if owned.count(n) > 1}
    assert dup <= {"max_new_tokens"}, dup  # SFT's own cut-off and the rollout's length share one key
    assert sorted(set(owned)) == sorted(f.name for f in dataclasses.fields(TrainConfig))


def test_cpu_and_lab_keys_left_the_core_but_still_load():
    core = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not core & set(MOVED_KEYS)
    assert {f.name for f in dataclasses.fields(CPUConfig)} <= set(MOVED_KEYS)
    with pytest.raises(ConfigError, match="'threads' is not a key of TrainConfig: it moved to xopd.cpu.CPUConfig"):
        build(TrainConfig, {"student_path": "s", "teacher_path": "t", "threads": 2})
    cfg = build(LabTrainConfig, {"bootstrap": "tiny", "threads": 2, "fast_decode": False, "replay_batch": 4})
    assert (cfg.threads, cfg.fast_decode, cfg.replay_batch) == (2, False, 4)


def test_group_checks_run_through_train_config():
    with pytest.raises(ConfigError, match="'gkd_beta' must be in"):
        build(LabTrainConfig, {"bootstrap": "tiny", "gkd_beta": 1.5})
    with pytest.raises(ConfigError, match="'lam' must be in"):
        build(LabTrainConfig, {"bootstrap": "tiny", "lam": -0.1})
    with pytest.raises(ConfigError, match="'replay_batch' must be >= 0"):
        build(LabTrainConfig, {"bootstrap": "tiny", "replay_batch": -1})
    with pytest.raises(ConfigError, match="'student_path' is required"):
        build(TrainConfig, {"lam": 0.5})
    # flat YAML keys keep working and land in the right group's field
    cfg = build(LabTrainConfig, {"bootstrap": "tiny", "lam": 1.0, "gkd_lambda": 0.25})
    assert isinstance(cfg, XOPDConfig) and isinstance(cfg, GKDConfig)
    assert (cfg.lam, cfg.gkd_lambda) == (1.0, 0.25)
