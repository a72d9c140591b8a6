"""The mini world's word-level tokenizer: one token per word, per whole number and per punctuation mark.

Why word level: the calibration in issue 3 found that a tiny LM learns multi-step arithmetic only
when every whole number is a single token (addition becomes a lookup between ~50 symbols; digit
tokens fell far behind number tokens, docs/BENCHMARKS.md). The task vocabulary is closed (every word
comes from a template in :mod:`xopd.lab.world.tasks`), so a word-level vocabulary built from
:func:`~xopd.lab.world.tasks.vocabulary_corpus` covers every split, held-out templates included, with
no unknown token. Spelled words (``"c a t"``) are single-letter tokens.

Case policy: a lower-case normaliser (``"Tom"`` and ``"tom"`` are one token, halving what the
model must learn). Scoring is case-insensitive (:func:`~xopd.metrics.normalize_answer`,
``normalize_text``), so decoded text scores exactly like the original. Decoding joins words with
spaces and removes the space before ``. , ? ! : ;`` (``"5 plus 3 is 8. the answer is 8."``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache

from xopd.errors import ModelError

__all__ = [
    "AUDIO", "EOS", "PAD", "PUNCTUATION", "SPECIAL_TOKENS", "UNK", "WORLD_CHAT_TEMPLATE",
    "build_world_tokenizer", "world_vocabulary",
]  # fmt: skip

PAD, EOS, UNK, AUDIO = "<|pad|>", "<|eos|>", "<|unk|>", "<|audio|>"
SPECIAL_TOKENS = [PAD, EOS, UNK, AUDIO, "<|user|>", "<|assistant|>", "<|system|>"]
PUNCTUATION = ".,?!:;"

#: One user turn (after an optional system turn) and the assistant prompt. Assistant turns close with
#: eos, so SFT targets rendered through it teach the model to stop. Whitespace (the newlines) is not
#: a token here; it only keeps the rendered text readable.
WORLD_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|eos|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    # split on whitespace, then isolate every punctuation char ("8." -> "8", "."; "list:" -> "list", ":")
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def _decoder():
    from tokenizers import decoders

    # WordPiece (no "##" pieces here) puts a space before every token but the first; the Replace steps
    # then glue punctuation to the word before it. Both act per token, so this is exact and serialisable.
    return decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False)] + [decoders.Replace(f" {p}", p) for p in PUNCTUATION]
    )


def world_vocabulary(extra_texts: Iterable[str] = ()) -> list[str]:
    """Sorted word list (specials excluded): every piece of the task corpus, numbers 0..100, letters.

    Built by running the real normaliser + pre-tokenizer over :func:`vocabulary_corpus` (all
    templates, seen and unseen) and ``extra_texts``, so the vocabulary is exactly what encoding sees.
    """
    from tokenizers import normalizers

    from xopd.lab.world.tasks import vocabulary_corpus

    norm, pre = normalizers.Lowercase(), _pre_tokenizer()
    words: set[str] = {str(i) for i in range(101)} | set("abcdefghijklmnopqrstuvwxyz") | set(PUNCTUATION)
    for line in [*vocabulary_corpus(), *extra_texts]:
        words.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    return sorted(words - set(SPECIAL_TOKENS))


@lru_cache(maxsize=1)
def _default_words() -> tuple[str, ...]:
    return tuple(world_vocabulary(_generated_texts()))


def _generated_texts(n: int = 200) -> list[str]:
    """Prompts, spoken words and references of a sample of every task/split: a safety net in case
    a generator produces a word that :func:`vocabulary_corpus` forgot."""
    from xopd.lab.world.tasks import SPLITS, TASKS, generate_items

    out: list[str] = []
    for split in SPLITS:
        for task in TASKS:
            for it in generate_items(task, split, n, seed=0, unique=False):
                out += [it.text, it.speak, it.reference, it.answer]
    return out


def build_world_tokenizer(out_dir: str | os.PathLike | None = None):
    """The word-level ``PreTrainedTokenizerFast`` of the mini world (saved to ``out_dir`` if given).

    Special tokens take ids 0-6 in :data:`SPECIAL_TOKENS` order (pad 0, eos 1, unk 2, audio 3,
    user/assistant/system 4-6); words follow in sorted order, so the vocabulary is deterministic.
    Size models with ``len(tok)``.
    """
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    words = _default_words()
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = _decoder()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = WORLD_CHAT_TEMPLATE
    tok.padding_side = "left"
    if len(tok) != len(vocab):  # pragma: no cover - would mean a special token was added twice
        raise ModelError(f"world tokenizer: {len(tok)} tokens for a vocabulary of {len(vocab)}")
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok
