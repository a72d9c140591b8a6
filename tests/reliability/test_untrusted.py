"""Untrusted files: weights only via safetensors / torch.load(weights_only=True), no pickle, no shell,
no eval, trust_remote_code off by default; hostile transcripts are data, never commands (TTS with both
backends, `xopd data check` as a subprocess, `xopd train`)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import xopd
from xopd.cli import main

from ._helpers import GOOD_ROWS, run_xopd, train_argv, write_manifest_lines

SRC = Path(xopd.__file__).resolve().parent
PY_FILES = sorted(SRC.rglob("*.py"))

#: Each tries to create ``pwned*`` in the working directory or delete ``canary`` if a shell saw it.
HOSTILE = [
    "$(touch pwned1)",
    "`touch pwned2`",
    "; touch pwned3; rm -rf canary",
    "| touch pwned4",
    "&& touch pwned5 &",
    "--help",
    "-w pwned6.wav",
    "'; touch pwned7; echo '",
    '"; touch pwned8; echo "',
    "hello\ntouch pwned9",
    "$(rm -rf canary) ${IFS}touch${IFS}pwned10",
]


def _calls(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, ast.Call))


def _dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # model(...).eval() is not eval()
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.AST]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(encoding="utf-8")) for p in PY_FILES}


def test_no_unsafe_deserialisation_or_execution_in_src(trees):
    problems = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else []
                )
                bad = {m.split(".")[0] for m in mods if m} & {
                    "pickle",
                    "dill",
                    "cloudpickle",
                    "marshal",
                    "shelve",
                }
                if bad:
                    problems.append(f"{name}:{node.lineno}: imports {bad}")
        for call in _calls(tree):
            fn = _dotted(call.func)
            where = f"{name}:{call.lineno}: {fn}"
            if fn == "torch.load" and not _is_true(_kw(call, "weights_only")):
                problems.append(f"{where} without weights_only=True")
            if fn in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where}: use yaml.safe_load")
            if fn in ("np.load", "numpy.load") and _is_true(_kw(call, "allow_pickle")):
                problems.append(f"{where} with allow_pickle=True")
            if fn in ("eval", "exec", "os.system", "os.popen", "pickle.load", "pickle.loads"):
                problems.append(where)
            if _is_true(_kw(call, "shell")):
                problems.append(f"{where} with shell=True")
    assert not problems, "\n".join(problems)


def test_torch_load_is_only_used_on_checkpoints_we_write(trees):
    """Model weights go through safetensors; torch.load only reads optimizer/scheduler/RNG state."""
    users = {name for name, tree in trees.items() for c in _calls(tree) if _dotted(c.func) == "torch.load"}
    assert users <= {"training/checkpoint.py"}, users


def test_trust_remote_code_is_off_unless_the_user_sets_it(trees):
    problems, seen = [], 0
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                args = node.args
                pos = args.posonlyargs + args.args
                pairs = list(zip(pos[len(pos) - len(args.defaults) :], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for a, d in pairs:
                    if a.arg == "trust_remote_code":
                        seen += 1
                        if not (isinstance(d, ast.Constant) and d.value is False):
                            problems.append(
                                f"{name}:{node.lineno}: {node.name}(trust_remote_code=...) default"
                            )
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "trust_remote_code":
                seen += 1
                v = node.value
                default = v.args[0] if isinstance(v, ast.Call) and v.args else v
                if not (isinstance(default, ast.Constant) and default.value is False):
                    problems.append(f"{name}:{node.lineno}: config field trust_remote_code default")
            if isinstance(node, ast.Call) and _is_true(_kw(node, "trust_remote_code")):
                problems.append(f"{name}:{node.lineno}: trust_remote_code=True hard-coded")
    assert seen >= 4 and not problems, "\n".join(problems)
    from xopd.training.config import TrainConfig

    assert TrainConfig().trust_remote_code is False


def _assert_nothing_ran(root: Path) -> None:
    created = sorted(str(p.relative_to(root)) for p in root.rglob("pwned*"))
    assert not created, f"hostile text was executed: {created}"
    assert (root / "canary").read_text() == "alive"


@pytest.mark.parametrize("backend", ["ctypes", "subprocess"])
def test_hostile_text_through_tts_is_only_spoken(backend, tmp_path, monkeypatch):
    from xopd.data.tts import EspeakEngine, TTSError, Voice, synthesize_cached

    try:
        engine = EspeakEngine(backend=backend)
    except TTSError as e:
        pytest.skip(str(e))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "canary").write_text("alive")
    voice = Voice("en-us", rate=400)
    for i, text in enumerate(HOSTILE):
        wav = engine.synth(text, voice)
        assert wav.size > 0 and wav.dtype.name == "float32"
        path = synthesize_cached(engine, text, voice, tmp_path / "cache", seed=i)
        assert path.is_file() and path.parent.parent == tmp_path / "cache"  # text never becomes a path
    _assert_nothing_ran(tmp_path)
    assert not (tmp_path / "pwned6.wav").exists()  # `-w FILE` was read aloud, not taken as an option


def _hostile_manifest(data_dir: Path) -> Path:
    rows = [*GOOD_ROWS]
    for i, text in enumerate(HOSTILE):
        rows.append({"id": f"h{i} {text}", "audio": f"audio/000{i % 2}.wav", "text": text})
    rows.append(
        {"id": "$(touch pwned_id)", "audio": "audio/$(touch pwned_path).wav", "text": "`touch pwned_t`"}
    )
    rows.append({"id": "--help", "audio": "--help", "text": "-rf canary"})
    return write_manifest_lines(data_dir / "m.jsonl", rows)


def test_hostile_manifest_through_data_check_subprocess(data_dir):
    root = data_dir.parent
    (root / "canary").write_text("alive")
    man = _hostile_manifest(data_dir)
    res = run_xopd("data", "check", man.name, "--json", cwd=data_dir)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"] == 2 + len(HOSTILE)
    assert rep["ids"]["audio_missing"] == ["$(touch pwned_id)", "--help"]  # ids round-trip verbatim
    _assert_nothing_ran(root)


def test_hostile_manifest_through_train(tiny_world, data_dir, monkeypatch):
    root = data_dir.parent
    (root / "canary").write_text("alive")
    man = _hostile_manifest(data_dir)
    monkeypatch.chdir(root)
    assert (
        main(
            train_argv(
                tiny_world, root / "run", 2, "--batch_size", "8", "--micro_batch_size", "8", manifest=str(man)
            )
        )
        == 0
    )
    skipped = json.loads((root / "run" / "skipped.json").read_text())
    assert skipped["ids"] == {"audio_missing": ["$(touch pwned_id)", "--help"]}
    _assert_nothing_ran(root)
