"""The rollout-engine registry: ``rollout_engine: NAME`` -> an engine for the student.

``hf`` is :class:`~xopd.generation.engine.HFEngine`; ``vllm`` (:mod:`xopd.generation.vllm_engine`) is
imported only when asked for, since vLLM is an optional install. Add one with :func:`register_engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xopd.errors import ConfigError
from xopd.generation.engine import HFEngine, RolloutEngine
from xopd.models.base import PolicyModel

#: engine name -> factory(student, run config) -> engine
EngineFactory = Callable[[PolicyModel, Any], RolloutEngine]


def _vllm(student: PolicyModel, cfg: Any) -> RolloutEngine:
    from xopd.generation.vllm_engine import VLLMEngine  # vLLM is optional: imported only when asked for

    return VLLMEngine(student, cfg)


_ENGINES: dict[str, EngineFactory] = {"hf": lambda student, cfg: HFEngine(), "vllm": _vllm}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make ``rollout_engine: name`` build its engine with ``factory(student, cfg)``."""
    _ENGINES[name] = factory


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def check_engine_name(name: str) -> None:
    """One line naming the choices if no engine is registered as ``name``."""
    if name not in _ENGINES:
        raise ConfigError(f"config: 'rollout_engine' {name!r} is not available; choose one of "
                          f"{', '.join(engine_names())} (hf: xopd's own decode loop, works everywhere)")


def make_engine(name: str, student: PolicyModel, cfg: Any = None) -> RolloutEngine:
    """The engine ``rollout_engine: name`` asks for, built for ``student``; a clear error if unknown."""
    check_engine_name(name)
    return _ENGINES[name](student, cfg)
