"""Dataclass configs that double as the CLI (TRL style).

A config is a flat dataclass whose fields carry ``metadata={"help": ...}``. The same class:
- renders ``--help`` (every field, its type, default and help),
- loads a YAML file, then applies ``--key value`` overrides from the command line,
- rejects unknown keys and wrong types with a one-line :class:`ConfigError` naming the key,
- checks value ranges in the dataclass's ``validate()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from xopd.errors import ConfigError

C = TypeVar("C")


def field(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, **kw) -> Any:
    """``dataclasses.field`` with help text (and optional choices) for the CLI."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(underlying type, optional?) for annotations like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return _base_type(args[0])[0], optional
        return str, optional
    if origin in (list, tuple):
        return list, False
    return tp, False


def _coerce(cls_name: str, name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's type, or raise ConfigError."""
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{source}: '{name}' may not be empty (expected {base.__name__})")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, list | tuple):
                raise ValueError
            return list(value)
        if base is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: '{name}' must be {base.__name__}, got {value!r} ({type(value).__name__})"
        ) from None
    return value


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def build(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Instantiate ``cls`` from a dict, checking keys, types and choices, then ``validate()``."""
    fields = config_fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        norm = key.replace("-", "_")
        if norm not in fields:
            moved = getattr(cls, "moved_keys", {}).get(norm)
            if moved:
                raise ConfigError(f"{source}: '{key}' is not a key of {cls.__name__}: it moved to {moved}; "
                                  "`xopd train` accepts it as before")
            close = [f for f in fields if f.startswith(norm[:4])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}; see `xopd train --help` for all keys")
        v = _coerce(cls.__name__, norm, hints[norm], value, source)
        choices = fields[norm].metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise ConfigError(f"{source}: '{norm}' must be one of {list(choices)}, got {v!r}")
        kwargs[norm] = v
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``['--lr', '1e-3', '--resume', '--x=1']`` -> ``{'lr': '1e-3', 'resume': 'true', 'x': '1'}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {tok!r} (overrides look like --key value)")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            val = tokens[i + 1]
            i += 2
        else:
            val = "true"
            i += 1
        out[key.replace("-", "_")] = val
    return out


def add_help_for(parser: argparse.ArgumentParser, cls: type) -> None:
    """Document every field of ``cls`` in ``parser``'s help (they are parsed by parse_overrides).

    A config composed of groups (``TrainConfig`` inherits ``OptimConfig``, ``GKDConfig``, ...) gets one
    help section per group, titled by the group's name and docstring."""
    hints = typing.get_type_hints(cls)
    owners = [b for b in reversed(cls.__mro__) if dataclasses.is_dataclass(b) and vars(b).get("__annotations__")]
    seen: set[str] = set()
    for owner in owners or [cls]:
        own = [f for f in dataclasses.fields(cls) if f.name in vars(owner).get("__annotations__", {})
               and f.name not in seen] if owners else list(dataclasses.fields(cls))
        if not own:
            continue
        seen |= {f.name for f in own}
        doc = (owner.__doc__ or "").strip().split("\n")[0] if owner is not cls and len(owners) > 1 else ""
        title = f"{owner.__name__} keys (YAML or --key value)"
        group = parser.add_argument_group(title, doc.replace("%", "%%") or None)
        for f in own:
            _add_field(group, f, hints[f.name])


def _add_field(group, f: dataclasses.Field, hint: Any) -> None:
    base, optional = _base_type(hint)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"  # type: ignore[misc]
    )
    choices = f.metadata.get("choices")
    tname = "{" + ",".join(map(str, choices)) + "}" if choices else base.__name__.upper()
    extra = {"nargs": "?", "const": "true"} if base is bool else {}
    group.add_argument(
        f"--{f.name}",
        metavar=tname,
        # argparse %-formats help strings: a literal "%" (e.g. "95 %") must reach it as "%%"
        help=f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%"),
        default=argparse.SUPPRESS,
        **extra,
    )


def overrides_from_namespace(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Field values that argparse collected for ``cls`` (only those given on the command line)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def load_config(cls: type[C], config_path: str | None, overrides: dict[str, Any]) -> C:
    """YAML file (optional) then CLI overrides, validated."""
    values = load_yaml(config_path) if config_path else {}
    values.update(overrides)
    return build(cls, values, source=str(config_path) if config_path else "command line")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_namespace(cls: type[C], args: argparse.Namespace) -> C:
    """A command's typed config from its parsed arguments (argparse ``dest`` names = field names), checked
    by the config's ``validate`` when it has one: every subcommand works from a dataclass, whether its
    flags are generated from the dataclass (``add_help_for``) or written by hand for positional
    arguments, aliases and groups."""
    obj = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj
