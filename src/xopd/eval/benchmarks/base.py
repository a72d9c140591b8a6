"""What a benchmark loader hands to ``xopd eval``: subsets of :class:`Example` rows plus their scorer.

A :class:`Subset` is one row of the report (one term of the Avg. Drop): its examples (audio kept
encoded until a prompt needs it), which views exist (S always; T only where the copy has a text
twin), and a pure scoring function over the responses of one run. Scores are percentages, except
VoiceBench's GPT scores, which keep the official 1-5 scale (the relative drop does not depend on
the scale).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xopd.data.manifest import Example
from xopd.errors import DataError

__all__ = ["ScoreContext", "Subset", "bench_prompt", "judge_skip", "parse_spec"]


@dataclass
class ScoreContext:
    """What scoring may use besides the responses: the judge (None = none given) and the seed of
    every random fallback of an official scorer."""

    judge: Any = None
    seed: int = 0


ScoreFn = Callable[[Sequence[Example], Sequence[str], ScoreContext], dict[str, Any]]


@dataclass
class Subset:
    """One benchmark row of the report."""

    benchmark: str  # registry name, e.g. "voicebench"
    name: str  # report row, e.g. "voicebench/sd-qa"
    examples: list[Example]
    unit: str  # what the score means, e.g. "accuracy %", "GPT score (1-5)"
    scorer: str  # which rule scores it (named in the report)
    score: ScoreFn | None  # None: not scored (see ``skip``)
    views: tuple[str, ...] = ("S", "T")
    metric: str = "accuracy"  # "accuracy" (enters Avg. Drop) or "audio_only" (forgetting probe)
    skip: str | None = None  # why the subset is not run at all
    source: str = ""  # the files read
    rules: str | None = None  # which rule set scores it, where a benchmark has more than one (VoiceBench)
    notes: list[str] = field(default_factory=list)


def judge_skip(ctx: ScoreContext, n: int) -> dict[str, Any] | None:
    """The result of a judged subset when no judge was given (never silently scored)."""
    if ctx.judge is not None:
        return None
    return {
        "score": None,
        "scored": 0,
        "unscored": n,
        "skipped": "needs a judge: pass --judge-url and --judge-model, or --judge-model-dir",
    }


def parse_spec(spec: str, known: Sequence[str], bench: str) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` checked against ``known``; an empty spec -> None (the default set)."""
    if not spec:
        return None
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in chosen if s not in known]
    if bad:
        raise DataError(f"--bench {bench}:{spec}: unknown subset {bad[0]!r}; known: {', '.join(known)}")
    return chosen


def bench_prompt(example: Example, view: str, max_audio_seconds: float | None = None):
    """The S or T prompt of a benchmark row, with its conversation history when it has one.

    ``meta["history"]``: earlier turns, oldest first, each ``{"role", "text", "audio_bytes"?,
    "audio"?}``; in the S view user turns are their audio, in the T view their transcript (what
    the text teacher sees). Without a history this is the manifest rows' own S/T prompt.
    """
    from xopd.algos.base import make_prompt
    from xopd.data.audio import decode_audio_bytes, load_audio
    from xopd.models.base import Prompt, Turn

    history = (example.meta or {}).get("history")
    if not history:
        return make_prompt(example, view, max_audio_seconds)
    turns = []
    for k, t in enumerate(history):
        if t["role"] == "assistant" or view == "T":
            turns.append(Turn(t["role"], text=t.get("text") or ""))
            continue
        if t.get("audio_bytes") is not None:
            wav = decode_audio_bytes(t["audio_bytes"], f"example {example.id!r} turn {k + 1}")
        else:
            wav = load_audio(t["audio"], max_seconds=max_audio_seconds)
        turns.append(Turn("user", audio=wav))
    if view == "S":
        return Prompt(text=None, audio=example.load_waveform(max_audio_seconds), view="S", history=turns)
    return Prompt(text=example.text, view="T", history=turns)
