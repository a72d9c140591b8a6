"""Imports point down the layers (docs/DESIGN.md section 7): a module may import its own layer and the
layers below it, never one above. Every ``import`` counts, including lazy ones inside functions, so a
cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import xopd

#: bottom first; a package's command front end (``cli.py``, ``*_cli.py``) belongs to the top layer
LAYERS: list[set[str]] = [
    {"errors", "utils"},
    {"config", "metrics"},
    {"data", "losses"},
    {"models"},
    {"generation"},
    {"algos"},
    {"training"},
    {"eval"},
    {"world", "bench", "recipes"},
    {"cli", "commands", "__main__", "__init__"},
]
TOP = len(LAYERS) - 1
SRC = Path(xopd.__file__).parent


def layer_of(module: str) -> int:
    """Layer of a dotted module name inside xopd (``xopd.data.cli`` -> the top layer)."""
    parts = module.split(".")[1:] or ["__init__"]
    if parts[-1] == "cli" or parts[-1].endswith("_cli"):
        return TOP
    for i, layer in enumerate(LAYERS):
        if parts[0] in layer:
            return i
    raise AssertionError(f"{module}: package {parts[0]!r} has no layer; add it to LAYERS and docs/DESIGN.md")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "xopd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "xopd":
                found.add(target)
    return found


def test_every_import_points_down():
    upward = []
    for module, path in _modules().items():
        if module == "xopd":
            continue
        mine = layer_of(module)
        for target in _imports(module, path):
            if target != "xopd" and layer_of(target) > mine:
                upward.append(f"{module} (layer {mine}) imports {target} (layer {layer_of(target)})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from xopd.training.trainer import train\n")
    assert _imports("xopd.models.bad", bad) == {"xopd.training.trainer"}
    assert layer_of("xopd.training.trainer") > layer_of("xopd.models.bad")
    assert layer_of("xopd.models.cli") == TOP and layer_of("xopd.data.synth_cli") == TOP
