"""The mini world: seeded speech/text tasks with verifiable answers (see :mod:`xopd.lab.world.tasks`)."""

from xopd.lab.world.tasks import (
    SPLITS,
    TASKS,
    WorldItem,
    all_template_words,
    generate_items,
    make_split,
    vocabulary_corpus,
)
from xopd.metrics import extract_answer, normalize_answer, normalize_text, score_item, wer

__all__ = [
    "SPLITS",
    "TASKS",
    "WorldItem",
    "all_template_words",
    "extract_answer",
    "generate_items",
    "make_split",
    "normalize_answer",
    "normalize_text",
    "score_item",
    "vocabulary_corpus",
    "wer",
]
