"""Mini-world evaluation in the paper's layout (DESIGN.md section 4).

For every split: the teacher answers reasoning/instruct from T; each student answers them from S and
from T; audio-only questions (forgetting probe) and ASR (WER) are asked from S only — the teacher
cannot hear. Avg. Drop dS / dT = mean over benchmarks of (teacher_T - student_x) / teacher_T, in %.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xopd.data.manifest import Example
from xopd.eval.generation import avg_drop, generate, score_responses
from xopd.models import load_student, load_teacher

BENCHES = ("reasoning", "instruct")
EVAL_SPLITS = ("test", "heldout", "unseen_template")


def _score(
    model, examples: Sequence[Example], view: str, max_new_tokens: int, batch_size: int, desc: str
) -> dict[str, float]:
    if not examples:
        return {}
    resp = generate(model, examples, view, max_new_tokens, batch_size, progress=True, desc=desc)
    return score_responses(examples, resp)


def evaluate_student(
    model,
    split_examples: Sequence[Example],
    teacher_T: dict[str, float],
    max_new_tokens: int,
    batch_size: int,
    name: str,
) -> dict:
    """S/T per benchmark, Avg. Drop vs the teacher, audio-only accuracy and ASR WER for one split."""
    bench = [e for e in split_examples if e.task in BENCHES]
    audio = [e for e in split_examples if e.task in ("audio_only", "asr")]
    s = _score(model, bench + audio, "S", max_new_tokens, batch_size, f"{name} S")
    t = _score(model, bench, "T", max_new_tokens, batch_size, f"{name} T")
    out: dict = {
        b: {"S": s.get(b, 0.0), "T": t.get(b, 0.0)} for b in BENCHES if any(e.task == b for e in bench)
    }
    present = [b for b in BENCHES if b in out]
    out["avg_drop_S"] = avg_drop(teacher_T, {b: out[b]["S"] for b in present}, present)
    out["avg_drop_T"] = avg_drop(teacher_T, {b: out[b]["T"] for b in present}, present)
    if "audio_only" in s:
        out["audio_only_acc"] = s["audio_only"]
    if "asr_wer" in s:
        out["asr_wer"] = s["asr_wer"]
    return out


def evaluate_world(
    teacher_dir: str | Path,
    students: dict[str, str | Path],
    splits: dict[str, list[Example]],
    max_new_tokens: int = 48,
    batch_size: int = 64,
    cache_dtype: str | None = None,
) -> dict:
    """``{"teacher": {BENCH: {"T"}}, "teacher_by_split": ..., "models": {name: {split: ...}}}``."""
    teacher = load_teacher(teacher_dir)
    teacher_by_split = {}
    for sp in EVAL_SPLITS:
        bench = [e for e in splits.get(sp, []) if e.task in BENCHES]
        sc = _score(teacher, bench, "T", max_new_tokens, batch_size, f"teacher {sp}")
        teacher_by_split[sp] = {b: {"T": sc[b]} for b in BENCHES if b in sc}
    models: dict = {}
    for name, path in students.items():
        model = load_student(path)
        if hasattr(model, "enable_encoder_cache"):
            model.enable_encoder_cache(dtype=cache_dtype)
        models[name] = {}
        for sp in EVAL_SPLITS:
            base = {b: v["T"] for b, v in teacher_by_split[sp].items()}
            models[name][sp] = evaluate_student(
                model, splits.get(sp, []), base, max_new_tokens, batch_size, f"{name} {sp}"
            )
    return {"teacher": teacher_by_split["test"], "teacher_by_split": teacher_by_split, "models": models}
