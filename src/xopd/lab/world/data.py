"""Mini-world data stage: generate task items per split, speak them with espeak-ng, write manifests.

Manifests are ordinary xopd JSONL manifests (the same format a user brings), so every later stage
reads the mini world exactly like real data. For ``audio_only`` and ``asr`` rows the transcript T is
what was *said* and the row's ``instruction`` (the question that accompanies the audio) goes in the
metadata: the S prompt is audio + instruction, the T prompt is transcript + instruction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from xopd.data.manifest import Example
from xopd.data.tts import EspeakEngine, SynthJob, synthesize_many
from xopd.lab.world.tasks import WorldItem, make_split
from xopd.utils.io import atomic_write_text


@dataclass
class WorldSizes:
    """Items per task and split. ``train`` problems are unique within the split too."""

    train: dict[str, int] = field(
        default_factory=lambda: {"reasoning": 600, "instruct": 600, "audio_only": 500, "asr": 500}
    )
    test: dict[str, int] = field(
        default_factory=lambda: {"reasoning": 100, "instruct": 100, "audio_only": 100, "asr": 60}
    )
    heldout: dict[str, int] = field(
        default_factory=lambda: {"reasoning": 100, "instruct": 100, "audio_only": 100, "asr": 60}
    )
    unseen_template: dict[str, int] = field(default_factory=lambda: {"reasoning": 60, "instruct": 60})
    #: X-OPD's prompt pool: more spoken questions from the training distribution, disjoint from ``train``
    #: (X-OPD needs prompts, not references, so it is not limited to the labelled SFT set; a student that
    #: memorised its SFT questions gets no on-policy signal from them).
    prompts: dict[str, int] = field(default_factory=lambda: {"reasoning": 600, "instruct": 600})

    @classmethod
    def quick(cls) -> WorldSizes:
        return cls(
            train={"reasoning": 12, "instruct": 12, "audio_only": 8, "asr": 8},
            test={"reasoning": 4, "instruct": 4, "audio_only": 4, "asr": 4},
            heldout={"reasoning": 4, "instruct": 4, "audio_only": 4, "asr": 4},
            unseen_template={"reasoning": 2, "instruct": 2},
            prompts={"reasoning": 4, "instruct": 4},
        )

    def of(self, split: str) -> dict[str, int]:
        return getattr(self, split)


SPLITS = ("train", "test", "heldout", "unseen_template", "prompts")


def split_items(split: str, sizes: WorldSizes, seed: int) -> list[WorldItem]:
    """The items of one split. ``prompts`` continues the ``train`` generator past the items ``train``
    took (same distribution, voices and noise; never the same problem), re-labelled as split "prompts"."""
    if split != "prompts":
        return make_split(split, sizes.of(split), seed=seed, unique=True)
    out: list[WorldItem] = []
    for task, n in sizes.prompts.items():
        skip = sizes.train.get(task, 0)
        items = make_split("train", {task: skip + n}, seed=seed, unique=True)[skip:]
        for i, it in enumerate(items):
            out.append(replace(it, id=f"prompts-{task}-{i:05d}", split="prompts"))
    return out


def item_to_row(item: WorldItem, audio_rel: str) -> dict:
    """Manifest row for one item (see module docstring for S/T of audio_only/asr)."""
    spoken_is_prompt = item.task in ("reasoning", "instruct")
    row = {
        "id": item.id,
        "audio": audio_rel,
        "text": item.text if spoken_is_prompt else item.speak,
        "task": item.task,
        "answer": item.answer,
        "reference": item.reference,
        "voice": item.voice.name,
        "rate": item.voice.rate,
        "pitch": item.voice.pitch,
        "noise_snr_db": item.noise_snr_db,
        "template": item.template,
        "split": item.split,
    }
    if not spoken_is_prompt:
        row["instruction"] = item.text
    return row


def build_world_data(
    root: str | os.PathLike,
    sizes: WorldSizes,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write ``root/{split}.jsonl`` manifests with audio under ``root/audio`` (content-keyed cache).

    Returns ``{split: manifest path}``. Re-running reuses every cached utterance.
    """
    root = Path(root)
    audio_root = root / "audio"
    engine = EspeakEngine()
    workers = workers or min(2, os.cpu_count() or 1)
    out = {}
    for split in SPLITS:
        items = split_items(split, sizes, seed)
        jobs = [SynthJob(it.speak, it.voice, it.noise_snr_db, it.seed) for it in items]
        paths = synthesize_many(
            engine, jobs, audio_root, progress=progress, desc=f"tts {split}", workers=workers
        )
        rows = [item_to_row(it, os.path.relpath(p, root)) for it, p in zip(items, paths, strict=True)]
        manifest = root / f"{split}.jsonl"
        atomic_write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
        out[split] = manifest
    return out


def by_task(examples: list[Example], *tasks: str) -> list[Example]:
    return [e for e in examples if e.task in tasks]


def prompt_asr_rows(examples: list[Example]) -> list[Example]:
    """ASR rows made from spoken prompts: "Transcribe the audio." over the same clip, the normalised
    transcript as the target. Speech LLMs learn to hear from ASR on all the speech they have; here
    that includes the spoken questions, so stage 1 hears numbers up to 50 and every template word
    (the ASR sentences alone cover neither). Only the speech is used, never an answer."""
    from xopd.lab.world.tasks import ASR_INSTRUCTION
    from xopd.metrics import normalize_text

    out = []
    for e in examples:
        target = normalize_text(e.text)
        meta = {**e.meta, "instruction": ASR_INSTRUCTION}
        out.append(replace(e, id=f"{e.id}-asr", task="asr", answer=target, reference=target, meta=meta))
    return out


def text_only_rows(examples: list[Example]) -> list[Example]:
    """Text-only copies (``meta.text_only``: trained on T even in a speech SFT) of the given rows."""
    return [replace(e, id=f"{e.id}-text", meta={**e.meta, "text_only": True}) for e in examples]
