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
    {"cpu"},
    {"lab"},
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


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import names (``from xopd.a import b`` may name module ``xopd.a.b``)."""
    while target and target not in modules:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target in _imports(module, path):
            dst = _resolve(target, modules)
            # a package's own __init__ re-exporting its modules is not a cycle through them
            if dst and dst != module and not module.startswith(dst + "."):
                graph[module].add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_anywhere():
    cycles = _cycles(_graph())
    assert not cycles, "modules importing each other (lazy imports count):\n" + "\n".join(map(str, cycles))


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


CORE = {"errors", "utils", "config", "metrics", "data", "losses", "models", "generation", "algos", "training", "eval"}
#: core modules allowed past the size limits, and why
LONG_MODULES = {
    "xopd.data.manifest": "one row schema with its validation and error messages",
    "xopd.data.synth": "the synthesis job, its resumable state and its report",
}
#: core functions allowed past the limit (none now; a newcomer reads every core function in one screen)
LONG_FUNCTIONS: set[str] = set()
MAX_LINES, MAX_FUNCTION_LINES = 400, 80


def _core(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in CORE and layer_of(module) != TOP


def test_core_modules_and_functions_stay_small():
    big, long_fns = [], []
    for module, path in _modules().items():
        if not _core(module):
            continue
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES and module not in LONG_MODULES:
            big.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{module}.{node.name}" not in LONG_FUNCTIONS:
                    long_fns.append(f"{module}.{node.name}: {n} lines")
    assert not big, f"core modules over {MAX_LINES} lines:\n" + "\n".join(big)
    assert not long_fns, f"core functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long_fns)


def test_core_imports_neither_the_cpu_kit_nor_the_lab():
    """The fence: a GPU user's code path (the core) never imports xopd.cpu or xopd.lab."""
    bad = [f"{m} imports {t}" for m, p in _modules().items() if _core(m)
           for t in _imports(m, p) if t.split(".")[:2] in (["xopd", "cpu"], ["xopd", "lab"])]
    assert not bad, "\n".join(bad)
