"""Number-aware text normalisation for comparing what was said with what was meant.

Whisper writes "5", "1,000", "3.5", "2nd", "10%", "$3" where a prompt may say "five", "one thousand",
"three point five", "second", "ten percent", "three dollars" (and vice versa). Spelling numbers out
on both sides before WER makes such pairs equal instead of counting them as recognition errors,
which matters for the paper's 5 % back-check threshold on arithmetic prompts.
"""

from __future__ import annotations

import re

from xopd.metrics import normalize_text

__all__ = ["normalize_for_wer", "number_to_words", "spell_numbers"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
        "nine": "ninth", "twelve": "twelfth"}  # fmt: skip


def number_to_words(n: int) -> str:
    """Cardinal in words, no "and", no hyphens: ``123`` -> ``"one hundred twenty three"``."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for value, word in _SCALES:
        if n >= value:
            rest = n % value
            return (
                number_to_words(n // value) + f" {word}" + ("" if rest == 0 else " " + number_to_words(rest))
            )
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORD:
        last = _ORD[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


_NUM_RE = re.compile(
    r"(?P<cur>[$£€])?(?P<sign>-(?=\d))?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
    r"(?P<ord>st|nd|rd|th)?(?P<pct>\s?%)?"
)
_CURRENCY = {"$": "dollars", "£": "pounds", "€": "euros"}


def spell_numbers(text: str) -> str:
    """Write every number in ``text`` in words (digits, thousands commas, decimals, signs, ordinals,
    percent and $/£/€ amounts); numbers over 15 digits are left as they are."""

    def one(m: re.Match) -> str:
        if len(m.group("int").replace(",", "")) > 15:
            return m.group(0)
        words = number_to_words(int(m.group("int").replace(",", "")))
        if m.group("sign"):
            words = "minus " + words
        if m.group("frac"):
            words += " point " + " ".join(_ONES[int(d)] for d in m.group("frac")[1:])
        if m.group("ord") and not m.group("frac"):
            words = _ordinal(words)
        if m.group("pct"):
            words += " percent"
        if m.group("cur"):
            words += " " + _CURRENCY[m.group("cur")]
        return f" {words} "

    spelled = re.sub(r"\s+", " ", _NUM_RE.sub(one, text)).strip()
    return re.sub(r" ([,.;:!?])", r"\1", spelled)


def normalize_for_wer(text: str) -> str:
    """Numbers in words, then :func:`xopd.metrics.normalize_text` (case, punctuation)."""
    return normalize_text(spell_numbers(text.replace("-", " ")))
