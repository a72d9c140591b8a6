"""Typed config groups: each algorithm declares the groups it reads, TrainConfig composes them flat."""

from __future__ import annotations

import dataclasses

import pytest

from xopd.algos import get_algorithm
from xopd.algos.configs import GKDConfig, XOPDConfig
from xopd.config import build
from xopd.errors import ConfigError
from xopd.training.config import ALGOS, TrainConfig


def test_every_algorithm_declares_groups_that_train_config_composes():
    for name in ALGOS:
        algo = get_algorithm(name)
        assert algo.config_cls, f"{name} declares no config group"
        for group in algo.config_cls:
            assert group in TrainConfig.__mro__, f"{name}: {group.__name__} is not part of TrainConfig"


def test_groups_partition_the_flat_keys():
    groups = [b for b in TrainConfig.__mro__[1:] if dataclasses.is_dataclass(b)]
    owned = [n for g in groups for n in vars(g).get("__annotations__", {})]
    assert len(owned) == len(set(owned)), "a key is declared by two groups"
    assert sorted(owned) == sorted(f.name for f in dataclasses.fields(TrainConfig))


def test_group_checks_run_through_train_config():
    with pytest.raises(ConfigError, match="'gkd_beta' must be in"):
        build(TrainConfig, {"bootstrap": "tiny", "gkd_beta": 1.5})
    with pytest.raises(ConfigError, match="'lam' must be in"):
        build(TrainConfig, {"bootstrap": "tiny", "lam": -0.1})
    # flat YAML keys keep working and land in the right group's field
    cfg = build(TrainConfig, {"bootstrap": "tiny", "lam": 1.0, "gkd_lambda": 0.25})
    assert isinstance(cfg, XOPDConfig) and isinstance(cfg, GKDConfig)
    assert (cfg.lam, cfg.gkd_lambda) == (1.0, 0.25)
