"""The paper's benchmarks, read from local copies in their published layouts and scored as their
official code scores them.

Registry: ``--bench NAME[:subset,...]`` -> a module with ``load(root, spec, limit) -> list[Subset]``.
One module per benchmark (loader + scoring rules); see each module's docstring for the layout it
reads, its official source and where it had to approximate.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from xopd.errors import ConfigError, DataError
from xopd.eval.benchmarks.base import ScoreContext, Subset, bench_prompt

__all__ = ["BENCHMARKS", "ScoreContext", "Subset", "bench_prompt", "load_benchmark", "split_spec"]

#: name -> module (imported on use)
BENCHMARKS = {
    "voicebench": "xopd.eval.benchmarks.voicebench",
    "big_bench_audio": "xopd.eval.benchmarks.big_bench_audio",
    "mmar": "xopd.eval.benchmarks.mmar",
    "audio_multichallenge": "xopd.eval.benchmarks.audio_multichallenge",
}


def split_spec(spec: str) -> tuple[str, str]:
    """``"voicebench:sd-qa,mmsu"`` -> ``("voicebench", "sd-qa,mmsu")``; unknown names are a ConfigError."""
    name, _, subsets = spec.partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in BENCHMARKS:
        raise ConfigError(f"--bench {spec!r}: unknown benchmark; choose from {', '.join(BENCHMARKS)}")
    return name, subsets.strip()


def load_benchmark(spec: str, data: str, limit: int | None = None, *, voicebench_src: str | None = None
                   ) -> list[Subset]:  # fmt: skip
    """The subsets of one ``--bench`` spec read from the local copy at ``data``.

    ``voicebench_src``: a checkout of VoiceBench's code, for VoiceBench's official rule tables
    (else ``$XOPD_VOICEBENCH_SRC``, else xopd's own rules); other benchmarks ignore it.
    """
    name, subsets = split_spec(spec)
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"--data {root}: not found; download the {name} copy first (see docs/BENCHMARKS.md)")
    extra = {"voicebench_src": voicebench_src} if name == "voicebench" else {}
    return importlib.import_module(BENCHMARKS[name]).load(root, subsets, limit, **extra)
