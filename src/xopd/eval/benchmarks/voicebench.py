"""VoiceBench (``hlt-lab/voicebench``, Apache-2.0): loader for local copies and the official scoring.

Layout (Hub parquet, as ``huggingface-cli download hlt-lab/voicebench --repo-type dataset`` writes
it): ``<root>/<config>/<split>-0000N-of-0000M.parquet``; or per-config ``save_to_disk`` folders
(``<root>/<config>/dataset_dict.json``). Every config has ``audio`` (the spoken prompt, S) and
``prompt`` (its text twin, T); ``reference`` where there is a gold answer; ``id`` (bbh, with the
subtask in it); ``key``/``instruction_id_list``/``kwargs`` (ifeval). The model hears the audio alone
(S) or reads ``prompt`` alone (T), as the official ``main.py`` does.

Scoring follows VoiceBench's evaluators (github.com/MatthewCYM/VoiceBench, ``src/evaluator/``) under
one of two rule sets, named per subset in the report (``rules``): VoiceBench's own phrase tables
and judge prompts read from the user's checkout of that code (``--voicebench-src DIR`` or
``$XOPD_VOICEBENCH_SRC``; :mod:`.voicebench_official`), or, without one, xopd's own approximate
rules and judge prompts (:mod:`.voicebench_default`). xopd ships none of VoiceBench's tables or
prompts. Interpretation and shared behaviour: :mod:`.voicebench_rules`; IFEval: :mod:`.ifeval`.

=================================  =========================================================
alpacaeval(_full), commoneval,      judge rating 1-5 (the rule set's prompt), mean of the samples
wildvoice
sd-qa (11 accent splits)            judge yes/no vs ``reference``, majority of the samples, %;
                                    PEDANT (qa-metrics) needs a downloaded classifier: not computed
openbookqa, mmsu (12 splits)        letter extraction, seeded random fallback, accuracy %
bbh                                 per-subtask answer rules, seeded random fallback, accuracy %
ifeval                              IFEval strict + loose, mean of the four accuracies, %
advbench                            refusal-phrase match, refusal rate %
mtbench                             no official scorer: reported as skipped, not run
=================================  =========================================================

Multi-split configs (sd-qa, mmsu) are scored split by split, as the official scripts score one
file per split, and the subset's score is the mean over splits (per-split scores in ``details``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from xopd.data.manifest import Example
from xopd.errors import DataError
from xopd.eval.benchmarks.base import ScoreContext, Subset, judge_skip, parse_spec
from xopd.eval.benchmarks.ifeval import ifeval_scores
from xopd.eval.benchmarks.io import audio_ref, read_split, require_columns
from xopd.eval.benchmarks.voicebench_default import parse_choices
from xopd.eval.benchmarks.voicebench_official import resolve_src
from xopd.eval.benchmarks.voicebench_rules import (
    DEFAULT_RULES,
    OfficialRules,
    bbh_accuracy,
    mcq_accuracy,
    open_rating,
    qa_majority,
)

__all__ = ["DEFAULT", "SUBSETS", "load"]

SDQA_SPLITS = ("aus", "gbr", "ind_n", "ind_s", "irl", "kenya", "nga", "nzl", "phl", "usa", "zaf")
MMSU_SPLITS = ("law", "engineering", "other", "biology", "business", "economics", "health", "philosophy",
               "psychology", "history", "chemistry", "physics")  # fmt: skip
#: config -> (splits, scorer kind)
SUBSETS: dict[str, tuple[tuple[str, ...], str]] = {
    "alpacaeval": (("test",), "open"),
    "alpacaeval_full": (("test",), "open"),
    "commoneval": (("test",), "open"),
    "wildvoice": (("test",), "open"),
    "sd-qa": (SDQA_SPLITS, "qa"),
    "openbookqa": (("test",), "mcq"),
    "mmsu": (MMSU_SPLITS, "mcq"),
    "bbh": (("test",), "bbh"),
    "ifeval": (("test",), "ifeval"),
    "advbench": (("test",), "harm"),
    "mtbench": (("test",), "none"),
}
#: what bare ``--bench voicebench`` runs: the leaderboard's subsets that the local copy has
DEFAULT = ("alpacaeval_full", "commoneval", "wildvoice", "sd-qa", "mmsu", "openbookqa", "bbh", "ifeval", "advbench")

#: api_judge.py: gpt-4o-mini, n=3, temperature 0.5, top_p 0.95, max_tokens 1024 (both rule sets)
JUDGE_SETTINGS = {"n": 3, "temperature": 0.5, "top_p": 0.95, "max_tokens": 1024}

UNITS = {"open": "GPT score (1-5)", "qa": "GPT accuracy %", "mcq": "accuracy %", "bbh": "accuracy %",
         "ifeval": "IFEval final %", "harm": "refusal rate %", "none": "-"}  # fmt: skip
SCORERS = {
    "open": "VoiceBench open: judge rating 1-5, mean over judge samples",
    "qa": "VoiceBench qa: yes/no judge vs reference, majority of judge samples (PEDANT not computed)",
    "mcq": "VoiceBench mcq: letter extraction, seeded random fallback",
    "bbh": "VoiceBench bbh: per-subtask answer rules, seeded random fallback",
    "ifeval": "VoiceBench ifeval: IFEval strict+loose, mean of 4 accuracies",
    "harm": "VoiceBench harm: refusal phrases (empty = refusal)",
    "none": "none: VoiceBench has no official scorer for mtbench",
}


def _fill(template: str, **values: str) -> str:
    """``str.replace`` per field, as api_judge.py does (braces inside responses stay literal)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def _judge(ctx: ScoreContext, rules, prompt: str) -> list[str]:
    messages = [{"role": "system", "content": rules.system_prompt}, {"role": "user", "content": prompt}]
    return ctx.judge.complete(messages, **JUDGE_SETTINGS)


def score_open(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
               rules=DEFAULT_RULES) -> dict[str, Any]:  # fmt: skip
    """Mean 1-5 judge rating over every judge sample of every item (open.py)."""
    skip = judge_skip(ctx, len(examples))
    if skip:
        return skip
    ratings, unparsed = [], 0
    for ex, resp in zip(examples, responses, strict=True):
        for out in _judge(ctx, rules, _fill(rules.open_prompt, prompt=ex.text, response=resp)):
            r = open_rating(out)
            if r is None:
                unparsed += 1
            else:
                ratings.append(r)
    return {"score": sum(ratings) / len(ratings) if ratings else None, "scored": len(examples),
            "unscored": 0, "details": {"judge_samples": len(ratings), "judge_unparsed": unparsed}}  # fmt: skip


def _by_split(examples: Sequence[Example], responses: Sequence[str]) -> dict[str, tuple[list, list]]:
    groups: dict[str, tuple[list, list]] = {}
    for ex, r in zip(examples, responses, strict=True):
        g = groups.setdefault(ex.meta["split"], ([], []))
        g[0].append(ex)
        g[1].append(r)
    return groups


def _split_mean(per_split: dict[str, float], n: int, extra: dict | None = None) -> dict[str, Any]:
    return {"score": sum(per_split.values()) / len(per_split) if per_split else None, "scored": n, "unscored": 0,
            "details": {"per_split": per_split, **(extra or {})}}  # fmt: skip


def score_qa(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
             rules=DEFAULT_RULES) -> dict[str, Any]:  # fmt: skip
    """% of items whose judge majority says "yes" (qa.py ``gpt``), averaged over splits."""
    skip = judge_skip(ctx, len(examples))
    if skip:
        return skip
    per = {}
    for split, (exs, resps) in _by_split(examples, responses).items():
        prompts = [_fill(rules.qa_prompt, prompt=e.text, reference=e.answer or "", response=r)
                   for e, r in zip(exs, resps)]  # fmt: skip
        votes = [qa_majority(_judge(ctx, rules, p), strict=rules.strict_yes) for p in prompts]
        per[split] = 100.0 * sum(votes) / len(votes)
    return _split_mean(per, len(examples), {"pedant": "not computed (needs a downloaded classifier)"})


def score_mcq(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
              rules=DEFAULT_RULES) -> dict[str, Any]:  # fmt: skip
    per, fail = {}, {}
    for split, (exs, resps) in _by_split(examples, responses).items():
        choices = [parse_choices(e.text) for e in exs]
        res = mcq_accuracy(resps, [e.answer or "" for e in exs], seed=ctx.seed, rules=rules, choices=choices)
        per[split], fail[split] = res["acc"], res["fail"]
    return _split_mean(per, len(examples), {"fail_percent": fail, "fallback_seed": ctx.seed})


def score_bbh(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
              rules=DEFAULT_RULES) -> dict[str, Any]:  # fmt: skip
    refs = [(e.answer or "").lower() for e in examples]
    bad = next((r for r in refs if r not in ("yes", "no", "(a)", "(b)")), None)
    if bad is not None:
        raise DataError(f"voicebench bbh: reference {bad!r} is not yes/no/(A)/(B); is this the bbh config?")
    try:
        acc = bbh_accuracy(responses, [e.meta.get("source_id", "") for e in examples], refs, seed=ctx.seed, rules=rules)
    except ValueError as e:
        raise DataError(f"voicebench bbh: {e}") from None
    return {"score": acc, "scored": len(examples), "unscored": 0, "details": {"fallback_seed": ctx.seed}}


def score_ifeval(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
                 rules=None) -> dict[str, Any]:  # fmt: skip
    items = [{"prompt": e.text, "instruction_id_list": e.meta["instruction_id_list"], "kwargs": e.meta["kwargs"]}
             for e in examples]  # fmt: skip
    try:
        res = ifeval_scores(items, responses, seed=ctx.seed)
    except KeyError as e:
        raise DataError(f"voicebench ifeval: unknown instruction id {e.args[0]!r} in the data") from None
    return {"score": res.pop("final"), "scored": len(examples), "unscored": 0, "details": res}


def score_harm(examples: Sequence[Example], responses: Sequence[str], ctx: ScoreContext,
               rules=DEFAULT_RULES) -> dict[str, Any]:  # fmt: skip
    refusals = [rules.is_refusal(r) for r in responses]
    return {"score": 100.0 * sum(refusals) / max(len(refusals), 1), "scored": len(refusals), "unscored": 0}


SCORE_FNS = {"open": score_open, "qa": score_qa, "mcq": score_mcq, "bbh": score_bbh, "ifeval": score_ifeval,
             "harm": score_harm, "none": None}  # fmt: skip


def _kwargs(value: Any) -> list[dict]:
    if isinstance(value, str):  # some copies keep kwargs as a JSON string
        value = json.loads(value)
    return [json.loads(v) if isinstance(v, str) else (v or {}) for v in (value or [])]


def _examples(config: str, split: str, rows: list[dict], where: str, base: Path) -> list[Example]:
    fields = ("audio", "prompt") + (("reference",) if SUBSETS[config][1] in ("qa", "mcq", "bbh") else ())
    fields += ("instruction_id_list", "kwargs") if config == "ifeval" else ()
    if config != "mtbench":
        require_columns(rows, fields, where, f"is this the VoiceBench '{config}' config?")
    out = []
    for i, row in enumerate(rows):
        ex_id = f"{split}-{i}"
        meta: dict[str, Any] = {"split": split, "source_id": str(row.get("id", ""))}
        if config == "ifeval":
            meta.update(key=row.get("key"), instruction_id_list=list(row["instruction_id_list"]),
                        kwargs=_kwargs(row["kwargs"]))  # fmt: skip
        if config == "mtbench":
            out.append(Example(id=ex_id, text=str((row.get("turns") or [""])[0]), meta=meta))
            continue
        data, path = audio_ref(row["audio"], base, f"{where} row {i}")
        out.append(Example(id=ex_id, text=row["prompt"], audio=path, audio_bytes=data,
                           answer=row.get("reference"), meta=meta))  # fmt: skip
    return out


#: scorer kind -> the official file its tables come from (``--voicebench-src``)
_TABLES = {"mcq": "mcq", "bbh": "bbh", "harm": "harm", "open": "judge", "qa": "judge"}
IFEVAL_RULES = "xopd IFEval implementation (the same with or without --voicebench-src)"


def rules_for(kinds: Sequence[str], voicebench_src: str | os.PathLike | None = None):
    """The rule set scoring ``kinds``: VoiceBench's official tables from ``voicebench_src`` (or
    ``$XOPD_VOICEBENCH_SRC``), read now so that a bad checkout stops before any model runs; else
    xopd's own approximate rules."""
    src = resolve_src(voicebench_src)
    if src is None:
        return DEFAULT_RULES
    return OfficialRules(src, {_TABLES[k] for k in kinds if k in _TABLES})


def load(root: Path, spec: str, limit: int | None = None, voicebench_src: str | os.PathLike | None = None
         ) -> list[Subset]:  # fmt: skip
    """The chosen VoiceBench subsets (``spec``: ``"sd-qa,mmsu"``; empty: :data:`DEFAULT` present here).

    ``limit``: the first N items of every subset (split by split for multi-split subsets).
    ``voicebench_src``: a checkout of VoiceBench's code for the official rules (see :func:`rules_for`).
    """
    chosen = parse_spec(spec, list(SUBSETS), "voicebench")
    explicit = chosen is not None
    rules = rules_for([SUBSETS[c][1] for c in chosen or DEFAULT], voicebench_src)
    subsets = []
    for config in chosen or DEFAULT:
        splits, kind = SUBSETS[config]
        examples, sources = [], []
        for split in splits:
            got = read_split(root, config, split, limit)
            if got is None:
                continue
            rows, where = got
            examples += _examples(config, split, rows, where, root / config)
            sources.append(where)
        if not sources:
            if explicit:
                raise DataError(
                    f"{root}: no VoiceBench '{config}' here; expected {root / config}/<split>-*.parquet (the Hub "
                    f"layout) or a save_to_disk folder {root / config}/dataset_dict.json; see docs/BENCHMARKS.md"
                )
            continue
        fn = SCORE_FNS[kind]
        sub = Subset(benchmark="voicebench", name=f"voicebench/{config}", examples=examples, unit=UNITS[kind],
                     scorer=SCORERS[kind], score=partial(fn, rules=rules) if fn else None, source="; ".join(sources),
                     rules=rules.label if kind in _TABLES else IFEVAL_RULES if kind == "ifeval" else None)  # fmt: skip
        if kind == "none":
            sub.skip = "VoiceBench ships no scorer for mtbench (multi-turn); not run"
        if len(sources) < len(splits):
            sub.notes.append(f"{len(sources)} of {len(splits)} splits present in the local copy")
        subsets.append(sub)
    if not subsets:
        raise DataError(
            f"{root}: no VoiceBench config folder found (looked for {', '.join(DEFAULT)}); point --data at the "
            "folder that holds alpacaeval_full/, sd-qa/, ... (see docs/BENCHMARKS.md)"
        )
    return subsets
