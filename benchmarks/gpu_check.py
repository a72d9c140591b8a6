"""The GPU check (issue 28): one X-OPD step of the Qwen2.5-Omni-7B recipe on one GPU, at full width.

    .venv/bin/python benchmarks/gpu_check.py                       # on a GPU machine: timings, then pytest tests/gpu
    .venv/bin/python benchmarks/gpu_check.py --scale tiny --device cpu --skip-pytest    # what CI runs

No downloads: a random Qwen2.5-Omni-7B-thinker-shaped student (vision tower dropped, as xopd does) and
a Qwen2.5-7B-shaped teacher are built from xopd.lab.shapes on the device, at ``--layers`` decoder layers
(every per-layer shape full size; fewer layers where memory needs it). Then, in the recipe's precision
(fp32 master weights, bf16 autocast, the bf16 teacher ``teacher_dtype: auto`` picks):

1. rollout: ms per decode step and tokens/s for 32 .. 256 rows (``--rows``);
2. teacher scoring of one micro-batch (the recipe's micro_batch x 2 views x n rows);
3. the student's forward + backward of that micro-batch (one ``XOPD.step`` and ``loss.backward()``);
4. peak memory of each phase against ``xopd plan``'s terms for the same shapes (1 GPU);
5. ``pytest tests/gpu`` (each recipe's tiny config: 2 steps, eval hook, resume, ``xopd eval``).

Writes ``--out`` (default runs/gpu_check/report.json) atomically and prints it. Budget: ~8 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def build(scale: str, layers: int, device: torch.device):
    """(student, teacher) PolicyModels: full-width shapes at ``layers`` depth, or the tiny recipe config."""
    import transformers
    from transformers import WhisperFeatureExtractor

    from xopd.lab.shapes import qwen2_7b, qwen25_omni_7b_thinker
    from xopd.lab.tiny_recipes import (
        QWEN25_OMNI_TOKENS,
        qwen25_omni_thinker_config,
        text_config,
        tokenizer_with,
    )
    from xopd.models.qwen_omni import OmniThinkerStudent, drop_vision_tower
    from xopd.models.text_lm import TextLM

    tok = tokenizer_with(QWEN25_OMNI_TOKENS)
    ids = tok.convert_tokens_to_ids(QWEN25_OMNI_TOKENS)
    if scale == "tiny":
        s_cfg, t_cfg = qwen25_omni_thinker_config(tok, num_mel_bins=128), transformers.Qwen2Config(**text_config(tok))
    else:
        s_cfg, t_cfg = qwen25_omni_7b_thinker(layers), qwen2_7b(layers)
    s_cfg.audio_token_index, s_cfg.audio_start_token_id, s_cfg.audio_end_token_id = ids[1], ids[0], ids[2]
    for c in (s_cfg.text_config, t_cfg):
        c.pad_token_id, c.eos_token_id, c.bos_token_id = tok.pad_token_id, tok.eos_token_id, None
    torch.manual_seed(0)
    with torch.device(device):
        thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration._from_config(s_cfg, dtype=torch.float32)
        drop_vision_tower(thinker)
        teacher_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        teacher_lm = transformers.Qwen2ForCausalLM._from_config(t_cfg, dtype=teacher_dtype)
    for m in (thinker, teacher_lm):
        m.generation_config.eos_token_id, m.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    fe = WhisperFeatureExtractor(feature_size=s_cfg.audio_config.num_mel_bins)
    student = OmniThinkerStudent(thinker.eval(), tok, fe)
    teacher = TextLM(teacher_lm.eval(), tok)
    teacher.requires_grad_(False)
    return student, teacher, s_cfg, t_cfg


def examples(n: int, seconds: float = 4.0):
    from xopd.data.manifest import Example

    rng = np.random.default_rng(0)
    return [Example(id=f"g{i}", text=f"what is {i} plus {i + 1}? answer in one short sentence please",
                    waveform=(0.05 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))
            for i in range(n)]


def time_rollouts(student, rows_list: list[int], new_tokens: int, device: torch.device) -> list[dict]:
    from xopd.algos.base import make_prompts
    from xopd.generation import sample

    out = []
    prompts = student.embed_prompts(make_prompts(examples(1), "T"))
    for rows in rows_list:
        batch = type(prompts)(prompts.embeds.repeat(rows, 1, 1), prompts.attention_mask.repeat(rows, 1))
        _reset_peak(device)
        with torch.no_grad():
            sample(student, batch, 1, 2, row_seeds=list(range(rows)))  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            ro = sample(student, batch, 1, new_tokens, row_seeds=list(range(rows)))
            _sync(device)
        dt = time.perf_counter() - t0
        steps = ro.ids.shape[1]
        out.append({"rows": rows, "decode_steps": steps, "ms_per_step": 1000 * dt / steps,
                    "tok_per_s": ro.num_tokens / dt, "peak_gb": _peak_gb(device)})
        print(f"[gpu_check] rollout {rows:>4} rows: {1000 * dt / steps:7.1f} ms/step, {ro.num_tokens / dt:9.0f} tok/s",
              file=sys.stderr)
    return out


def xopd_step(student, teacher, micro_batch: int, n: int, new_tokens: int, device: torch.device) -> dict:
    """One micro-batch of the recipe's X-OPD step: rollout + teacher scoring, then forward + backward."""
    from xopd.algos.xopd import XOPD
    from xopd.config import load_config
    from xopd.generation.seeds import StepGenerator
    from xopd.training.config import TrainConfig
    from xopd.training.memory import autocast_context, enable_gradient_checkpointing, mark_checkpointed_layers

    cfg = load_config(TrainConfig, str(ROOT / "configs" / "qwen2.5-omni-7b.yaml"),
                      {"micro_batch_size": micro_batch, "batch_size": micro_batch, "rollout_batch_size": micro_batch,
                       "n_samples": n,
                       "max_new_tokens": new_tokens, "student_path": "-", "teacher_path": "-"})
    student.requires_grad_(False)
    student.causal_lm().requires_grad_(True)  # train_lm: the backbone only, as the recipe
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
        mark_checkpointed_layers(student)
    algo = XOPD(cfg, student, teacher, vocab_limit=None)
    gen = StepGenerator()
    gen.prompt_seeds = list(range(micro_batch))
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    with autocast_context(device, cfg.autocast_bf16):
        out = algo.step(examples(micro_batch), gen)
    _sync(device)
    t1 = time.perf_counter()
    out.loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    return {"rows": micro_batch * 2 * n, "rollout_and_scoring_s": t1 - t0, "backward_s": t2 - t1,
            "loss": float(out.loss), "tokens": out.tokens, "peak_gb": _peak_gb(device),
            "checkpointing": cfg.gradient_checkpointing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers of the full-width models (default 8 of 28)")
    ap.add_argument("--rows", default="32,64,128,256", help="rollout batch sizes to time")
    ap.add_argument("--new_tokens", type=int, default=128, help="decode steps per timed rollout")
    ap.add_argument("--micro_batch", type=int, default=4, help="prompts in the X-OPD step (recipe: 4)")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt and view (recipe: 4)")
    ap.add_argument("--step_tokens", type=int, default=256, help="max_new_tokens of the X-OPD step")
    ap.add_argument("--skip-pytest", action="store_true", help="do not run pytest tests/gpu afterwards")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check" / "report.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --scale tiny --device cpu for the CPU smoke test",
              file=sys.stderr)
        return 2
    from xopd.training.plan import StepShape, model_shape, plan_step
    from xopd.utils.io import atomic_write_text

    t_start = time.perf_counter()
    student, teacher, s_cfg, t_cfg = build(args.scale, args.layers, device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "scale": args.scale, "layers": args.layers,
                    "date": time.strftime("%Y-%m-%d")}
    report["rollout"] = time_rollouts(student, [int(r) for r in args.rows.split(",")], args.new_tokens, device)
    report["xopd_step"] = xopd_step(student, teacher, args.micro_batch, args.n, args.step_tokens, device)
    # the planner's terms for the same shapes on one GPU (from configs only)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s_cfg.save_pretrained(Path(tmp) / "s")
        t_cfg.save_pretrained(Path(tmp) / "t")
        s_shape, t_shape = model_shape(Path(tmp) / "s"), model_shape(Path(tmp) / "t")
    on_cuda = device.type == "cuda"
    shape = StepShape(gpus=1, rows=report["xopd_step"]["rows"], n=args.n, prompt_len=150,
                      new_tokens=args.step_tokens, checkpointing=report["xopd_step"]["checkpointing"],
                      shared_prompt=not report["xopd_step"]["checkpointing"], weight_bytes=4,
                      compute_bytes=2 if on_cuda else 4, teacher_bytes=2 if on_cuda else 4)
    report["plan_step1_gb"] = plan_step(s_shape, t_shape, shape, step=1)
    report["seconds"] = time.perf_counter() - t_start
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if args.skip_pytest:
        return 0
    return subprocess.call([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "gpu")], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
