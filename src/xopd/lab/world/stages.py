"""The mini world's shared stages (data, teacher, hearing, stage 1) and their on-disk cache; used by
``xopd demo`` (:mod:`xopd.lab.world.pipeline`) and ``xopd reproduce`` (:mod:`xopd.lab.world.reproduce`)."""


from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xopd.data.manifest import read_manifest
from xopd.errors import XopdError
from xopd.lab.train import LabTrainConfig
from xopd.lab.world.config import TEACHER_KIND_WEIGHTS, DemoConfig
from xopd.lab.world.data import WorldSizes, build_world_data, by_task, prompt_asr_rows, text_only_rows
from xopd.lab.world.tasks import BENCHES
from xopd.utils.io import atomic_write_text
from xopd.utils.isolate import peak_rss_mb, run_isolated

ENCODER_CACHE = "hearing/encoder_cache.safetensors"  # the frozen tower's output for every clip
REHEARSAL_TASKS = ("asr", "audio_only")  # stage 1a's speech tasks; X-OPD's rehearsal rows
CACHE_DTYPE = "float16"


def stage_hash(obj: Any) -> str:
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


def in_stage_process(cfg: DemoConfig, name: str, fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a fresh process when ``cfg.isolate`` (memory a stage touched goes back to the OS
    when it ends; see :mod:`xopd.utils.isolate`), else in this one. The result is the same either way:
    every stage reads its inputs from disk and seeds itself."""
    if cfg.isolate:
        return run_isolated(f"stage {name}", with_cpu_kit, fn, *args, threads=cfg.threads)
    return fn(*args)


def with_cpu_kit(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the CPU speed kit installed: a stage's fresh process starts without it."""
    from xopd import cpu

    cpu.install()
    return fn(*args, **kwargs)


def log(msg: str) -> None:
    print(f"[xopd demo] {msg}", file=sys.stderr, flush=True)


def train_cfg(out: Path, **kw) -> LabTrainConfig:
    base = dict(
        output_dir=str(out),
        report_to="jsonl",
        save_every=10**9,
        keep_last=1,
        eval_prompts=16,
        max_audio_seconds=30.0,
        # One process-wide fp16 cache of the frozen Whisper outputs serves every stage (each clip is
        # encoded once per demo instead of once per stage) and halves its float32 memory.
        cache_encoder_dtype=CACHE_DTYPE,
    )
    base.update(kw)
    cfg = LabTrainConfig(**base)
    cfg.validate()
    return cfg


def encoder_cache_file(root: Path) -> str | None:
    """The hearing stage's file of encoded clips, if it was written (a frozen pretrained tower)."""
    path = Path(root) / ENCODER_CACHE
    return str(path) if path.is_file() else None


def final_model(run_dir: Path, steps: int) -> Path:
    return run_dir / f"checkpoint-{steps}" / "model"


def build_student(cfg: DemoConfig, teacher_dir: Path, out_dir: Path, hearing_dir: Path | None = None) -> Path:
    """Compose the untrained student: audio tower (+ the trained CTC adapter) + fresh projector + a copy of
    the teacher's LM."""
    from xopd.lab.world.frontend import compose_student, load_encoder, transplant_adapter

    enc = load_encoder(cfg.encoder, Path(cfg.output_dir).parent / "cache", cfg.seed)
    student = compose_student(enc, teacher_dir, stack=cfg.stack, projector_hidden=cfg.projector_hidden,
                              adapter=cfg.adapter_kwargs(), seed=cfg.seed)
    if hearing_dir is not None:
        transplant_adapter(student, hearing_dir)
    if cfg.encoder == "scratch" and hearing_dir is not None:  # quick mode trains its tower while learning to hear
        from safetensors.torch import load_file

        student.encoder.whisper.load_state_dict(load_file(str(hearing_dir / "encoder" / "model.safetensors")))
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


def _teacher_job(out_dir: str, kwargs: dict) -> None:
    """The teacher stage in a second process (``parallel``): one thread, no progress bar of its own."""
    import torch

    torch.set_num_threads(1)
    from xopd.lab.world.teacher import ensure_teacher

    with_cpu_kit(ensure_teacher, out_dir, **kwargs)


def _encode_stage(cfg: DemoConfig, root: Path, split: dict[str, list]) -> Path:
    """Build the hearing student and, with a frozen pretrained tower, encode every clip once into the
    process-wide cache and a file that later processes load (re-runs reuse it bit for bit)."""
    from xopd.lab.world.frontend import build_hearing_student, encode_all, load_encoder
    from xopd.models.speech_llm import SpeechLLM

    hdir = root / "hearing"
    shutil.rmtree(hdir, ignore_errors=True)
    enc = load_encoder(cfg.encoder, root.parent / "cache", cfg.seed)
    init = build_hearing_student(hdir / "init", enc, cfg.adapter_kwargs(), cfg.stack, cfg.projector_hidden, cfg.seed)
    if cfg.encoder != "scratch":
        model = SpeechLLM.from_pretrained(init).eval()
        model.freeze(encoder=True)  # a trainable tower bypasses the cache
        model.enable_encoder_cache(dtype=CACHE_DTYPE)
        encode_all(model, [e for exs in split.values() for e in exs])
        model.save_encoder_cache(root / ENCODER_CACHE)
        del model
    return init


def _ctc_stage(cfg: DemoConfig, root: Path, split: dict[str, list], init: Path, threads: int) -> Path:
    """Train the CTC adapter on every clip whose transcript may be used (train + X-OPD prompts, never an
    evaluation split); returns the hearing student's directory (stage 1 transplants its adapter)."""
    from xopd.lab.train import run_train

    if not cfg.ctc_steps:
        return init
    clips = split["train"] + split.get("prompts", [])
    log(f"stage hearing: CTC on {len(clips)} clips, {cfg.ctc_steps} steps")
    ctc_cfg = train_cfg(root / "hearing" / "ctc", algo="ctc", student_path=str(init), train_adapter=True,
                         train_lm=False, train_encoder=cfg.encoder == "scratch", batch_size=16, micro_batch_size=16,
                         max_steps=cfg.ctc_steps, lr=cfg.ctc_lr, warmup_steps=max(1, cfg.ctc_steps // 10),
                         lr_scheduler="cosine", weight_decay=0.01, ctc_punctuation=cfg.ctc_punctuation, seed=cfg.seed,
                         threads=threads, encoder_cache_file=encoder_cache_file(root))
    run_train(ctc_cfg, examples=clips)
    return final_model(root / "hearing" / "ctc", cfg.ctc_steps)


def _stage1(cfg: DemoConfig, root: Path, train: list, teacher_dir: Path, hearing_dir: Path | None) -> None:
    """Stage 1: compose the student, align it on speech (ASR + audio-only, text rows mixed in), then a
    limited budget of spoken-instruction SFT; the model lands at ``final_model(root/stage1/sft, ...)``."""
    s1_dir = root / "stage1"
    shutil.rmtree(s1_dir, ignore_errors=True)
    init = build_student(cfg, teacher_dir, s1_dir / "init", hearing_dir)
    from xopd.lab.train import run_train

    common = dict(
        algo="sft",
        sft_view="S",
        batch_size=cfg.stage1_batch,
        micro_batch_size=cfg.stage1_batch,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        threads=cfg.threads,
        train_projector=True,
        train_encoder=cfg.encoder == "scratch" and cfg.front_end != "ctc",
        lr_scheduler="cosine",
        label_smoothing=cfg.stage1_label_smoothing,
        encoder_cache_file=encoder_cache_file(root),
    )
    align_cfg = train_cfg(
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
    sft_cfg = train_cfg(
        s1_dir / "sft",
        student_path=str(final_model(s1_dir / "align", cfg.align_steps)),
        max_steps=cfg.sft_steps,
        lr=cfg.sft_lr,
        warmup_steps=max(1, cfg.sft_steps // 10),
        **common,
    )
    run_train(sft_cfg, examples=train + text_rows)


def prepare_world(cfg: DemoConfig) -> World:
    """Stages data, teacher, hearing and stage 1, each reused when its inputs are unchanged."""
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
    data_key = stage_hash({"sizes": asdict(sizes), "seed": cfg.seed})
    done = cache.done("data", data_key)
    if done and all(Path(p).is_file() for p in done["manifests"].values()):
        manifests = {k: Path(v) for k, v in done["manifests"].items()}
    else:
        log("stage data: generating tasks and speaking them with espeak-ng")
        manifests = build_world_data(root / "data", sizes, seed=cfg.seed)
        cache.mark("data", data_key, {"manifests": {k: str(v) for k, v in manifests.items()}})
    seconds["data"] = time.perf_counter() - t0
    rss["data"] = peak_rss_mb()
    split = {k: read_manifest(v, max_audio_seconds=30.0)[0] for k, v in manifests.items()}

    # 2. teacher and 3. hearing (in parallel when both have work to do) -----------------------------
    from xopd.lab.world.teacher import MARKER, ensure_teacher, teacher_is_current

    teacher_dir = root / "teacher"
    teacher_kw = dict(minutes_budget=cfg.teacher_minutes, seed=cfg.seed, max_steps=cfg.teacher_steps or None,
                      kind_weights=TEACHER_KIND_WEIGHTS, target_acc=2.0, eval_every=1000,
                      unpunctuated_frac=cfg.teacher_unpunctuated,
                      **({"final_n": 8, "eval_n": 8} if cfg.quick else {}))
    hear_key = stage_hash({k: getattr(cfg, k) for k in ("encoder", "front_end", "stack", "projector_hidden", "ctc_steps",
                                                    "ctc_lr", "ctc_punctuation", "seed")}
                     | {"adapter": cfg.adapter_kwargs(), "data": data_key})
    need_hearing = cfg.front_end == "ctc" and not cache.done("hearing", hear_key)
    need_teacher = not teacher_is_current(teacher_dir, **teacher_kw)
    hearing_dir = Path(cache.done("hearing", hear_key)["student"]) if cfg.front_end == "ctc" and not need_hearing \
        else None
    parallel = need_teacher and need_hearing and cfg.parallel
    proc = None
    t0 = time.perf_counter()
    if parallel:  # the teacher trains in a second process from the start; this one encodes, then runs CTC
        import multiprocessing

        log("stages teacher + hearing in parallel: the teacher in a second process (1 thread each)")
        proc = multiprocessing.get_context("spawn").Process(
            target=_teacher_job, args=(str(teacher_dir), {**teacher_kw, "threads": 1, "progress": False}))
        proc.start()
        torch.set_num_threads(1)
    try:
        if need_hearing:
            log("stage hearing: encoding every clip once with the frozen audio tower")
            hearing_init = _encode_stage(cfg, root, split)
            seconds["encode"] = time.perf_counter() - t0
        if parallel:
            hearing_dir = _ctc_stage(cfg, root, split, hearing_init, threads=1)
            seconds["hearing"] = time.perf_counter() - t0  # encode + CTC
            proc.join()
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
    if parallel:
        if proc.exitcode != 0:
            raise XopdError(f"teacher training failed in its process (exit code {proc.exitcode}); rerun with "
                            "--parallel false to see the error in this one")
        teacher_report = {**ensure_teacher(teacher_dir, **teacher_kw, threads=cfg.threads), "cached": False}
        seconds["teacher"] = time.perf_counter() - t0
        cache.mark("hearing", hear_key, {"student": str(hearing_dir)})
    else:
        t0 = time.perf_counter()
        log(f"stage teacher: up to {cfg.teacher_steps} steps" if need_teacher else "stage teacher: cached")
        teacher_report = ensure_teacher(teacher_dir, **teacher_kw, threads=cfg.threads)
        seconds["teacher"] = time.perf_counter() - t0
        if need_hearing:
            t0 = time.perf_counter()
            hearing_dir = _ctc_stage(cfg, root, split, hearing_init, threads=cfg.threads)
            cache.mark("hearing", hear_key, {"student": str(hearing_dir)})
            seconds["hearing"] = time.perf_counter() - t0
    torch.set_num_threads(cfg.threads)
    rss["teacher"] = peak_rss_mb()
    if cfg.isolate:  # later stages run in processes of their own and load the encoded clips from the file
        from xopd.cpu.heap import trim_heap
        from xopd.models.encoder_cache import clear_shared_encoder_caches

        clear_shared_encoder_caches()
        trim_heap()
    teacher_key = stage_hash({"teacher": (teacher_dir / MARKER).read_text()})  # changes whenever it is retrained

    # 4. stage 1 ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    train = split["train"]
    s1_key = stage_hash(
        {
            k: getattr(cfg, k)
            for k in ("align_steps", "align_lr", "align_prompt_asr", "text_replay", "sft_steps", "sft_lr",
                      "stage1_batch", "stage1_label_smoothing", "seed", "max_new_tokens")
        }
        | {"data": data_key, "teacher": teacher_key, "hearing": hear_key}
    )
    s1_dir = root / "stage1"
    student1 = final_model(s1_dir / "sft", cfg.sft_steps)
    if not cache.done("stage1", s1_key):
        log("stage stage1: speech alignment (ASR + audio-only), then limited spoken-instruction SFT")
        in_stage_process(cfg, "stage1", _stage1, cfg, root, train, teacher_dir, hearing_dir)
        cache.mark("stage1", s1_key, {"student": str(student1)})
    seconds["stage1"] = time.perf_counter() - t0
    rss["stage1"] = peak_rss_mb()

    return World(root, split, teacher_dir, student1, teacher_report, seconds, s1_key, rss)


def xopd_pool(world: World) -> list:
    """The prompts on-policy training draws from: the ``prompts`` split (spoken questions disjoint from
    the labelled ``train`` split that stage 1 fit: on memorised questions the stage-1 student's S samples
    are already the teacher's, so X-OPD would get no signal from them)."""
    return world.split.get("prompts") or world.split["train"]
