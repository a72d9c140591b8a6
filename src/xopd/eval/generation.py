"""Generation-based evaluation: answer every prompt (greedy), score it, aggregate per benchmark.

The paper's protocol (docs/DESIGN.md section 4): each benchmark is run on the student twice, from speech
(S) and from text (T); the text teacher runs on T. Avg. Drop compares each against the teacher.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from xopd.algos.base import make_prompts
from xopd.data.manifest import Example
from xopd.generation import release_memory, sample
from xopd.metrics import score_item, wer
from xopd.models.base import PolicyModel


@torch.no_grad()
def generate(
    model: PolicyModel,
    examples: Sequence[Example],
    view: str,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
    prompt_fn: Callable | None = None,
) -> list[str]:
    """Greedy responses (decoded, special tokens dropped) for every example in ``view``.

    ``prompt_fn(example, view) -> Prompt`` builds each prompt (default: the manifest rows' S/T
    prompt, :func:`xopd.algos.base.make_prompt`; benchmarks pass theirs for multi-turn rows).
    """
    was_training = model.training
    model.eval()
    texts: list[str] = []
    # sort by prompt length so batches pad little; restore order at the end
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    it = range(0, len(order), batch_size)
    for i in tqdm(it, desc=desc, disable=not progress, leave=False):
        idx = order[i : i + batch_size]
        chunk = [examples[j] for j in idx]
        prompts = make_prompts(chunk, view) if prompt_fn is None else [prompt_fn(e, view) for e in chunk]
        batch = model.embed_prompts(prompts)
        ro = sample(model, batch, 1, max_new_tokens, temperature=0.0)
        for row in range(len(chunk)):
            ids = ro.ids[row][ro.mask[row]].tolist()
            texts.append(model.tokenizer.decode(ids, skip_special_tokens=True).strip())
        del batch, ro
        release_memory()  # a decode backend may hand freed memory back (the CPU kit trims the heap)
    model.train(was_training)
    out = [""] * len(examples)
    for pos, j in enumerate(order):
        out[j] = texts[pos]
    return out


Scorer = Callable[[str, str, str], float]


def score_responses(examples: Sequence[Example], responses: Sequence[str],
                    scorer: Scorer = score_item) -> dict[str, float]:
    """Per-task score: mean accuracy for answerable tasks, corpus WER for ``asr`` (key ``asr_wer``)."""
    acc: dict[str, list[float]] = defaultdict(list)
    asr_refs, asr_hyps = [], []
    for ex, resp in zip(examples, responses, strict=True):
        task = ex.task or "default"
        if task == "asr":
            asr_refs.append(ex.answer or ex.text)
            asr_hyps.append(resp)
        elif ex.answer is not None:
            acc[task].append(scorer(task, resp, ex.answer))
    out = {task: sum(v) / len(v) for task, v in acc.items() if v}
    if asr_refs:
        out["asr_wer"] = wer(asr_refs, asr_hyps)
    return out


def avg_drop(base: dict[str, float], scores: dict[str, float], benches: Sequence[str]) -> float:
    """Avg. Drop in percent: mean over benchmarks of (base - x) / base (docs/DESIGN.md section 4).

    Benchmarks where the base score is 0 are left out (the ratio is undefined)."""
    terms = [(base[b] - scores[b]) / base[b] for b in benches if b in base and b in scores and base[b] > 0]
    return 100.0 * sum(terms) / len(terms) if terms else float("nan")


def evaluate_views(model: PolicyModel, examples: Sequence[Example], views: Sequence[str] = ("S", "T"),
                   max_new_tokens: int = 64, batch_size: int = 32, progress: bool = False,
                   name: str = "model") -> dict[str, dict[str, float]]:
    """``{view: {task: score}}`` for the given views (T-only for text models)."""
    res = {}
    for v in views:
        usable = [e for e in examples if v == "T" or e.audio or e.waveform is not None]
        resp = generate(model, usable, v, max_new_tokens, batch_size, progress, desc=f"{name} {v}")
        res[v] = score_responses(usable, resp)
    return res
