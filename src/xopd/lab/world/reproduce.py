"""``xopd reproduce``: every algorithm from the same stage-1 student, same data, same budget.

Rows (the paper's Tables 1-3): ``student_base`` (stage 1, untrained further), ``sft``, ``offline_kd``,
``gkd``, ``grpo``, ``xopd_l0``, ``xopd_l05``, ``xopd_l1``. Each trained row gets the same number of
optimizer steps and prompts per step; its learning rate is chosen by a small sweep on a dev set held
back from the training split (shown in the report), then it is run over the seeds and evaluated on
test and held-out, S and T. Wall-clock and tokens are reported per row.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from xopd.config import field
from xopd.lab.world import stages
from xopd.lab.world.config import DemoConfig
from xopd.lab.world.data import by_task
from xopd.lab.world.tasks import BENCHES
from xopd.training.logging import read_metrics

ROWS = ("student_base", "sft", "sft_teacher_style", "offline_kd", "gkd", "grpo", "xopd_l0", "xopd_l05", "xopd_l1")

# Algorithm settings per row; every row shares steps, prompts per step and the data.
ROW_SETTINGS: dict[str, dict] = {
    "sft": {"algo": "sft", "sft_view": "S"},
    "sft_teacher_style": {"algo": "sft", "sft_view": "S"},
    "offline_kd": {"algo": "offline_kd", "sft_view": "S"},
    "gkd": {"algo": "gkd", "gkd_lambda": 0.5, "gkd_beta": 0.0},
    "grpo": {"algo": "grpo"},
    "xopd_l0": {"algo": "xopd", "lam": 0.0},
    "xopd_l05": {"algo": "xopd", "lam": 0.5},
    "xopd_l1": {"algo": "xopd", "lam": 1.0},
}


#: rows trained on the references in their own style (the paper's SFT/GKD data are public datasets'
#: responses, not the teacher's); ``sft_teacher_style`` keeps the teacher's own wording for comparison
OWN_STYLE_ROWS = ("sft", "gkd")
_STEP = re.compile(r"(\d+) (plus|minus) (\d+) is (\d+)\.")


def own_style(reference: str) -> str:
    """The same answer in another wording of the steps than the teacher's: ``"12 plus 5 is 17. 17 minus
    3 is 14. The answer is 14."`` -> ``"There are 12. 5 more is 17. 3 away is 14. The answer is 14."``.
    Only words of the mini world's vocabulary (its tokenizer has no others: a new word would be
    ``<unk>``). Bare answers (instruct) have no steps and stay as they are; the closing ``The answer is
    N.`` stays, so scoring is unchanged."""
    steps = _STEP.findall(reference)
    if not steps:
        return reference
    out = [f"There are {steps[0][0]}."]
    for _, op, k, new in steps:
        out.append(f"{k} {'more' if op == 'plus' else 'away'} is {new}.")
    tail = reference[reference.rfind("The answer is"):] if "The answer is" in reference else ""
    return " ".join(out + [tail]).strip()


#: bumped whenever own_style's wording changes, so cached runs trained on the old wording are redone
OWN_STYLE_VERSION = 2


@dataclass
class ReproduceConfig(DemoConfig):
    output_dir: str = field("runs/reproduce", help="where runs and the report go")
    world_dir: str = field("runs/demo", help="data/teacher/stage-1 cache shared with `xopd demo`")
    rows: str = field(",".join(ROWS[1:]), help="comma list of trained rows to run")
    seeds: str = field("0,1,2", help="comma list of training seeds")
    steps: int = field(80, help="optimizer steps for every trained row (same budget)")
    batch: int = field(8, help="prompts per optimizer step for every trained row")
    lr_grid: str = field("0.3,1,3", help="multipliers of each row's base lr tried in the sweep")
    sft_base_lr: float = field(3e-4, help="base lr of sft / offline_kd / gkd")
    rl_base_lr: float = field(2e-4, help="base lr of grpo / xopd")
    equal_compute: bool = field(True, help="also train sft_teacher_style for as many steps as xopd_l05's "
                                "training time buys (the row sft_equal_compute)")
    dev_size: int = field(48, help="items of the prompt pool held back (per bench) to choose learning rates")

    def quick_version(self) -> ReproduceConfig:
        base = DemoConfig.quick_version(self)
        return replace(base, rows="sft,sft_teacher_style,xopd_l05", seeds="0,1",  # type: ignore[return-value]
                       steps=2, batch=2, lr_grid="1", dev_size=2)


def _mean_std(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": float("nan"), "std": float("nan")}
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd}


def aggregate_runs(per_seed: list[dict]) -> dict:
    """Mean/std over seeds of every metric of one row (``{split: {metric...}}`` per seed), per benchmark and,
    where the runs have them, per question kind (``per_kind: {kind: {"S", "T": mean/std, "n"}}``)."""
    out: dict = {}
    for split in ("test", "heldout"):
        runs = [r[split] for r in per_seed if split in r]
        if not runs:
            continue
        agg: dict = {}
        for key in ("avg_drop_S", "avg_drop_T", "audio_only_acc", "asr_wer"):
            agg[key] = _mean_std([r.get(key) for r in runs])
        if any("heard_right" in r for r in runs):  # dS over the questions the front end heard exactly
            agg["heard_right_avg_drop_S"] = _mean_std([r.get("heard_right", {}).get("avg_drop_S") for r in runs])
        for b in BENCHES:
            if any(b in r for r in runs):
                agg[b] = {v: _mean_std([r[b][v] for r in runs if b in r]) for v in ("S", "T")}
        kinds = [r["per_kind"] for r in runs if r.get("per_kind")]
        if kinds:  # accuracy per question kind (world/evaluate.py::per_kind): which kinds a row moves
            agg["per_kind"] = {k: {"S": _mean_std([pk[k]["S"] for pk in kinds if k in pk]),
                                   "T": _mean_std([pk[k]["T"] for pk in kinds if k in pk]),
                                   "n": kinds[0][k]["n"]} for k in kinds[0]}
        out[split] = agg
    return out


def paired_differences(per_row: dict[str, list[dict]], ref: str = "xopd_l05",
                       keys: tuple[str, ...] = ("avg_drop_S", "avg_drop_T")) -> dict:
    """Seed-paired difference of every row against ``ref``: for seed i, ``row_i - ref_i`` (the same data,
    stage-1 student and seed, so the seed's luck cancels), then mean and sample std over seeds, and
    ``sep`` = mean / std (how many standard deviations apart; inf when every seed's difference
    is the same up to float rounding: a std below 1e-9 x max(1, |mean|)).
    ``{row: {split: {key: {"mean", "std", "n", "sep"}}}}``; rows with another number of seeds
    (student_base, evaluated once) are paired with every seed of ``ref``."""
    if ref not in per_row:
        return {}
    out: dict = {}
    for row, runs in per_row.items():
        if row == ref:
            continue
        ref_runs = per_row[ref]
        pairs = list(zip(runs, ref_runs)) if len(runs) == len(ref_runs) else [(runs[0], r) for r in ref_runs]
        for split in ("test", "heldout"):
            for key in keys:
                d = [a[split][key] - b[split][key] for a, b in pairs
                     if split in a and split in b and a[split].get(key) is not None and b[split].get(key) is not None]
                if not d:
                    continue
                ms = _mean_std(d)
                # a std of float noise (every seed differs by the same amount, up to rounding in the
                # averaging) counts as 0: dividing by it printed "971271274434666.0 sd"
                spread = ms["std"] > 1e-9 * max(1.0, abs(ms["mean"]))
                sep = abs(ms["mean"]) / ms["std"] if spread else (math.inf if ms["mean"] else 0.0)
                out.setdefault(row, {}).setdefault(split, {})[key] = {**ms, "n": len(d), "sep": sep}
    return out


def run_reproduce(cfg: ReproduceConfig) -> dict:
    from xopd.lab.world.evaluate import Reference, evaluate_student, evaluate_world, load_for_eval
    from xopd.lab.world.report import write_reproduce_report

    if cfg.quick:
        cfg = cfg.quick_version()
    t_start = time.perf_counter()
    world_cfg = replace(cfg, output_dir=cfg.world_dir)
    world = stages.prepare_world(world_cfg)
    out = Path(cfg.output_dir)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = stages.StageCache(out)
    # Every row trains on the pool X-OPD uses in the demo (spoken questions stage 1 never trained on),
    # minus a dev slice for the sweep. On stage 1's own (memorised) train questions the student already
    # answers like the teacher: no row had a signal there, and a dev slice of them rewarded the smallest
    # learning rate (every row stayed flat; docs/BENCHMARKS.md, 'Demo configuration choices').
    train_all = [e for e in stages.xopd_pool(world) if e.task in BENCHES]
    dev = [e for b in BENCHES for e in [x for x in train_all if x.task == b][-cfg.dev_size:]]
    dev_ids = {e.id for e in dev}
    train = [e for e in train_all if e.id not in dev_ids]
    replay = by_task(world.split["train"], *stages.REHEARSAL_TASKS)  # the same rehearsal rows for every row
    seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    rows = [r for r in cfg.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROW_SETTINGS)
    if unknown:
        from xopd.errors import ConfigError

        raise ConfigError(f"reproduce: unknown row(s) {sorted(unknown)}; choose from {list(ROW_SETTINGS)}")

    from xopd.lab.world.evaluate import score_view
    from xopd.models import load_teacher

    cache_file = stages.encoder_cache_file(world.root)  # every clip's frozen-tower states, encoded once
    teacher = load_teacher(world.teacher_dir)
    dev_teacher = score_view(teacher, dev, "T", cfg.max_new_tokens, cfg.eval_batch, "teacher dev")
    del teacher

    def train_row(row: str, seed: int, lr: float, steps: int | None = None, name: str | None = None,
                  ) -> tuple[Path, dict]:
        steps = steps or cfg.steps
        run_dir = out / "runs" / f"{name or row}-lr{lr:g}-s{seed}"
        key = stages.stage_hash({"row": row, "seed": seed, "lr": lr, "steps": steps, "batch": cfg.batch,
                     "s1": world.s1_key, "n": cfg.xopd_n, "mnt": cfg.max_new_tokens,
                     "replay": cfg.xopd_replay, "pool": "prompts",
                     "refs": f"own-v{OWN_STYLE_VERSION}" if row in OWN_STYLE_ROWS else "teacher"})
        model = stages.final_model(run_dir, steps)
        if not cache.done(str(run_dir.relative_to(out)), key):
            shutil.rmtree(run_dir, ignore_errors=True)
            from xopd.lab.train import run_train

            settings = dict(ROW_SETTINGS[row])
            tcfg = stages.train_cfg(run_dir, student_path=str(world.student1), teacher_path=str(world.teacher_dir),
                              n_samples=cfg.xopd_n, batch_size=cfg.batch, micro_batch_size=cfg.batch,
                              max_steps=steps, lr=lr, max_new_tokens=cfg.max_new_tokens, seed=seed,
                              threads=cfg.threads, kd_cache=str(out / "kd_cache.jsonl"),
                              replay_batch=cfg.xopd_replay, **settings)
            stages.log(f"reproduce: {name or row} seed {seed} lr {lr:g} steps {steps}")
            rows_data = [replace(e, reference=own_style(e.reference)) for e in train] if row in OWN_STYLE_ROWS \
                else train
            run_train(tcfg, examples=rows_data, replay=replay)  # xopd_replay rows per step; 0 = the paper's setting
            cache.mark(str(run_dir.relative_to(out)), key, {"model": str(model)})
        rows_m = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        cost = {"seconds": sum(r.get("step_seconds", 0.0) for r in rows_m),
                "tokens": sum(r.get("tokens", 0) for r in rows_m)}
        return model, cost

    def dev_drop(model_dir: Path) -> float:
        m = load_for_eval(model_dir, stages.CACHE_DTYPE, cache_file)
        r = evaluate_student(m, dev, dev_teacher, cfg.max_new_tokens, cfg.eval_batch, "dev")
        return r["avg_drop_S"]

    # learning-rate sweep (seed = first seed), chosen by dev avg_drop_S
    sweep: dict[str, dict] = {}
    grid = [float(g) for g in cfg.lr_grid.split(",") if g.strip()]
    for row in rows:
        base = cfg.rl_base_lr if ROW_SETTINGS[row]["algo"] in ("grpo", "xopd") else cfg.sft_base_lr
        tried = {}
        for g in grid:
            lr = float(f"{base * g:g}")  # the value the report and the seed runs use (9e-05, not 8.999e-05)
            model, _ = train_row(row, seeds[0], lr)
            tried[f"{lr:g}"] = dev_drop(model) if len(grid) > 1 else float("nan")
        best = min(tried, key=lambda k: tried[k] if tried[k] == tried[k] else math.inf) if len(grid) > 1 \
            else next(iter(tried))
        sweep[row] = {"tried": tried, "chosen_lr": float(best)}

    # seeds x rows, evaluated on test and held-out
    eval_splits = {k: v for k, v in world.split.items() if k in ("test", "heldout")}
    per_row: dict[str, list[dict]] = {}
    costs: dict[str, list[dict]] = {}
    # the teacher's answers and the front end's hearing are the same for every row: computed once
    ref = Reference()

    def evaluate(name: str, model: Path) -> dict:
        return evaluate_world(world.teacher_dir, {name: model}, eval_splits, cfg.max_new_tokens, cfg.eval_batch,
                              stages.CACHE_DTYPE, cache_file, reference=ref)

    def run_seeds(row: str, lr: float, steps: int | None = None, name: str | None = None) -> None:
        name = name or row
        for seed in seeds:
            model, cost = train_row(row, seed, lr, steps=steps, name=name)
            per_row.setdefault(name, []).append(evaluate(name, model)["models"][name])
            costs.setdefault(name, []).append(cost)

    base_eval = evaluate("student_base", world.student1)
    per_row["student_base"] = [base_eval["models"]["student_base"]]
    for row in rows:
        run_seeds(row, sweep[row]["chosen_lr"])
    equal = None
    if cfg.equal_compute and {"sft_teacher_style", "xopd_l05"} <= set(costs):
        # equal compute: SFT on the teacher's wording for as many steps as xopd_l05's training time buys
        # (an integer multiple of the step budget, so the runs stay cached across timing noise)
        ratio = (_mean_std([c["seconds"] for c in costs["xopd_l05"]])["mean"]
                 / max(1e-9, _mean_std([c["seconds"] for c in costs["sft_teacher_style"]])["mean"]))
        mult = max(1, round(ratio))
        equal = {"row": "sft_equal_compute", "of": "sft_teacher_style", "time_ratio": ratio, "steps": cfg.steps * mult}
        run_seeds("sft_teacher_style", sweep["sft_teacher_style"]["chosen_lr"], steps=cfg.steps * mult,
                  name="sft_equal_compute")
    report = {
        "rows": {row: aggregate_runs(v) for row, v in per_row.items()},
        "paired_vs_xopd_l05": paired_differences(per_row),
        "seeds": seeds,
        "teacher": base_eval["teacher_by_split"],
        "teacher_per_kind": base_eval.get("teacher_per_kind") or {},
        "hearing": base_eval.get("hearing") or {},
        "cascade": base_eval.get("cascade") or {},
        "lr_sweep": sweep,
        "equal_compute": equal,
        "cost": {row: {"seconds": _mean_std([c["seconds"] for c in cs]),
                       "tokens": _mean_std([c["tokens"] for c in cs])} for row, cs in costs.items()},
        "budget": {"steps": cfg.steps, "prompts_per_step": cfg.batch, "samples_per_prompt": cfg.xopd_n,
                   "replay_rows_per_step": cfg.xopd_replay},
        "seconds": time.perf_counter() - t_start,
        "peak_rss_mb": stages.peak_rss_mb(),
        "config": asdict(cfg),
    }
    write_reproduce_report(out, report)
    return report


def load_report(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
