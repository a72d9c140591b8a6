"""``xopd demo``: the mini world end to end (docs/DESIGN.md section 6).

Stages, each cached under ``runs/demo`` and redone only when its inputs change (``--fresh`` redoes all):

1. ``data``    task items per split, spoken by espeak-ng (content-keyed audio cache), manifests;
2. ``teacher`` a small Llama trained from scratch on the text side of reasoning + instruct;
3. ``hearing`` the student's front end: pretrained Whisper tiny.en (frozen) + a CTC adapter trained to
               hear (no LM needed, so with ``parallel`` it runs while the teacher trains);
4. ``stage1``  student = that front end + a copy of the teacher's LM, aligned on speech the usual way:
               ASR (incl. of the spoken questions) + audio-only first, then a limited budget of
               spoken-instruction SFT, both with the text side mixed in so the LM keeps its text
               skills -> it hears the words but understands speech worse than text: the gap;
5. ``xopd``    X-OPD from the stage-1 student with the core's defaults (lam 0.5, n 4, tower and
               front end frozen) and the paper's loss; each ``--xopd_also`` loss trains the same way
               from the same student into ``xopd_<loss>`` (its own row in the report);
6. ``eval``    teacher on T; stage-1 and X-OPD students on S and T, on test and held-out splits; what
               the front end hears, and the teacher as the LLM of a cascade on it.

Every training stage goes through the same ``xopd train`` code path a user's run takes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from xopd.lab.train import LabTrainConfig
from xopd.lab.world.config import DemoConfig
from xopd.lab.world.data import by_task
from xopd.lab.world.stages import (
    CACHE_DTYPE,
    REHEARSAL_TASKS,
    StageCache,
    World,
    encoder_cache_file,
    final_model,
    in_stage_process,
    log,
    peak_rss_mb,
    prepare_world,
    stage_hash,
    train_cfg,
    xopd_pool,
)
from xopd.lab.world.tasks import BENCHES


def _train(cfg: LabTrainConfig, examples: list, replay: list) -> None:
    from xopd.lab.train import run_train

    run_train(cfg, examples=examples, replay=replay)


def xopd_train_cfg(cfg: DemoConfig, world: World, loss: str, x_dir: Path, **over) -> LabTrainConfig:
    """The demo's X-OPD run as a ``LabTrainConfig`` (``over`` replaces keys; benchmarks/xopd_shared_ab.py)."""
    kw = dict(
        algo="xopd",
        student_path=str(world.student1),
        teacher_path=str(world.teacher_dir),
        lam=cfg.xopd_lam,
        loss=loss,
        n_samples=cfg.xopd_n,
        batch_size=cfg.xopd_batch,
        micro_batch_size=cfg.xopd_batch,
        max_steps=cfg.xopd_steps,
        lr=cfg.xopd_lr,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        threads=cfg.threads,
        eval_every=max(1, cfg.xopd_steps // 5),
        replay_batch=cfg.xopd_replay,
        encoder_cache_file=encoder_cache_file(world.root),
    )
    return train_cfg(x_dir, **{**kw, **over})


def _run_xopd(cfg: DemoConfig, world: World, loss: str, x_dir: Path, cache: StageCache) -> Path:
    """One X-OPD run from the stage-1 student (cached by its settings); returns the final model's dir."""
    x_key = stage_hash(
        {k: getattr(cfg, k) for k in ("xopd_steps", "xopd_lr", "xopd_batch", "xopd_n", "xopd_lam", "xopd_replay",
                                      "max_new_tokens", "seed")}
        | {"xopd_loss": loss, "s1": world.s1_key, "pool": "prompts"}
    )
    student_x = final_model(x_dir, cfg.xopd_steps)
    stage = x_dir.name  # "xopd" or "xopd_<loss>"
    if cache.done(stage, x_key):
        return student_x
    log(f"stage {stage}: cross-modal on-policy distillation from the stage-1 student (loss {loss})")
    shutil.rmtree(x_dir, ignore_errors=True)
    x_cfg = xopd_train_cfg(cfg, world, loss, x_dir)
    # X-OPD needs prompts, not references: its pool is spoken questions stage 1 never trained on
    in_stage_process(cfg, stage, _train, x_cfg, by_task(xopd_pool(world), *BENCHES),
                     by_task(world.split["train"], *REHEARSAL_TASKS))
    cache.mark(stage, x_key, {"student": str(student_x)})
    return student_x


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or reuse) every stage and write the report; returns report.json's content."""
    if cfg.quick:
        cfg = cfg.quick_version()
    t_start = time.perf_counter()
    world = prepare_world(cfg)
    root, split, teacher_dir, student1 = world.root, world.split, world.teacher_dir, world.student1
    cache, seconds, rss = StageCache(root), world.seconds, world.rss

    # 4. X-OPD (the paper's loss, then any --xopd_also variants from the same stage-1 student) ----------
    t0 = time.perf_counter()
    students = {"student_base": student1}
    for loss in [cfg.xopd_loss, *cfg.also_losses()]:
        name = "xopd" if loss == cfg.xopd_loss else f"xopd_{loss}"
        students[name] = _run_xopd(cfg, world, loss, root / name, cache)
    x_dir = root / "xopd"
    seconds["xopd"] = time.perf_counter() - t0
    rss["xopd"] = peak_rss_mb()

    # 5. eval -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    from xopd.lab.world.evaluate import evaluate_world

    results = in_stage_process(
        cfg, "eval", evaluate_world, teacher_dir, students, split, cfg.max_new_tokens, cfg.eval_batch,
        CACHE_DTYPE, encoder_cache_file(root))
    seconds["eval"] = time.perf_counter() - t0
    rss["eval"] = peak_rss_mb()

    from xopd.lab.world.report import write_demo_report

    peak_mb = peak_rss_mb()
    report = {
        **results,
        "teacher_training": world.teacher_report,
        "stage_seconds": seconds,
        # wall clock: stages overlap (the teacher trains while this process encodes and runs CTC;
        # "hearing" includes "encode"), so their sum would count that time twice
        "seconds": time.perf_counter() - t_start,
        "peak_rss_mb": peak_mb,
        "peak_rss_mb_after_stage": rss,
        "config": asdict(cfg),
    }
    write_demo_report(root, report, x_dir / "metrics.jsonl")
    return report
