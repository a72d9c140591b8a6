"""Per-item response log of ``xopd eval``: written as generated, reused on ``--resume``.

Every response is appended to ``<report>.responses.jsonl`` as soon as its batch is decoded, one
JSON object per line: ``benchmark``, ``run``, ``id``, ``response`` and ``key``, a fingerprint of
what produced it (model directory, view, ``max_new_tokens``, prompt text, audio content, history).
With ``--resume`` a rerun reads the file back and generates only the items whose key it does not
find, so an interrupted evaluation continues where it stopped and a changed prompt or model is
never served a stale answer. Without ``--resume`` the file starts empty.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xopd.data.manifest import Example

__all__ = ["ResponseStore", "generate_logged", "prompt_key"]


def _audio_id(audio_bytes: bytes | None, path: str | None) -> str | None:
    if audio_bytes is not None:
        return hashlib.sha1(audio_bytes).hexdigest()
    if path:
        try:
            st = os.stat(path)
            return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"
        except OSError:
            return path
    return None


def prompt_key(model: str, view: str, max_new_tokens: int, example: Example) -> str:
    """Fingerprint of one generation (see module docstring)."""
    history = [
        [t.get("role"), t.get("text"), _audio_id(t.get("audio_bytes"), t.get("audio"))]
        for t in (example.meta or {}).get("history") or []
    ]
    parts = [
        model, view, max_new_tokens, example.text, (example.meta or {}).get("instruction"),
        _audio_id(example.audio_bytes, example.audio) if view == "S" else None, history,
    ]  # fmt: skip
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


class ResponseStore:
    """The JSONL log (see module docstring)."""

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.known: dict[str, str] = {}
        self.written: set[tuple[str, str, str]] = set()
        if resume and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    self.known[row["key"]] = row["response"]
                    self.written.add((row["benchmark"], row["run"], row["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by a crash
        else:
            self.path.write_text("", encoding="utf-8")
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open while the eval runs)

    @property
    def resumed(self) -> int:
        return len(self.known)

    def get(self, key: str) -> str | None:
        return self.known.get(key)

    def add(self, benchmark: str, run: str, ex_id: str, key: str, response: str) -> None:
        self.known[key] = response
        if (benchmark, run, ex_id) in self.written:
            return
        self.written.add((benchmark, run, ex_id))
        row: dict[str, Any] = {"benchmark": benchmark, "run": run, "id": ex_id, "response": response, "key": key}
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def generate_logged(
    model, examples: Sequence[Example], view: str, store: ResponseStore, *, benchmark: str, run: str,
    model_id: str, max_new_tokens: int, batch_size: int, progress: bool, prompt_fn: Callable | None = None,
) -> list[str]:  # fmt: skip
    """Responses of ``model`` to ``examples`` in ``view``: logged ones reused, the rest generated in
    blocks and logged as each block is decoded (one progress bar per run)."""
    from xopd.eval.generation import generate

    keys = [prompt_key(model_id, view, max_new_tokens, ex) for ex in examples]
    out: list[str | None] = [store.get(k) for k in keys]
    for ex, k, r in zip(examples, keys, out):
        if r is not None:
            store.add(benchmark, run, ex.id, k, r)
    missing = [i for i, r in enumerate(out) if r is None]
    bar = tqdm(total=len(examples), initial=len(examples) - len(missing), desc=f"{benchmark} {run}",
               disable=not progress, leave=False)  # fmt: skip
    block = max(batch_size * 4, 1)
    for s in range(0, len(missing), block):
        idx = missing[s : s + block]
        resp = generate(model, [examples[i] for i in idx], view, max_new_tokens, batch_size, progress=False,
                        prompt_fn=prompt_fn)  # fmt: skip
        for i, r in zip(idx, resp):
            out[i] = r
            store.add(benchmark, run, examples[i].id, keys[i], r)
        bar.update(len(idx))
    bar.close()
    return [r or "" for r in out]
