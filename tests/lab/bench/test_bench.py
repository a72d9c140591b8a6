"""``xopd bench --quick``: the whole benchmark pipeline on a tiny model in seconds, and the JSON schema
BENCHMARKS.md and the issue rely on. Timings are never asserted (shared machines); TRL is optional."""

from __future__ import annotations

import json
import math

from xopd.cli import main
from xopd.lab.bench.trl_bench import trl_available


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_bench_writes_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--vs-trl", "--sizes", "XS,X", "--work-dir", str(tmp_path),
                 "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "xopd tok/s" in table and "XS" in table
    rep = json.loads(out.read_text())
    assert {
        "date",
        "cpu",
        "threads",
        "versions",
        "matmul_peak_gflops",
        "vs_trl",
        "xopd_step_gflops",
        "phases",
    } <= set(rep)
    assert _positive(rep["matmul_peak_gflops"]) and rep["threads"] >= 1
    row = rep["vs_trl"]["XS"]
    assert _positive(row["xopd_tok_s"]) and _positive(rep["xopd_step_gflops"]["XS"])
    if trl_available():
        assert _positive(row["trl_tok_s"]) and row["faster_trl"] in ("distillation", "gkd")
        assert math.isclose(row["ratio"], row["xopd_tok_s"] / row["trl_tok_s"])
    else:
        assert row["trl_tok_s"] is None and row["ratio"] is None
    ph = rep["phases"]["XS"]
    assert {"rollout", "teacher", "student_fwd_bwd", "optimizer", "step_gflop"} <= set(ph)
    assert _positive(rep["decode_bound"]["XS"])
    # the X-OPD-shaped size: xopd with and without the shared-prompt path (and TRL, if installed)
    x = rep["vs_trl"]["X"]
    assert set(x) >= set(row) and _positive(x["xopd_tok_s"])
    sp = rep["shared_prompt"]["X"]
    assert math.isclose(sp["speedup"], sp["shared_tok_s"] / sp["unshared_tok_s"])
    assert rep["x_shape"]["n"] == 2 and "X" in table and "shared-prompt path" in table


def test_unknown_size_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", "--quick", "--sizes", "XL", "--work-dir", str(tmp_path)]) == 2
    assert "unknown size 'XL'" in capsys.readouterr().err


def test_quick_caps_budgets_in_a_copy_and_leaves_the_given_config_alone():
    from xopd.lab.bench.config import BenchConfig

    given = BenchConfig(quick=True, steps=5, prompts=16)
    given.validate()
    run = given.resolved()
    assert (run.sizes, run.steps, run.warmup, run.rounds, run.max_new_tokens, run.prompts, run.rss) == (
        "XS", 2, 1, 1, 8, 4, False)
    assert (given.sizes, given.steps, given.prompts, given.rss) == ("S,M", 5, 16, None)
    assert BenchConfig().resolved().rss is True and BenchConfig(sizes="M", quick=True).resolved().sizes == "M"


def test_median_seconds_calls_warmup_plus_n_and_returns_a_duration():
    from xopd.lab.bench.system import median_seconds

    calls = []
    t = median_seconds(lambda: calls.append(1), n=5, warmup=2)
    assert len(calls) == 7 and 0.0 <= t < 1.0
