"""Split each model's dS into the question kinds the teacher can read from speech-shaped words and the rest.

A kind is *readable* when the teacher, answering the normalised reference transcript (lower case, no
punctuation: what speech carries; report.json's ``cascade[split].per_kind[kind].reference``), gets at
least THRESHOLD of it right. X-OPD's signal is the teacher reading the written question, but the student
starts from a copy of the teacher's LM, which on an unreadable kind has never learned what the words
alone say. This prints, per split and model, the points of dS lost on readable and unreadable kinds
(they add up to the report's dS) and the change against ``student_base``.

Reads ``report.json`` files of ``xopd demo`` runs, and of ``xopd reproduce`` runs (each row's accuracy per
kind is then its mean over seeds); nothing is trained or evaluated:

    python benchmarks/gap_by_kind.py runs/demo/report.json runs/demo_seed1/report.json [--threshold 0.9]
    python benchmarks/gap_by_kind.py runs/reproduce/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xopd.lab.world.tasks import BENCHES


def ds_points(report: dict, split: str, model: str, kinds: set[str]) -> float:
    """Avg. Drop (points of dS) contributed by the questions of ``kinds``: per benchmark, the teacher's
    accuracy minus the student's, weighted by each kind's share of the benchmark, over the teacher's
    accuracy; then the mean over the benchmarks, as the report's dS."""
    per_kind = report["models"][model][split]["per_kind"]
    teacher = report["teacher_per_kind"][split]
    total = 0.0
    for b in BENCHES:
        mine = {k: v for k, v in per_kind.items() if k.split("/")[0] == b}
        n = sum(v["n"] for v in mine.values())
        lost = sum((teacher[k]["acc"] - v["S"]) * v["n"] for k, v in mine.items() if k in kinds)
        total += lost / n / report["teacher_by_split"][split][b]["T"]
    return 100.0 * total / len(BENCHES)


def demo_shaped(report: dict) -> dict:
    """A reproduce report (``rows``: mean/std over seeds) in the demo report's shape, with each row's
    means; a demo report is returned as it is."""
    if "models" in report:
        return report

    def mean(split_row: dict) -> dict:
        return {"avg_drop_S": split_row["avg_drop_S"]["mean"],
                "per_kind": {k: {"S": v["S"]["mean"], "n": v["n"]} for k, v in split_row["per_kind"].items()}}

    return {**report, "teacher_by_split": report["teacher"],
            "models": {row: {sp: mean(r) for sp, r in splits.items()} for row, splits in report["rows"].items()}}


def _change(x: float, base: float) -> str:
    return "" if base == 0 else f" ({100 * (x / base - 1):+.0f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="report.json of xopd demo or xopd reproduce runs")
    ap.add_argument("--threshold", type=float, default=0.9, help="cascade reference accuracy of a readable kind")
    args = ap.parse_args()
    print("| run | split | model | dS on readable kinds | dS on unreadable kinds | dS | unreadable kinds |")
    print("|---|---|---|---|---|---|---|")
    for path in args.reports:
        rep = demo_shaped(json.loads(path.read_text()))
        for split in ("test", "heldout"):
            cascade = rep["cascade"][split]["per_kind"]
            readable = {k for k, v in cascade.items() if v["reference"] >= args.threshold}
            unreadable = set(cascade) - readable
            base = None
            for model in rep["models"]:
                r, u = ds_points(rep, split, model, readable), ds_points(rep, split, model, unreadable)
                base = base or (r, u)
                print(f"| {path.parent.name} | {split} | {model} | {r:.2f}{_change(r, base[0])} | "
                      f"{u:.2f}{_change(u, base[1])} | {rep['models'][model][split]['avg_drop_S']:.2f} | "
                      f"{', '.join(sorted(unreadable))} |")


if __name__ == "__main__":
    main()
