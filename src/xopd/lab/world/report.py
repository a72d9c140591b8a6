"""The demo's report: the paper's Table 1 in miniature (terminal + Markdown), JSON, and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from xopd.lab.world.tasks import BENCHES
from xopd.training.logging import read_metrics
from xopd.utils.io import atomic_write_text

# The paper's Table 1 (Qwen3-Omni-30B-A3B on BIG Bench Audio), quoted for orientation.
PAPER_TABLE1 = {
    "text LLM (Qwen3-A3B), T": 97.72,
    "speech LLM (Qwen3-Omni), S": 85.67,
    "speech LLM (Qwen3-Omni), T": 92.10,
}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:5.1f}"


def _drop(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:5.2f}%"


def table_md(report: dict, split: str) -> str:
    """One split as a Markdown table: rows = models, columns = S/T per benchmark, dS, dT, forgetting."""
    teacher = report["teacher_by_split"].get(split, {})
    # dS over the questions the front end heard exactly: the gap left without hearing errors
    heard = any("heard_right" in m.get(split, {}) for m in report["models"].values())
    head = (
        ["model"] + [f"{b} {v}" for b in BENCHES for v in ("S", "T")] + ["dS", "dT"]
        + (["dS heard right"] if heard else []) + ["audio-only", "ASR WER"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        "| teacher (text) | "
        + " | ".join(f"— | {_pct(teacher.get(b, {}).get('T'))}" for b in BENCHES)
        + " | — | — |" + (" — |" if heard else "") + " — | — |"
    )
    for name, per_split in report["models"].items():
        r = per_split.get(split, {})
        cells = [f"{_pct(r.get(b, {}).get('S'))} | {_pct(r.get(b, {}).get('T'))}" for b in BENCHES]
        wer = r.get("asr_wer")
        hr = f" {_drop(r.get('heard_right', {}).get('avg_drop_S'))} |" if heard else ""
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_drop(r.get('avg_drop_S'))} | "
            f"{_drop(r.get('avg_drop_T'))} |{hr} {_pct(r.get('audio_only_acc'))} | "
            f"{'—' if wer is None else f'{wer:.3f}'} |"
        )
    return "\n".join(lines)


def hearing_md(report: dict) -> str:
    """What the front end hears, and the teacher as the LLM of a cascade on it, per split."""
    hearing, cascade = report.get("hearing") or {}, report.get("cascade") or {}
    if not hearing:
        return ""
    lines = ["| split | token error | numbers all right | exact | " + " | ".join(
        f"cascade {b}: front end / reference" for b in BENCHES) + " |", "|" + "---|" * (4 + len(BENCHES))]
    for split, h in hearing.items():
        c = cascade.get(split, {})
        cells = [f"{_pct(c.get(b, {}).get('front_end'))} / {_pct(c.get(b, {}).get('reference'))}" for b in BENCHES]
        lines.append(f"| {split} | {100 * h['token_error']:.2f} % | {_pct(h['numbers_right'])} | {_pct(h['exact'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_kind_md(report: dict, split: str, models_key: str = "models") -> str:
    """Accuracy per question kind on one split: the teacher on T, the cascade on the normalised reference
    transcript, and every model from S. Where a model's dS comes from; empty without per-kind scores.
    ``models_key="rows"`` reads an ``xopd reproduce`` report, whose cells are mean ± std over seeds."""
    teacher = (report.get("teacher_per_kind") or {}).get(split) or {}
    models = {name: m.get(split, {}).get("per_kind") for name, m in (report.get(models_key) or {}).items()}
    models = {name: pk for name, pk in models.items() if pk}
    if not teacher or not models:
        return ""

    def cell(v: float | dict | None) -> str:  # a reproduce row's cell is {"mean", "std"} over seeds
        return _ms(v, 100) if isinstance(v, dict) else _pct(v)

    cascade = ((report.get("cascade") or {}).get(split) or {}).get("per_kind") or {}
    head = ["kind", "n", "teacher T", *(["cascade reference"] if cascade else []), *(f"{n} S" for n in models)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, t in teacher.items():
        cells = [kind, str(t["n"]), _pct(t["acc"])]
        if cascade:
            cells.append(_pct(cascade.get(kind, {}).get("reference")))
        cells += [cell(pk.get(kind, {}).get("S")) for pk in models.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_demo_report(root: Path, report: dict, xopd_metrics: Path | None = None) -> None:
    """report.json, report.md and gap.png under ``root``; prints the tables."""
    atomic_write_text(root / "report.json", json.dumps(report, indent=2, default=str))
    parts = [
        "# xopd demo: the modality gap and X-OPD closing it (mini world)\n",
        "Accuracy in %, Avg. Drop dS/dT in % against the text teacher on the same split "
        "(docs/DESIGN.md section 4). audio-only = forgetting probe (S only); ASR scored by WER. "
        "dS heard right = dS over the questions the front end heard exactly (hearing errors, which "
        "no training of the LM can undo, taken out).\n",
    ]
    for split, title in (
        ("test", "Test (in-distribution voices)"),
        ("heldout", "Held-out (unseen voices and noise)"),
        ("unseen_template", "Unseen templates (information: a tiny teacher generalises poorly)"),
    ):
        if split in report["teacher_by_split"]:
            parts += [f"\n## {title}\n", table_md(report, split), ""]
    for split in ("test", "heldout"):
        kinds = per_kind_md(report, split)
        if kinds:
            parts += [
                f"\n## Where the gap is: accuracy per question kind ({split})\n",
                "The teacher on T, the teacher on the normalised reference transcript (cascade reference: "
                "lower case, no punctuation, what speech carries) and each model from S, in %.\n",
                kinds,
                "",
            ]
    if report.get("hearing"):
        parts += [
            "\n## What the student hears\n",
            "The front end's own transcript of the spoken questions (CTC adapter, greedy, no LM): token error "
            "(WER of the spoken words), share of questions whose numbers are all heard right, share heard "
            "exactly. Cascade: the text teacher answering that transcript, and the reference transcript "
            "normalised the same way (lower case, no punctuation), accuracy in %.\n",
            hearing_md(report),
            "",
        ]
    parts.append(
        "\nPaper, Table 1 (BIG Bench Audio, for orientation): "
        + "; ".join(f"{k} {v}" for k, v in PAPER_TABLE1.items())
    )
    secs = report.get("stage_seconds", {})
    parts.append(
        "\n\nStage seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())
        + f" (hearing includes encode; with --parallel the teacher overlaps hearing); wall clock {report.get('seconds', 0):.0f} s; "
        f"peak RSS {report.get('peak_rss_mb', 0):.0f} MB"
    )
    md = "\n".join(parts) + "\n"
    atomic_write_text(root / "report.md", md)
    print(md)
    plot_gap(root / "gap.png", report, xopd_metrics)


def plot_gap(path: Path, report: dict, metrics_path: Path | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    # the gap itself: Avg. Drop from speech (dS) and from text (dT) per model, test and held-out
    ax = axes[0]
    names = list(report["models"])
    splits = [sp for sp in ("test", "heldout") if all(sp in report["models"][n] for n in names)]
    width = 0.8 / max(1, 2 * len(splits))
    for i, name in enumerate(names):
        for j, sp in enumerate(splits):
            r = report["models"][name][sp]
            for k, (key, hatch) in enumerate((("avg_drop_S", ""), ("avg_drop_T", "//"))):
                x = i + (2 * j + k) * width
                ax.bar(x, r.get(key) or 0.0, width, color=f"C{j}", hatch=hatch, alpha=1.0 if k == 0 else 0.5,
                       label=f"{sp} {'dS' if k == 0 else 'dT'}" if i == 0 else None)
    ax.set_xticks([i + width * (2 * len(splits) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    ax.set_ylabel("Avg. Drop vs text teacher (%)")
    ax.set_title("the modality gap before/after X-OPD (lower is better)")
    ax.legend(fontsize=7)
    if metrics_path is not None and metrics_path.is_file():
        rows = read_metrics(metrics_path)
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_reverse_kl_S" in r]
        ax = axes[1]
        for key in ("reverse_kl_S", "reverse_kl_T"):
            pts = [(r["step"], r[key]) for r in train if key in r]
            if pts:
                ax.plot(*zip(*pts), label=f"train {key} (k1)", alpha=0.6)
        for key in ("eval_reverse_kl_S", "eval_reverse_kl_T"):
            pts = [(r["step"], r[key]) for r in evals if key in r]
            if pts:
                ax.plot(*zip(*pts), "o-", label=key)
        ax.set_xlabel("X-OPD step")
        ax.set_title("reverse KL to the teacher (row xopd)")
        ax.legend(fontsize=7)
        ax = axes[2]
        pts = [(r["step"], r["adv_mean"]) for r in train if "adv_mean" in r]
        if pts:
            ax.plot(*zip(*pts), label="mean advantage (reward)")
        ax.set_xlabel("X-OPD step")
        ax.set_title("per-token reward")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- xopd reproduce ---------------------------------------------------------------------------------
# The paper's own numbers (Qwen3-Omni-30B-A3B student, Qwen3-30B-A3B teacher), quoted for reference.
# docs/DESIGN.md section 1 gives per-row numbers only for X-OPD; SFT/KD/GKD are quoted as the range it gives.
PAPER_AVG_DROP = {"sft": "19-23 (SFT/KD/GKD range)", "offline_kd": "19-23 (SFT/KD/GKD range)",
                  "gkd": "19-23 (SFT/KD/GKD range)", "xopd_l05": "3.43 / 0.97"}
PAPER_MMAR = {"student_base": "71.3", "xopd_l05": "69.3", "sft": "~60", "offline_kd": "~60", "gkd": "~60"}


def _ms(d: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not d or d.get("mean") is None or d["mean"] != d["mean"]:
        return "—"
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def _paired(d: dict | None) -> str:
    if not d:
        return "—"
    sep = "∞" if d["sep"] == float("inf") else f"{d['sep']:.1f}"
    return f"{d['mean']:+.2f} ± {d['std']:.2f} ({sep} sd)"


def reproduce_tables(report: dict, split: str) -> str:
    rows = report["rows"]
    paired = report.get("paired_vs_xopd_l05") or {}
    teacher = report["teacher"].get(split, {})
    head = (["row"] + [f"{b} {v}" for b in BENCHES for v in ("S", "T")]
            + ["dS %", "dT %", "dS heard right %", "dS - xopd_l05 (seed-paired)", "paper dS/dT %"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out.append("| teacher (text) | " + " | ".join(f"— | {_pct(teacher.get(b, {}).get('T'))}" for b in BENCHES)
               + " | — | — | — | — | — |")
    for name, r in rows.items():
        r = r.get(split, {})
        cells = [f"{_ms(r.get(b, {}).get('S'), 100)} | {_ms(r.get(b, {}).get('T'), 100)}" for b in BENCHES]
        ptxt = PAPER_AVG_DROP.get(name, "—")
        pd = paired.get(name, {}).get(split, {}).get("avg_drop_S")
        out.append(f"| {name} | " + " | ".join(cells) + f" | {_ms(r.get('avg_drop_S'), 1, 2)} | "
                   f"{_ms(r.get('avg_drop_T'), 1, 2)} | {_ms(r.get('heard_right_avg_drop_S'), 1, 2)} | "
                   f"{_paired(pd)} | {ptxt} |")
    return "\n".join(out)


def forgetting_table(report: dict, split: str) -> str:
    out = ["| row | audio-only acc % | ASR WER | paper MMAR |", "|---|---|---|---|"]
    for name, r in report["rows"].items():
        r = r.get(split, {})
        out.append(f"| {name} | {_ms(r.get('audio_only_acc'), 100)} | {_ms(r.get('asr_wer'), 1, 3)} | "
                   f"{PAPER_MMAR.get(name, '—')} |")
    return "\n".join(out)


def write_reproduce_report(root: Path, report: dict) -> None:
    atomic_write_text(root / "report.json", json.dumps(report, indent=2, default=str))
    seeds = report["seeds"]
    b = report["budget"]
    parts = [
        "# xopd reproduce: baselines vs X-OPD on the mini world\n",
        f"Mean ± std over seeds {seeds}. Every trained row: {b['steps']} optimizer steps x {b['prompts_per_step']} "
        f"prompts from the same stage-1 student and data"
        + (f", plus {b['replay_rows_per_step']} rehearsal rows (ASR / audio-only SFT) per step for every row"
           if b.get("replay_rows_per_step") else "")
        + "; learning rate chosen by the sweep below. "
        "Paper columns: Qwen3-Omni-30B-A3B (BIG Bench Audio / VoiceBench avg. drop; MMAR), for reference only.\n",
    ]
    eq = report.get("equal_compute")
    if eq:
        parts.append(f"Equal compute: `{eq['row']}` is {eq['of']} trained for {eq['steps']} steps, the multiple of "
                     f"the budget closest to xopd_l05's training time ({eq['time_ratio']:.1f}x {eq['of']}'s).\n")
    for split, title in (("test", "Test"), ("heldout", "Held-out (unseen voices and noise)")):
        parts += [f"\n## Table 1/2 analogue — {title}\n", reproduce_tables(report, split),
                  f"\n\n## Table 3 analogue (forgetting) — {title}\n", forgetting_table(report, split), ""]
        kinds = per_kind_md(report, split, models_key="rows")
        if kinds:
            parts += [f"\n## Where the gap is: accuracy per question kind — {title}\n",
                      "The teacher on T, the teacher on the normalised reference transcript (cascade reference: "
                      "what speech carries) and each row from S, mean ± std over seeds, in %.\n", kinds, ""]
    parts.append("\n## Learning-rate sweep (dev avg_drop_S %, lower is better)\n")
    parts.append("| row | tried | chosen |\n|---|---|---|")
    for row, sw in report["lr_sweep"].items():
        tried = ", ".join(f"{lr}: {v:.2f}" if v == v else f"{lr}: —" for lr, v in sw["tried"].items())
        parts.append(f"| {row} | {tried} | {sw['chosen_lr']:g} |")
    parts.append("\n## Cost per row (mean over seeds)\n\n| row | train seconds | tokens |\n|---|---|---|")
    for row, c in report["cost"].items():
        parts.append(f"| {row} | {c['seconds']['mean']:.0f} | {c['tokens']['mean']:.0f} |")
    parts.append(f"\nTotal wall-clock: {report['seconds']:.0f} s"
                 + (f"; peak RSS {report['peak_rss_mb']:.0f} MB" if report.get("peak_rss_mb") else ""))
    md = "\n".join(parts) + "\n"
    atomic_write_text(root / "report.md", md)
    print(md)
    _plot_reproduce(root / "avg_drop.png", report)


def _plot_reproduce(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = list(report["rows"])
    for ax, split in zip(axes, ("test", "heldout")):
        for j, (key, lab) in enumerate((("avg_drop_S", "dS"), ("avg_drop_T", "dT"))):
            means = [report["rows"][n].get(split, {}).get(key, {}).get("mean", float("nan")) for n in names]
            stds = [report["rows"][n].get(split, {}).get(key, {}).get("std", 0.0) for n in names]
            ax.bar([i + 0.4 * j for i in range(len(names))], means, 0.4, yerr=stds, label=lab, capsize=3)
        ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("Avg. Drop vs teacher (%)")
        ax.set_title(split)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
