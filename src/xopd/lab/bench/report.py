"""Runs the benchmark described in ``xopd bench --help`` and builds its JSON report and table."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from xopd.lab.bench.config import BenchConfig
from xopd.lab.bench.runs import best_run, cpu_ratio, linear_kernel_entry, linear_kernel_switches


def _versions() -> dict[str, str | None]:
    import transformers

    from xopd.lab.bench.trl_bench import trl_available

    trl_version = None
    if trl_available():
        import trl

        trl_version = trl.__version__
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
    }


def run_bench(args: BenchConfig) -> dict[str, Any]:
    """Everything ``xopd bench`` measures, as one JSON-able dict (see BENCHMARKS.md for the fields)."""
    from xopd.errors import ConfigError
    from xopd.lab.bench.models import SIZES, build_bench_world
    from xopd.lab.bench.system import cpu_model, matmul_peak_gflops, onednn_peak_gflops, run_child
    from xopd.lab.bench.trl_bench import run_trl, trl_available
    from xopd.lab.bench.xopd_bench import phase_breakdown, run_xopd, step_flops
    from xopd.models import load_student, load_teacher
    from xopd.utils.hf import quiet_hf

    quiet_hf()
    args = args.resolved()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise ConfigError(f"bench: unknown size {bad[0]!r}; choose from {', '.join(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    work = Path(args.work_dir)
    use_trl = bool(args.vs_trl) and trl_available()
    if args.vs_trl and not use_trl:
        print(
            "[xopd] bench: trl is not installed (pip install 'xopd[bench]'): TRL columns stay empty",
            file=sys.stderr,
        )
    log = lambda msg: print(f"[xopd bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    peak = matmul_peak_gflops(n=512 if args.quick else 2048)
    dnn_peak = onednn_peak_gflops(n=512 if args.quick else 2048)
    gemm_peak = max(peak, dnn_peak or 0.0)
    log(f"fp32 matmul peak {peak:.1f} GFLOP/s (oneDNN GEMM {dnn_peak or 0:.1f}) with {threads} threads")
    report: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": threads,
        "versions": _versions(),
        "matmul_peak_gflops": peak,  # torch.mm (MKL): the "same-run matmul peak"
        "onednn_peak_gflops": dnn_peak,  # the same product through oneDNN (None without it)
        "gemm_peak_gflops": gemm_peak,  # the better of the two: the machine's fp32 GEMM peak as far as we know
        "setup": {
            "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "xopd": "xopd train, algo xopd, lam=1 (text view), n_samples=1, loss=pg (k1), fp32",
            "trl": "lmbda=1, beta=1 (reverse KL), temperature 1, bf16 off, gradient checkpointing off",
        },
        "vs_trl": {},
        "xopd_step_gflops": {},
        "xopd_step_peak_fraction": {},
        "phases": {},
        "peak_rss_mb": {},
    }
    for size in sizes:
        if size == "X":
            from xopd.lab.bench.x_shape import run_x

            xr = run_x(args, work, threads, peak, use_trl, log)
            report["vs_trl"]["X"] = xr["vs_trl"]
            report["shared_prompt"] = {"X": xr["shared_prompt"]}
            if xr["linear_kernel"]:
                report.setdefault("linear_kernel", {})["X"] = xr["linear_kernel"]
            report["x_shape"] = xr["shape"]
            report["xopd_step_gflops"]["X"] = xr["step_gflops"]
            report["xopd_step_peak_fraction"]["X"] = xr["step_peak_fraction"]
            continue
        world = build_bench_world(size, work / "world", n_prompts=args.prompts)
        runs: dict[str, list[dict[str, float]]] = {"xopd": [], "distillation": [], "gkd": []}
        ab_kernel = linear_kernel_switches(world)
        if ab_kernel:
            runs["xopd_torch_linear"] = []
        for r in range(args.rounds):
            log(f"{size} round {r + 1}/{args.rounds}: xopd")
            runs["xopd"].append(
                run_xopd(world, args.steps, args.warmup, args.max_new_tokens, threads, work_dir=work / "xopd")
            )
            if ab_kernel:  # the same step with torch's (MKL) linears: what the oneDNN kernel buys
                log(f"{size} round {r + 1}/{args.rounds}: xopd, linear_kernel torch")
                runs["xopd_torch_linear"].append(run_xopd(world, args.steps, args.warmup, args.max_new_tokens,
                                                          threads, work_dir=work / "xopd", linear_kernel="torch"))
            if use_trl:
                for kind in ("distillation", "gkd"):
                    log(f"{size} round {r + 1}/{args.rounds}: trl {kind}")
                    runs[kind].append(
                        run_trl(
                            kind,
                            world,
                            args.steps,
                            args.max_new_tokens,
                            args.warmup,
                            work_dir=str(work / "trl"),
                        )
                    )
        best = {k: best_run(v) for k, v in runs.items()}
        x = best["xopd"]
        trl = {k: best[k] for k in ("distillation", "gkd") if best[k]}
        faster = max(trl, key=lambda k: trl[k]["tok_s"]) if trl else None
        if ab_kernel:
            report.setdefault("linear_kernel", {})[size] = linear_kernel_entry(x, best["xopd_torch_linear"])
        report["vs_trl"][size] = {
            "xopd_tok_s": x["tok_s"],
            "xopd_step_s": x["step_s"],
            "trl_tok_s": trl[faster]["tok_s"] if faster else None,
            "trl_step_s": trl[faster]["step_s"] if faster else None,
            "ratio": x["tok_s"] / trl[faster]["tok_s"] if faster else None,
            "faster_trl": faster,
            # CPU seconds per step (process time, all threads): robust to other load on 1 thread
            "xopd_cpu_s": x.get("cpu_s"),
            "trl_cpu_s": trl[faster].get("cpu_s") if faster else None,
            "ratio_cpu": cpu_ratio(x, trl[faster]) if faster else None,
            "trl": trl,
            "all_rounds": runs,
        }
        log(f"{size}: phase breakdown")
        phases = phase_breakdown(world, steps=1 if args.quick else 2, max_new_tokens=args.max_new_tokens)
        flops = step_flops(
            load_student(world.student).causal_lm(),
            load_teacher(world.teacher).causal_lm(),
            int(phases["prompt_tokens"]),
            int(round(x["gen_tokens"])),
        )
        report["phases"][size] = phases
        # the rollout (prefill + decode) against the time its FLOPs need at the measured matmul peak
        report.setdefault("decode_bound", {})[size] = phases["rollout"] / (phases["rollout_gflop"] / peak)
        # the same against the better GEMM (oneDNN where it beats MKL): a stricter bound
        report.setdefault("decode_bound_gemm_peak", {})[size] = phases["rollout"] / (phases["rollout_gflop"]
                                                                                     / gemm_peak)
        report["xopd_step_gflops"][size] = flops["step_gflop"] / x["step_s"]
        report["xopd_step_peak_fraction"][size] = report["xopd_step_gflops"][size] / peak
        report.setdefault("xopd_step_gemm_peak_fraction", {})[size] = report["xopd_step_gflops"][size] / gemm_peak
        # per CPU-second of the process (all threads): what the step does with the cycles it actually got
        report.setdefault("xopd_step_gflops_per_cpu_s", {})[size] = (
            flops["step_gflop"] / x["cpu_s"] if x.get("cpu_s") else None
        )
        report["vs_trl"][size]["step_gflop"] = flops["step_gflop"]
    if args.rss:
        from xopd.lab.bench.rss import KINDS

        for kind in KINDS:
            if kind.startswith("xopd-text-") and kind[-1] not in sizes:
                continue
            log(f"peak RSS: {kind}")
            report["peak_rss_mb"][kind] = run_child("xopd.lab.bench.rss", [kind, str(work), str(threads)])[
                "peak_rss_mb"
            ]
    if args.demo_rss != "none":
        kind = f"demo-{args.demo_rss}"
        log(f"peak RSS: {kind}")
        report["peak_rss_mb"][kind] = run_child(
            "xopd.lab.bench.rss", [kind, str(work), str(threads)], timeout=7200
        )["peak_rss_mb"]
    print(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The human-readable summary ``xopd bench`` prints."""
    peak = report["matmul_peak_gflops"]
    lines = [
        f"xopd bench  {report['date']}  {report['cpu']}  threads={report['threads']}  "
        f"fp32 matmul peak {peak:.1f} GFLOP/s"
        + (f", oneDNN GEMM {report['onednn_peak_gflops']:.1f}" if report.get("onednn_peak_gflops") else ""),
        "",
        f"{'size':<5}{'xopd tok/s':>12}{'distill tok/s':>15}{'gkd tok/s':>11}  {'ratio':<20}"
        f"{'step GFLOP/s':>14}{'% peak':>8}",
    ]
    for size, v in report["vs_trl"].items():
        trl = v.get("trl") or {}

        def cell(k: str, trl: dict = trl) -> str:
            return f"{trl[k]['tok_s']:.0f}" if k in trl else "-"

        ratio = f"{v['ratio']:.2f}x" if v.get("ratio") else "-"
        ratio += f" (cpu {v['ratio_cpu']:.2f}x)" if v.get("ratio_cpu") else ""
        g = report["xopd_step_gflops"][size]
        lines.append(
            f"{size:<5}{v['xopd_tok_s']:>12.0f}{cell('distillation'):>15}{cell('gkd'):>11}  {ratio:<20}"
            f"{g:>14.1f}{100 * g / peak:>7.0f}%"
        )
    for size, sp in (report.get("shared_prompt") or {}).items():
        lines.append(f"  {size} shared-prompt path: {sp['shared_tok_s']:.0f} vs {sp['unshared_tok_s']:.0f} tok/s "
                     f"without it ({sp['speedup']:.2f}x)")
    for size, lk in (report.get("linear_kernel") or {}).items():
        lines.append(f"  {size} oneDNN linears: {lk['onednn_tok_s']:.0f} vs {lk['torch_tok_s']:.0f} tok/s with "
                     f"torch's ({lk['speedup']:.2f}x)")
    for size, ratio in (report.get("decode_bound") or {}).items():
        strict = (report.get("decode_bound_gemm_peak") or {}).get(size)
        lines.append(f"  {size} rollout: {ratio:.1f}x its FLOP-bound time at the measured matmul peak"
                     + (f" ({strict:.1f}x at the oneDNN GEMM peak)" if strict and strict != ratio else ""))
    for size, ph in report["phases"].items():
        parts = ", ".join(f"{k} {ph[k]:.3f}s" for k in ("rollout", "teacher", "student_fwd_bwd", "optimizer"))
        lines.append(f"  {size} phases: {parts} (step {ph['step_gflop']:.1f} GFLOP)")
    if report["peak_rss_mb"]:
        lines.append(
            "  peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in report["peak_rss_mb"].items())
        )
    return "\n".join(lines)
