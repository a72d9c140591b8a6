"""VoiceBench's official scoring tables, read from the user's own checkout of the VoiceBench code.

xopd ships none of VoiceBench's code, phrase tables or judge prompts. For VoiceBench's exact
rule-based scoring, clone https://github.com/MatthewCYM/VoiceBench and pass the checkout with
``--voicebench-src DIR`` (or ``$XOPD_VOICEBENCH_SRC``). This module reads the files below by
parsing them with :mod:`ast`: nothing is imported or executed. String lists are taken with
:func:`ast.literal_eval` on the list nodes; if/elif chains become rule tuples that
:mod:`.voicebench_rules` interprets.

=============================  ===============================================================
``src/evaluator/mcq.py``       in ``extract_answer``: the ``for T in [...]`` loop whose body calls
                               ``T.replace(PLACEHOLDER, C)`` gives the answer templates and the
                               placeholder; its inner ``for C in [...]`` the choice letters; the
                               other ``for C in [...]`` loop's inner ``for P in [...]`` the
                               punctuation after a bare letter; the ``if 'phrase' in response:
                               return 'X'`` chain after the loops the special phrases
``src/evaluator/bbh.py``       ``extract_answer(self, response, id)``'s chain ``if 'subtask' in id:
                               return self.METHOD(response)`` gives the dispatch; every other
                               ``extract_answer_*`` method gives one chain: optional preludes
                               (``x = self.OTHER(response)`` + ``if x is not None: return x``),
                               then an if/elif chain of ``(kind, pattern, label)`` rules, kinds
                               ``eq`` (``response == s``), ``in`` (``s in response``), ``re``
                               (``re.search(s, response)``), ``start`` / ``end``
                               (``response.startswith(s)`` / ``.endswith(s)``), each branch ending
                               in ``return 0`` / ``return 1``; the final ``else`` returns
                               ``random.choice(...)`` (fallback ``random``, seeded here) or
                               ``None`` (fallback ``none``)
``src/evaluator/harm.py``      the list assigned to a name containing ``refusal``
``api_judge.py``               the module-level strings ``meta_prompt_open`` and ``meta_prompt_qa``
                               (a literal, optionally followed by ``.strip()``) and the
                               ``{"role": "system", "content": ...}`` message
=============================  ===============================================================

A missing file or a shape not described here stops with one line naming the file and what was
expected.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from xopd.errors import DataError

__all__ = [
    "ENV_VAR",
    "BbhChain",
    "BbhTables",
    "JudgePrompts",
    "McqTables",
    "load_bbh",
    "load_judge",
    "load_mcq",
    "load_refusals",
    "resolve_src",
]

ENV_VAR = "XOPD_VOICEBENCH_SRC"
FILES = {"mcq": "src/evaluator/mcq.py", "bbh": "src/evaluator/bbh.py", "harm": "src/evaluator/harm.py",
         "judge": "api_judge.py"}  # fmt: skip
RULE_KINDS = ("eq", "in", "re", "start", "end")


@dataclass(frozen=True)
class McqTables:
    templates: tuple[str, ...]
    placeholder: str
    choices: tuple[str, ...]
    punctuation: tuple[str, ...]
    phrases: tuple[tuple[str, str], ...]  # (phrase, letter), tried in order


@dataclass(frozen=True)
class BbhChain:
    preludes: tuple[str, ...]  # chains tried first; a non-None label from one is the answer
    rules: tuple[tuple[str, str, int], ...]  # (kind, pattern, label), first match wins
    fallback: str  # "random" (a random label) or "none" (no label)


@dataclass(frozen=True)
class BbhTables:
    dispatch: tuple[tuple[str, str], ...]  # (substring of the item id, chain name), in order
    chains: dict[str, BbhChain]


@dataclass(frozen=True)
class JudgePrompts:
    open: str  # placeholders {prompt}, {response}
    qa: str  # placeholders {prompt}, {reference}, {response}
    system: str


class _Shape(Exception):
    """A node that is not in the expected shape (turned into a DataError naming the file)."""


def resolve_src(arg: str | os.PathLike | None) -> Path | None:
    """``--voicebench-src`` if given, else ``$XOPD_VOICEBENCH_SRC``, else None (xopd's own rules)."""
    value = arg if arg else os.environ.get(ENV_VAR) or None
    if value is None:
        return None
    src = Path(value).expanduser()
    if not src.is_dir():
        raise DataError(
            f"--voicebench-src {src}: not a folder; clone https://github.com/MatthewCYM/VoiceBench and pass the "
            "checkout (the folder that holds api_judge.py and src/evaluator/)"
        )
    return src


def _parse(src: Path, kind: str) -> tuple[ast.Module, Path]:
    path = src / FILES[kind]
    if not path.is_file():
        raise DataError(f"--voicebench-src {src}: {FILES[kind]} not found; is this a checkout of VoiceBench's code?")
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), path
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not readable Python ({type(e).__name__}: {e})") from None


def _fail(path: Path, expected: str, node: ast.AST | None = None) -> DataError:
    where = f" (line {node.lineno})" if node is not None and hasattr(node, "lineno") else ""
    return DataError(f"{path}{where}: expected {expected}; VoiceBench's file has a shape xopd does not know")


def _strings(node: ast.AST) -> tuple[str, ...]:
    try:
        values = ast.literal_eval(node) if isinstance(node, ast.List | ast.Tuple) else None
    except ValueError:  # a name or call inside the list
        values = None
    if values is None or not all(isinstance(v, str) for v in values):
        raise _Shape("a list of strings")
    return tuple(values)


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _function(tree: ast.AST, name: str) -> ast.FunctionDef | None:
    return next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _arg_names(fn: ast.FunctionDef) -> list[str]:
    names = [a.arg for a in fn.args.args]
    return names[1:] if names and names[0] == "self" else names


def _chain(node: ast.If) -> tuple[list[ast.If], list[ast.stmt]]:
    """An if/elif chain as its branches and the final else body."""
    branches = [node]
    while len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
        node = node.orelse[0]
        branches.append(node)
    return branches, node.orelse


def _returned(body: list[ast.stmt]) -> ast.AST | None:
    """What a branch returns (its last statement must be ``return X``; prints before it are allowed)."""
    if not body or not isinstance(body[-1], ast.Return):
        raise _Shape("a branch ending in a return statement")
    return body[-1].value


# ---- mcq.py


def load_mcq(src: Path) -> McqTables:
    """The multiple-choice tables of ``src/evaluator/mcq.py`` (see the module docstring)."""
    tree, path = _parse(src, "mcq")
    fn = _function(tree, "extract_answer")
    if fn is None:
        raise _fail(path, "a function extract_answer(self, response)")
    response = (_arg_names(fn) or ["response"])[0]
    templates = placeholder = choices = punctuation = None
    loops = [s for s in fn.body if isinstance(s, ast.For)]
    try:
        for loop in loops:
            if not isinstance(loop.target, ast.Name):
                continue
            var = loop.target.id
            replace = next((c for c in ast.walk(loop) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                            and c.func.attr == "replace" and isinstance(c.func.value, ast.Name)
                            and c.func.value.id == var), None)  # fmt: skip
            inner = next((s for s in loop.body if isinstance(s, ast.For)), None)
            if replace is not None and templates is None:
                placeholder = _const_str(replace.args[0] if replace.args else None)
                if placeholder is None or inner is None:
                    raise _Shape("TEMPLATE.replace('<placeholder>', CHOICE) inside a loop over the choices")
                templates, choices = _strings(loop.iter), _strings(inner.iter)
            elif inner is not None and punctuation is None:
                punctuation = _strings(inner.iter)
    except _Shape as e:
        raise _fail(path, f"in extract_answer, {e}") from None
    if templates is None or punctuation is None:
        raise _fail(path, "in extract_answer, a loop over the answer templates (TEMPLATE.replace(placeholder, "
                    "CHOICE)) and a loop over the choices with an inner loop over punctuation", fn)  # fmt: skip
    phrases = []
    after = fn.body[fn.body.index(loops[-1]) + 1:]
    for stmt in (s for s in after if isinstance(s, ast.If)):
        branches, _ = _chain(stmt)
        for b in branches:
            t = b.test
            phrase = _const_str(t.left) if isinstance(t, ast.Compare) else None
            ok = (phrase is not None and len(t.ops) == 1 and isinstance(t.ops[0], ast.In)
                  and isinstance(t.comparators[0], ast.Name) and t.comparators[0].id == response)  # fmt: skip
            try:
                letter = _const_str(_returned(b.body))
            except _Shape:
                letter = None
            if not ok or letter is None:
                raise _fail(path, f"after the loops, only `if '<phrase>' in {response}: return '<letter>'` branches", b)
            phrases.append((phrase, letter))
    return McqTables(templates, placeholder, choices, punctuation, tuple(phrases))


# ---- bbh.py


def _rule(test: ast.AST, response: str) -> tuple[str, str]:
    def is_resp(n: ast.AST) -> bool:
        return isinstance(n, ast.Name) and n.id == response

    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Eq) and is_resp(left) and _const_str(right) is not None:
            return "eq", _const_str(right)
        if isinstance(op, ast.Eq) and is_resp(right) and _const_str(left) is not None:
            return "eq", _const_str(left)
        if isinstance(op, ast.In) and is_resp(right) and _const_str(left) is not None:
            return "in", _const_str(left)
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and not test.keywords:
        f, args = test.func, test.args
        if (f.attr == "search" and isinstance(f.value, ast.Name) and f.value.id == "re" and len(args) == 2
                and _const_str(args[0]) is not None and is_resp(args[1])):  # fmt: skip
            return "re", _const_str(args[0])
        if f.attr in ("startswith", "endswith") and is_resp(f.value) and len(args) == 1 and _const_str(args[0]) is not None:
            return ("start" if f.attr == "startswith" else "end"), _const_str(args[0])
    raise _Shape(
        f"a test of the form {response} == 's', 's' in {response}, re.search(r's', {response}), "
        f"{response}.startswith('s') or {response}.endswith('s')"
    )


def _self_call(node: ast.AST | None) -> str | None:
    """``self.NAME(...)`` -> NAME."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
            return node.func.attr
    return None


def _fallback(body: list[ast.stmt]) -> str:
    value = _returned(body)
    if value is None or (isinstance(value, ast.Constant) and value.value is None):
        return "none"
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "choice":
        if isinstance(value.func.value, ast.Name) and value.func.value.id == "random":
            return "random"
    raise _Shape("a final else returning random.choice([...]) or None")


def _bbh_chain(fn: ast.FunctionDef) -> BbhChain:
    response = (_arg_names(fn) or ["response"])[0]
    preludes: list[str] = []
    pending: dict[str, str] = {}
    rules: list[tuple[str, str, int]] = []
    fallback = None
    for stmt in fn.body:
        if isinstance(stmt, ast.Expr):  # docstring, print
            continue
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = _self_call(stmt.value)
            if name is None:
                raise _Shape("x = self.<other chain>(response) as the only kind of assignment")
            pending[stmt.targets[0].id] = name
            continue
        if isinstance(stmt, ast.If) and fallback is None:
            t = stmt.test
            if (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id in pending
                    and isinstance(t.ops[0], ast.IsNot)):  # fmt: skip
                preludes.append(pending.pop(t.left.id))
                continue
            branches, final = _chain(stmt)
            for b in branches:
                kind, pattern = _rule(b.test, response)
                label = _returned(b.body)
                if not (isinstance(label, ast.Constant) and type(label.value) is int):
                    raise _Shape("branches returning 0 or 1")
                rules.append((kind, pattern, label.value))
            fallback = _fallback(final) if final else None
            continue
        if isinstance(stmt, ast.Return) and fallback is None and rules:
            fallback = _fallback([stmt])
            continue
        raise _Shape("optional preludes, one if/elif chain and a final else")
    if not rules or fallback is None:
        raise _Shape("an if/elif chain of rules ending in an else")
    return BbhChain(tuple(preludes), tuple(rules), fallback)


def load_bbh(src: Path) -> BbhTables:
    """The BBH dispatch and per-subtask rule chains of ``src/evaluator/bbh.py``."""
    tree, path = _parse(src, "bbh")
    fn = _function(tree, "extract_answer")
    args = _arg_names(fn) if fn else []
    top = next((s for s in fn.body if isinstance(s, ast.If)), None) if fn else None
    if fn is None or len(args) < 2 or top is None:
        raise _fail(path, "a function extract_answer(self, response, id) with an if/elif chain over the id", fn)
    dispatch = []
    for b in _chain(top)[0]:
        t = b.test
        sub = _const_str(t.left) if isinstance(t, ast.Compare) else None
        ok = (sub is not None and isinstance(t.ops[0], ast.In) and isinstance(t.comparators[0], ast.Name)
              and t.comparators[0].id == args[1])  # fmt: skip
        method = _self_call(b.body[-1].value) if ok and isinstance(b.body[-1], ast.Return) else None
        if method is None:
            raise _fail(path, f"in extract_answer, `if '<subtask>' in {args[1]}: return self.<method>({args[0]})`", b)
        dispatch.append((sub, method))
    chains = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("extract_answer_"):
            try:
                chains[node.name] = _bbh_chain(node)
            except _Shape as e:
                raise _fail(path, f"in {node.name}, {e}", node) from None
    needed = [m for _, m in dispatch] + [p for c in chains.values() for p in c.preludes]
    missing = next((m for m in needed if m not in chains), None)
    if missing is not None:
        raise _fail(path, f"a method {missing} (named in a dispatch or prelude) holding a rule chain")
    return BbhTables(tuple(dispatch), chains)


# ---- harm.py


def _target_name(t: ast.AST) -> str:
    return t.attr if isinstance(t, ast.Attribute) else t.id if isinstance(t, ast.Name) else ""


def load_refusals(src: Path) -> tuple[str, ...]:
    """The refusal strings of ``src/evaluator/harm.py`` (as written; matching lower-cases them)."""
    tree, path = _parse(src, "harm")
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any("refusal" in _target_name(t) for t in node.targets):
            if isinstance(node.value, ast.List | ast.Tuple):
                try:
                    values = _strings(node.value)
                except _Shape:
                    raise _fail(path, "the refusal list to hold string literals only", node) from None
                if values:
                    return values
    raise _fail(path, "an assignment of a list of strings to a name containing 'refusal'")


# ---- api_judge.py


def _prompt(tree: ast.Module, name: str, path: Path, fields: tuple[str, ...]) -> str:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(_target_name(t) == name for t in node.targets):
            value, strip = node.value, False
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "strip":
                value, strip = value.func.value, not node.value.args
            text = _const_str(value)
            if text is not None:
                text = text.strip() if strip else text
                missing = [f for f in fields if "{" + f + "}" not in text]
                if missing:
                    raise _fail(path, f"{name} to contain the placeholder {{{missing[0]}}}", node)
                return text
    raise _fail(path, f'a module-level {name} = """...""" string (optionally with .strip())')


def load_judge(src: Path) -> JudgePrompts:
    """The judge prompts of ``api_judge.py`` (open-ended 1-5 rating, reference QA yes/no, system message)."""
    tree, path = _parse(src, "judge")
    open_prompt = _prompt(tree, "meta_prompt_open", path, ("prompt", "response"))
    qa_prompt = _prompt(tree, "meta_prompt_qa", path, ("prompt", "reference", "response"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            d = {_const_str(k): v for k, v in zip(node.keys, node.values)}
            if _const_str(d.get("role")) == "system" and _const_str(d.get("content")) is not None:
                return JudgePrompts(open_prompt, qa_prompt, _const_str(d["content"]))
    raise _fail(path, 'a {"role": "system", "content": "..."} message')
