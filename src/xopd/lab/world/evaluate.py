"""Mini-world evaluation in the paper's layout (docs/DESIGN.md section 4).

For every split: the teacher answers reasoning/instruct from T; each student answers them from S and
from T; audio-only questions (forgetting probe) and ASR (WER) are asked from S only — the teacher
cannot hear. Avg. Drop dS / dT = mean over benchmarks of (teacher_T - student_x) / teacher_T, in %.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from xopd.data.manifest import Example
from xopd.eval.generation import avg_drop, generate, score_responses
from xopd.lab.world.tasks import BENCHES
from xopd.metrics import normalize_text, score_item, wer
from xopd.models import load_student, load_teacher

EVAL_SPLITS = ("test", "heldout", "unseen_template")


def score_view(
    model, examples: Sequence[Example], view: str, max_new_tokens: int, batch_size: int, desc: str
) -> dict[str, float]:
    """Greedy answers of ``model`` on ``view`` of ``examples``, scored per task (accuracy or WER)."""
    if not examples:
        return {}
    resp = generate(model, examples, view, max_new_tokens, batch_size, progress=True, desc=desc)
    return score_responses(examples, resp)


def item_scores(examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
    """Each benchmark answer's own score (1.0 right, 0.0 wrong)."""
    return [score_item(e.task, r, e.answer) for e, r in zip(examples, responses, strict=True)]


def item_kind(example: Example) -> str:
    """A mini-world question's kind: the first two parts of its template id (``instruct/reverse``,
    ``reasoning/birds``); the task when the row names no template (a user's own manifest)."""
    template = (example.meta or {}).get("template")
    return "/".join(str(template).split("/")[:2]) if template else (example.task or "default")


def per_kind(examples: Sequence[Example], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """``{kind: {"acc": mean score, "n": questions}}``, kinds sorted: where a benchmark's errors sit."""
    groups: dict[str, list[float]] = {}
    for e, s in zip(examples, scores, strict=True):
        groups.setdefault(item_kind(e), []).append(s)
    return {k: {"acc": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


def subset_accuracy(examples: Sequence[Example], scores: Sequence[float], keep: set[str]) -> dict[str, float]:
    """Per-benchmark accuracy over the examples whose id is in ``keep``."""
    out: dict[str, float] = {}
    for b in BENCHES:
        xs = [s for e, s in zip(examples, scores, strict=True) if e.task == b and e.id in keep]
        if xs:
            out[b] = sum(xs) / len(xs)
    return out


def evaluate_student(
    model,
    split_examples: Sequence[Example],
    teacher_T: dict[str, float],
    max_new_tokens: int,
    batch_size: int,
    name: str,
    heard_right: dict | None = None,
) -> dict:
    """S/T per benchmark, Avg. Drop vs the teacher, audio-only accuracy and ASR WER for one split.

    ``heard_right`` (``{"ids": ids of the questions the front end heard exactly, "teacher": the teacher's
    accuracy on them}``) adds the same Avg. Drop over those questions only: the gap that is left when
    hearing errors, which no training of the LM can undo, are taken out."""
    bench = [e for e in split_examples if e.task in BENCHES]
    audio = [e for e in split_examples if e.task in ("audio_only", "asr")]
    resp_s = generate(model, bench + audio, "S", max_new_tokens, batch_size, progress=True, desc=f"{name} S") \
        if bench or audio else []
    resp_t = generate(model, bench, "T", max_new_tokens, batch_size, progress=True, desc=f"{name} T") if bench else []
    s, t = score_responses(bench + audio, resp_s), score_responses(bench, resp_t)
    out: dict = {
        b: {"S": s.get(b, 0.0), "T": t.get(b, 0.0)} for b in BENCHES if any(e.task == b for e in bench)
    }
    present = [b for b in BENCHES if b in out]
    out["avg_drop_S"] = avg_drop(teacher_T, {b: out[b]["S"] for b in present}, present)
    out["avg_drop_T"] = avg_drop(teacher_T, {b: out[b]["T"] for b in present}, present)
    items_s, items_t = item_scores(bench, resp_s[: len(bench)]), item_scores(bench, resp_t)
    if bench:
        ks, kt = per_kind(bench, items_s), per_kind(bench, items_t)
        out["per_kind"] = {k: {"S": ks[k]["acc"], "T": kt[k]["acc"], "n": ks[k]["n"]} for k in ks}
    if "audio_only" in s:
        out["audio_only_acc"] = s["audio_only"]
    if "asr_wer" in s:
        out["asr_wer"] = s["asr_wer"]
    if heard_right is not None and bench:
        ids, base = heard_right["ids"], heard_right["teacher"]
        s_sub = subset_accuracy(bench, items_s, ids)
        t_sub = subset_accuracy(bench, items_t, ids)
        out["heard_right"] = {"avg_drop_S": avg_drop(base, s_sub, present),
                              "avg_drop_T": avg_drop(base, t_sub, present),
                              "n": sum(e.id in ids for e in bench)}
    return out


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+", normalize_text(text))


def hear_examples(model, examples: Sequence[Example], batch_size: int = 16) -> list[str]:
    """The front end's own transcript of every example's audio (CTC adapter, greedy; no LM)."""
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        out += model.hear([e.load_waveform() for e in chunk])
    return out


def hearing_report(examples: Sequence[Example], heard: Sequence[str]) -> dict:
    """Token error (corpus WER of the normalised words) of what the front end heard, per benchmark and
    overall, and the share of questions whose numbers were all heard right (in order)."""
    out: dict = {}
    groups = {b: [i for i, e in enumerate(examples) if e.task == b] for b in BENCHES}
    groups["all"] = [i for i, e in enumerate(examples) if e.task in BENCHES]
    for name, idx in groups.items():
        if not idx:
            continue
        refs, hyps = [examples[i].text for i in idx], [heard[i] for i in idx]
        out[name] = {
            "token_error": wer(refs, hyps),
            "numbers_right": sum(_numbers(r) == _numbers(h) for r, h in zip(refs, hyps)) / len(idx),
            "exact": sum(normalize_text(r) == normalize_text(h) for r, h in zip(refs, hyps)) / len(idx),
            "n": len(idx),
        }
    return {**out.pop("all", {}), "per_bench": out}


def cascade_scores(teacher, examples: Sequence[Example], heard: Sequence[str], max_new_tokens: int,
                   batch_size: int, desc: str) -> dict:
    """The text teacher as the LLM of a cascade: it answers the front end's transcript (``front_end``)
    and the normalised reference transcript (``reference``: lower case, no punctuation), per benchmark,
    and per question kind under ``"per_kind"`` (``{kind: {"front_end", "reference", "n"}}``)."""
    bench = [(e, h) for e, h in zip(examples, heard) if e.task in BENCHES]
    if not bench:
        return {}
    fe = [replace(e, text=h or "?") for e, h in bench]
    ref = [replace(e, text=normalize_text(e.text) or "?") for e, _ in bench]
    out: dict = {}
    for key, rows in (("front_end", fe), ("reference", ref)):
        resp = generate(teacher, rows, "T", max_new_tokens, batch_size, progress=True, desc=f"{desc} {key.replace('_', ' ')}")
        for b, acc in score_responses(rows, resp).items():
            out.setdefault(b, {})[key] = acc
        for k, v in per_kind(rows, item_scores(rows, resp)).items():
            out.setdefault("per_kind", {}).setdefault(k, {"n": v["n"]})[key] = v["acc"]
    return out


@dataclass
class Reference:
    """What every student of one evaluation is compared with, computed once per evaluation set: the
    teacher on T per split (per question too), and what the students' shared frozen front end hears
    (``hearing``, ``cascade``, and the questions it heard exactly). Pass the same object to several
    :func:`evaluate_world` calls (``xopd reproduce``: one per row and seed) to compute it once."""

    teacher_by_split: dict = field(default_factory=dict)
    teacher_items: dict = field(default_factory=dict)  # split -> per-question teacher scores
    teacher_per_kind: dict = field(default_factory=dict)  # split -> {kind: {"acc", "n"}}
    hearing: dict = field(default_factory=dict)
    cascade: dict = field(default_factory=dict)
    heard_right: dict = field(default_factory=dict)  # split -> {"ids": heard exactly, "teacher": acc on them}


def _teacher_reference(ref: Reference, teacher, splits: dict[str, list[Example]], max_new_tokens: int,
                       batch_size: int) -> None:
    for sp in EVAL_SPLITS:
        bench = [e for e in splits.get(sp, []) if e.task in BENCHES]
        resp = generate(teacher, bench, "T", max_new_tokens, batch_size, progress=True, desc=f"teacher {sp}") \
            if bench else []
        sc = score_responses(bench, resp)
        ref.teacher_by_split[sp] = {b: {"T": sc[b]} for b in BENCHES if b in sc}
        ref.teacher_items[sp] = item_scores(bench, resp)
        if bench:
            ref.teacher_per_kind[sp] = per_kind(bench, ref.teacher_items[sp])


def _hearing_reference(ref: Reference, teacher, model, name: str, splits: dict[str, list[Example]],
                       max_new_tokens: int, batch_size: int) -> None:
    for sp in EVAL_SPLITS:
        bench = [e for e in splits.get(sp, []) if e.task in BENCHES]
        if not bench:
            continue
        heard = hear_examples(model, bench)
        ref.hearing[sp] = {**hearing_report(bench, heard), "front_end_of": name,
                           "examples": [{"said": e.text, "heard": h} for e, h in zip(bench[:3], heard)]}
        ref.cascade[sp] = cascade_scores(teacher, bench, heard, max_new_tokens, batch_size, f"cascade {sp}")
        ids = {e.id for e, h in zip(bench, heard) if normalize_text(e.text) == normalize_text(h)}
        ref.heard_right[sp] = {"ids": ids, "teacher": subset_accuracy(bench, ref.teacher_items[sp], ids)}


def load_for_eval(path: str | Path, cache_dtype: str | None = None, cache_file: str | None = None):
    """A student ready to be evaluated: eval mode, frozen (no autograd graphs, and a frozen tower's encoder
    cache applies: a trainable one bypasses it), its cache enabled and filled from ``cache_file``."""
    model = load_student(path).eval()
    model.requires_grad_(False)
    model.enable_encoder_cache(dtype=cache_dtype)
    if cache_file:
        model.load_encoder_cache(cache_file)
    return model


def evaluate_world(
    teacher_dir: str | Path,
    students: dict[str, str | Path],
    splits: dict[str, list[Example]],
    max_new_tokens: int = 48,
    batch_size: int = 64,
    cache_dtype: str | None = None,
    cache_file: str | None = None,
    reference: Reference | None = None,
) -> dict:
    """``{"teacher": {BENCH: {"T"}}, "teacher_by_split": ..., "teacher_per_kind": {split: {kind: {"acc", "n"}}},
    "models": {name: {split: {..., "per_kind": {kind: {"S", "T", "n"}}}}}}``, plus
    ``hearing`` and ``cascade`` per split when a student has a CTC front end (the first such student's:
    training never changes a frozen front end). ``reference``: reuse (and fill what it lacks) the teacher's
    scores and the hearing of an earlier call on the same ``splits``."""
    ref = reference if reference is not None else Reference()
    teacher = None
    if not ref.teacher_by_split:
        teacher = load_teacher(teacher_dir)
        _teacher_reference(ref, teacher, splits, max_new_tokens, batch_size)
    models: dict = {}
    for name, path in students.items():
        model = load_for_eval(path, cache_dtype, cache_file)
        if not ref.hearing and model.adapter is not None:
            teacher = teacher if teacher is not None else load_teacher(teacher_dir)
            _hearing_reference(ref, teacher, model, name, splits, max_new_tokens, batch_size)
        models[name] = {}
        for sp in EVAL_SPLITS:
            base = {b: v["T"] for b, v in ref.teacher_by_split[sp].items()}
            models[name][sp] = evaluate_student(
                model, splits.get(sp, []), base, max_new_tokens, batch_size, f"{name} {sp}", ref.heard_right.get(sp)
            )
    out = {"teacher": ref.teacher_by_split["test"], "teacher_by_split": ref.teacher_by_split,
           "teacher_per_kind": ref.teacher_per_kind, "models": models}
    if ref.hearing:
        out.update(hearing=ref.hearing, cascade=ref.cascade)
    return out
