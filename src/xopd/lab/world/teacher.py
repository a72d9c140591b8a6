"""Train the mini world's text teacher from scratch: a small Llama that reads T and answers.

Recipe (issue 3's calibration; figures in docs/BENCHMARKS.md): a Llama d128 x 4 layers over the word-level
tokenizer (every whole number one token), supervised on the reference responses of ``reasoning``
and ``instruct`` with the loss on response tokens only, AdamW at lr 3e-3 with warm-up and cosine
decay, and FRESH problems every batch (optimizer steps on new problems matter more than tokens or
width). Each batch runs as two length-sorted micro-batches (reasoning rows are much longer than
instruct rows: one padded batch wasted much of its compute). Training stops when the wall-clock
budget is spent, at ``max_steps``, or when a periodic greedy evaluation reaches the target.

It trains through the core :class:`~xopd.training.trainer.Trainer` (the one training loop): a small
subclass feeds it the stream of :mod:`xopd.lab.world.teacher_stream` instead of a manifest and sets the
recipe's schedule; a callback keeps the stopping rules and the periodic evaluation.

2 threads are fast on an idle machine but collapse on a busy one, where 1 thread is several times
faster: pass ``threads=1`` there. Batch 32 for N steps matched or beat batch 16 for 2N steps (same
compute). Sorting and spelling were the slowest kinds to learn and are no longer tasks (the figures:
docs/BENCHMARKS.md, 'Demo configuration choices').

Without ``max_steps`` the LR schedule runs on the *wall-clock* fraction of the budget, so the
cosine ends when the budget does whatever the machine's speed. With ``max_steps`` it runs on steps
(deterministic for a given seed) unless the budget runs out first, in which case it still ends
annealed at the budget.

The result is a standard HF directory (config, safetensors, generation config with eos/pad,
tokenizer + chat template) loadable by :func:`xopd.models.text_lm.load_teacher`, written atomically
(temp folder + rename) with ``xopd_teacher.json`` (config hash + report) as the completeness marker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from xopd.data.manifest import Example
from xopd.errors import ConfigError
from xopd.lab.tiny import tiny_llama
from xopd.lab.world.tasks import generate_items
from xopd.lab.world.teacher_stream import TEACHER_TASKS, PretokenizedSFT, TeacherStream
from xopd.lab.world.tokenizer import build_world_tokenizer
from xopd.metrics import score_item
from xopd.models.text_lm import TextLM, load_teacher
from xopd.training.callbacks import TrainerCallback, TrainRun
from xopd.training.config import TrainConfig
from xopd.training.trainer import Trainer
from xopd.utils.io import atomic_dir

__all__ = ["MARKER", "TEACHER_SHAPE", "TEACHER_TASKS", "build_model", "ensure_teacher", "evaluate_teacher",
           "train_teacher"]

MARKER = "xopd_teacher.json"
_RECIPE_VERSION = 1
_MAX_NEW_TOKENS = 40  # longest reference: 3-step chain of thought, ~25 tokens + eos


def _silence_hf() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


#: The teacher's architecture (a Llama d128 x 4); the demo's hearing student borrows it for a placeholder LM.
TEACHER_SHAPE = {"d_model": 128, "layers": 4, "heads": 4, "ffn": 512}


def build_model(tok, d_model: int, layers: int, heads: int, ffn: int, seed: int):
    """A randomly initialised Llama of the given shape over ``tok``'s vocabulary (eos/pad from ``tok``)."""
    return tiny_llama(tok, d_model, layers, heads, ffn, seed, max_positions=256)


class _TeacherTrainer(Trainer):
    """The core trainer, fed by the endless stream of fresh problems (no manifest) with the recipe's
    learning-rate schedule; everything else (accumulation, clipping, AdamW, checkpoint) is the core's."""

    def __init__(self, cfg: TrainConfig, stream: TeacherStream, micro_batches: int, lr_lambda, callbacks) -> None:
        self.stream, self.micro, self.lr_lambda = stream, micro_batches, lr_lambda
        super().__init__(cfg, callbacks=callbacks)

    def _load_data(self, examples: list[Example] | None) -> None:
        self.examples, self.eval_examples = [], []

    def _algorithm_class(self) -> type:
        return PretokenizedSFT

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)

    def _micro_batches(self, step: int):
        for part in self.stream.batch(self.cfg.batch_size, self.micro):
            yield part, [0] * len(part)


class _Budget(TrainerCallback):
    """The recipe's stopping rules, periodic greedy evaluation and progress bar, after every step."""

    def __init__(self, t0: float, budget_s: float, eval_every: int, eval_set, target_acc: float, bar) -> None:
        self.t0, self.budget_s, self.eval_every, self.eval_set, self.target = t0, budget_s, eval_every, eval_set, target_acc
        self.bar, self.trainer = bar, None
        self.losses: list[float] = []
        self.curve: list[dict] = []
        self.eval_s, self.ema = 0.0, None

    def on_step_end(self, run: TrainRun, step: int) -> None:
        algo = self.trainer.algo
        val = float(algo.step_loss)
        algo.step_loss = torch.zeros(())
        self.ema = val if self.ema is None else 0.95 * self.ema + 0.05 * val
        self.losses.append(round(val, 4))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.ema:.3f}", lr=f"{self.trainer.optimizer.param_groups[0]['lr']:.1e}")
        done = step + 1
        if self.eval_every and done % self.eval_every == 0:
            te = time.perf_counter()
            acc = evaluate_teacher(run.student, self.eval_set)["accuracy"]
            self.eval_s += time.perf_counter() - te
            self.curve.append({"step": done, "seconds": round(time.perf_counter() - self.t0, 1),
                               **{t: round(a, 3) for t, a in acc.items()}})  # fmt: skip
            self.bar.write(f"teacher step {done}: loss {self.ema:.3f} "
                           + " ".join(f"{t} {a:.2f}" for t, a in acc.items()))
            if all(acc.get(t, 0.0) >= self.target for t in TEACHER_TASKS):
                run.stop = "target"
                return
        if done < run.cfg.max_steps and time.perf_counter() - self.t0 >= self.budget_s:
            run.stop = "budget"


def _eval_items(n: int, seed: int) -> list:
    return [it for t in TEACHER_TASKS for it in generate_items(t, "test", n, seed=seed)]


@torch.no_grad()
def evaluate_teacher(model: TextLM, items, batch_size: int = 64) -> dict:
    """Greedy (KV cache) accuracy on T per task, plus per instruct kind / reasoning step count."""
    from xopd.eval.generation import generate

    exs = [Example(id=it.id, text=it.text, task=it.task, answer=it.answer) for it in items]
    resp = generate(model, exs, "T", max_new_tokens=_MAX_NEW_TOKENS, batch_size=batch_size)
    acc, kinds = defaultdict(list), defaultdict(list)
    for it, r in zip(items, resp, strict=True):
        s = score_item(it.task, r, it.answer)
        acc[it.task].append(s)
        kind = (
            it.template.split("/")[1] if it.task == "instruct" else f"{it.reference.count(' is ') - 1}-step"
        )
        kinds[f"{it.task}/{kind}"].append(s)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"accuracy": {t: mean(v) for t, v in acc.items()}, "per_kind": {k: mean(v) for k, v in sorted(kinds.items())},
            "examples": [{"prompt": it.text, "response": r, "answer": it.answer} for it, r in list(zip(items, resp))[:4]]}  # fmt: skip


def _lr_factor(frac: float, step: int, warmup: int, min_ratio: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` as ``frac`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _save_atomic(out_dir: Path, lm, tok, marker: dict) -> None:
    with atomic_dir(out_dir) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))  # last: its presence means complete


def _data_fingerprint() -> str:
    """Hash of a sample of the train and test problems, so a change to the task generators (ranges,
    templates) invalidates a cached teacher even when the vocabulary stays the same."""
    items = [
        it for sp in ("train", "test") for t in TEACHER_TASKS for it in generate_items(t, sp, 64, seed=0)
    ]
    return hashlib.sha256("\n".join(f"{it.text}|{it.reference}" for it in items).encode()).hexdigest()[:16]


def _config_hash(cfg: dict, tok) -> str:
    vocab = sorted(tok.get_vocab().items())
    blob = json.dumps(
        {"cfg": cfg, "vocab": vocab, "data": _data_fingerprint(), "v": _RECIPE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_teacher(
    out_dir: str | os.PathLike,
    minutes_budget: float,
    d_model: int = 128,
    layers: int = 4,
    heads: int = 4,
    ffn: int = 512,
    batch: int = 16,
    lr: float = 3e-3,
    warmup: int = 100,
    seed: int = 0,
    target_acc: float = 0.9,
    eval_every: int = 300,
    eval_n: int = 48,
    final_n: int = 200,
    reasoning_frac: float = 0.5,
    kind_weights: dict | None = None,
    micro_batches: int = 2,
    max_steps: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    unpunctuated_frac: float = 0.0,
) -> dict:
    """Train, evaluate (greedy, test split, T view) and save the teacher; returns the report.

    Stops at the first of: ``minutes_budget`` of wall time (training + periodic evals), ``max_steps``,
    or a periodic eval (every ``eval_every`` steps, ``eval_n`` test items per task) with accuracy
    >= ``target_acc`` on both tasks. The final report scores ``final_n`` test items per task.
    ``threads`` sets ``torch.set_num_threads`` for the run (restored after).
    """
    if minutes_budget <= 0 or batch < 1 or not 0 <= reasoning_frac <= 1:
        raise ConfigError(
            "train_teacher: minutes_budget > 0, batch >= 1 and 0 <= reasoning_frac <= 1 are required"
        )
    if batch % max(1, micro_batches):
        raise ConfigError(f"train_teacher: batch ({batch}) must be a multiple of micro_batches ({micro_batches})")
    _silence_hf()
    cfg = {k: v for k, v in locals().items() if k not in ("out_dir", "progress", "threads")}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = build_world_tokenizer()
    budget_s = minutes_budget * 60.0
    stream = TeacherStream(tok, seed, reasoning_frac, kind_weights, unpunctuated_frac=unpunctuated_frac)

    def lr_lambda(step: int) -> float:
        # the cosine ends at whichever limit comes first, so a busy machine that hits the wall-clock
        # cap before max_steps still finishes with an annealed learning rate
        elapsed = time.perf_counter() - t0
        frac = max(step / max_steps, elapsed / budget_s) if max_steps else elapsed / budget_s
        return _lr_factor(frac, step, warmup)

    bar = tqdm(desc="teacher", unit="step", disable=not progress, dynamic_ncols=True)
    budget = _Budget(t0, budget_s, eval_every, _eval_items(eval_n, seed + 7919), target_acc, bar)
    work = Path(tempfile.mkdtemp(prefix=f".{Path(out_dir).name}.train-", dir=Path(out_dir).parent))
    try:
        # the core trainer loads its student from a directory: the seeded initial weights go there first
        build_model(tok, d_model, layers, heads, ffn, seed).save_pretrained(work / "init")
        tok.save_pretrained(work / "init")
        run_cfg = TrainConfig(
            student_path=str(work / "init"), output_dir=str(work / "run"), algo="sft", device="cpu", lr=lr,
            weight_decay=0.01, adam_beta2=0.98, batch_size=batch, micro_batch_size=batch // max(1, micro_batches),
            max_steps=max_steps or 10**9, max_grad_norm=1.0, seed=seed, save_every=10**9, keep_last=1,
            report_to="jsonl", progress=False, cache_encoder=False)  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # the global RNG after this call is what it was before
            trainer = _TeacherTrainer(run_cfg, stream, micro_batches, lr_lambda, [budget])
            budget.trainer = trainer
            t_loop = time.perf_counter()
            trainer.run()
        bar.close()
        lm, step = trainer.student.causal_lm(), len(budget.losses)
        stopped = trainer.ctx.stop or ("max_steps" if max_steps is not None and step >= max_steps else "budget")
        train_s = time.perf_counter() - t0
        loop_s = time.perf_counter() - t_loop - budget.eval_s
        final = evaluate_teacher(trainer.student, _eval_items(final_n, seed))
    finally:
        torch.set_num_threads(old_threads)
        shutil.rmtree(work, ignore_errors=True)
    losses, ema = budget.losses, budget.ema
    n = max(1, len(losses) // 20)
    report = {
        "accuracy": final["accuracy"], "per_kind": final["per_kind"], "examples": final["examples"],
        "steps": step, "seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(train_s, 1),
        "eval_seconds": round(budget.eval_s, 1), "tokens": stream.tokens, "response_tokens": stream.response_tokens,
        "steps_per_s": round(step / max(loop_s, 1e-9), 2), "tokens_per_s": round(stream.tokens / max(loop_s, 1e-9)),
        "first_loss": losses[0] if losses else None, "final_loss": round(ema, 4) if ema is not None else None,
        "loss_curve": [round(sum(losses[i : i + n]) / len(losses[i : i + n]), 4) for i in range(0, len(losses), n)],
        "eval_curve": budget.curve, "stopped": stopped, "threads": threads or old_threads,
        "params": sum(p.numel() for p in lm.parameters()), "vocab": len(tok), "config": cfg,
    }  # fmt: skip
    _save_atomic(Path(out_dir), lm, tok, {"config_hash": _config_hash(cfg, tok), "report": report})
    return report


def ensure_teacher(out_dir: str | os.PathLike, minutes_budget: float = 7.0, **kwargs) -> dict:
    """Reuse a complete teacher at ``out_dir`` trained with the same config, else train one.

    Complete = the marker exists (written last, atomically renamed with the model) and its config
    hash matches this call's (config + tokenizer vocabulary + recipe version). The returned report
    has ``cached: True`` when nothing was trained.
    """
    out = Path(out_dir)
    saved = _current_marker(out, minutes_budget, kwargs)
    if saved is not None:
        load_teacher(out)  # fails loudly (ModelError) if the files were damaged
        return {**saved["report"], "cached": True}
    return {**train_teacher(out, minutes_budget, **kwargs), "cached": False}


def teacher_is_current(out_dir: str | os.PathLike, minutes_budget: float = 7.0, **kwargs) -> bool:
    """Whether :func:`ensure_teacher` with these arguments would reuse ``out_dir`` without training."""
    return _current_marker(Path(out_dir), minutes_budget, kwargs) is not None


def _current_marker(out: Path, minutes_budget: float, kwargs: dict) -> dict | None:
    """The saved marker of a complete teacher at ``out`` trained with this config, else None."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
    except ValueError:
        return None
    _silence_hf()
    current = saved.get("config_hash") == _config_hash(_expected_config(minutes_budget, kwargs), build_world_tokenizer())
    return saved if current else None


def _expected_config(minutes_budget: float, kwargs: dict) -> dict:
    """The ``cfg`` dict :func:`train_teacher` would record for these arguments (defaults filled)."""
    import inspect

    params = inspect.signature(train_teacher).parameters
    unknown = set(kwargs) - set(params)
    if unknown:
        raise ConfigError(f"ensure_teacher: unknown argument(s) {sorted(unknown)}")
    cfg = {k: p.default for k, p in params.items() if k not in ("out_dir", "progress", "threads")}
    cfg.update({k: v for k, v in kwargs.items() if k in cfg}, minutes_budget=minutes_budget)
    return cfg
