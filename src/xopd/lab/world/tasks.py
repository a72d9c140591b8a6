"""Seeded task generators for the mini world (the paper's benchmarks in miniature).

Four tasks, each item a text prompt T, the words actually spoken for S, a voice and a verifiable
answer:

* ``reasoning`` (BIG Bench Audio's role): 2-3 step +/- word problems, every number in 0..50; the
  reference is a short chain of thought ending in ``The answer is N.``
* ``instruct`` (VoiceBench's role): repeat a word n times, reverse / count a list, compare two
  numbers, first / last word of a list; the reference is the bare exact answer.
* ``audio_only`` (MMAR's role, the forgetting probe): ``text`` is the *instruction that
  accompanies the audio* ("Is the speaker talking fast or slow? ..."); ``speak`` is an unrelated
  neutral sentence. The S prompt is audio(``speak``) + ``text``; the answer comes from the voice
  (rate, pitch range, gender) or the noise, so a text-only teacher can only guess. The paper's
  "which of two voices" becomes "man or woman": a single-audio prompt has no enrolment clip, and
  a fixed "voice A" would be undefined for held-out voices.
* ``asr``: ``text`` is "Transcribe the audio.", ``speak`` a sentence, ``answer`` its normalised
  transcript (scored by WER).

Splits: ``train`` and ``test`` use train voices/noise; ``heldout`` uses espeak-ng variants and
noise SNRs that never occur in train; ``unseen_template`` uses train voices but phrasings/frames
never used elsewhere (reported separately). Problem instances are hash-partitioned by their
normalised content (70/15/15 train/test/heldout) so none repeats across splits; ASR and
audio_only partition on the spoken sentence so a test sentence is never heard in training.
Everything is a pure function of ``seed`` (``random.Random`` seeded with strings is stable).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass
from string import ascii_lowercase

from xopd.data.tts import Voice
from xopd.errors import DataError
from xopd.metrics import normalize_answer, normalize_text

__all__ = [
    "HELDOUT_SNRS", "HELDOUT_VARIANTS", "MAX_NUMBER", "SPLITS", "TASKS", "TRAIN_SNRS", "TRAIN_VARIANTS",
    "WorldItem", "all_template_words", "generate_items", "make_split", "split_of", "vocabulary_corpus",
    "voice_gender",
]  # fmt: skip

TASKS = ("reasoning", "instruct", "audio_only", "asr")
#: the two benchmarks of the S/T table (the others probe forgetting)
BENCHES = ("reasoning", "instruct")
SPLITS = ("train", "test", "heldout", "unseen_template")
MAX_NUMBER = 50

# Voices: espeak-ng bases x variants. Variants (and noise SNRs) are disjoint between train and held-out.
BASE_VOICES = ("en-us", "en")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m8", "f1", "f2", "f3")
HELDOUT_VARIANTS = ("m5", "m6", "m7", "f4", "f5")
TRAIN_SNRS = (10.0, 20.0, 30.0)
HELDOUT_SNRS = (5.0, 15.0, 25.0)
NOISE_PROB = {"train": 0.3, "test": 0.3, "heldout": 0.5, "unseen_template": 0.3}
RATE_NORMAL, RATE_SLOW, RATE_FAST = (140, 210), (90, 120), (240, 290)
# "low" = male at pitch <= 25, "high" = female at pitch >= 65: their F0 ranges do not overlap, so the
# labels are unambiguous in absolute terms (espeak's measured F0 per pitch: docs/BENCHMARKS.md).
PITCH_NORMAL, PITCH_LOW, PITCH_HIGH, PITCH_GENDER = (25, 75), (0, 25), (65, 99), (30, 70)
_BUCKETS = {"train": (0, 700), "test": (700, 850), "heldout": (850, 1000)}

NAMES = ("Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Jack", "Emma", "Leo", "Zoe")
# Reasoning stories: (start, up-steps, down-steps, question, objects). {w}=who {n}=number {o}=object.
_STORIES_SEEN = {
    "fruit": ("{w} has {n} {o}.", ("{w} buys {n} more.", "{w} picks {n} more."),
              ("{w} eats {n}.", "{w} gives {n} to a friend."),
              "How many {o} does {w} have now?", ("apples", "oranges", "pears", "plums")),
    "toys": ("{w} has {n} {o}.", ("{w} finds {n} more.", "{w} wins {n} more."),
             ("{w} loses {n}.", "{w} gives away {n}."),
             "How many {o} does {w} have now?", ("marbles", "cards", "stickers", "toys")),
    "bus": ("There are {n} people on a bus.", ("At a stop, {n} people get on.", "Then {n} more people get on."),
            ("At a stop, {n} people get off.", "Then {n} people get off."),
            "How many people are on the bus now?", ("people",)),
    "shelf": ("There are {n} books on a shelf.", ("{w} puts {n} more books on it.",),
              ("{w} takes {n} books away.",), "How many books are on the shelf now?", ("books",)),
    "money": ("{w} has {n} dollars.", ("{w} earns {n} dollars.", "{w} gets {n} dollars as a gift."),
              ("{w} spends {n} dollars.",), "How many dollars does {w} have now?", ("dollars",)),
    "birds": ("There are {n} birds in a tree.", ("{n} more birds land in the tree.",),
              ("{n} birds fly away.",), "How many birds are in the tree now?", ("birds",)),
}  # fmt: skip
_STORIES_UNSEEN = {
    "cookies": ("A jar holds {n} cookies.", ("{w} bakes {n} more cookies and adds them.",),
                ("The children eat {n} cookies.",), "How many cookies are in the jar now?", ("cookies",)),
    "parking": ("A parking lot has {n} cars.", ("{n} more cars arrive.",), ("{n} cars leave.",),
                "How many cars are in the lot now?", ("cars",)),
    "farm": ("A farmer has {n} sheep.", ("The farmer buys {n} more sheep.",), ("{n} sheep run away.",),
             "How many sheep does the farmer have now?", ("sheep",)),
}  # fmt: skip

WORDS = ("cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "book", "cake", "milk", "star",
         "moon", "rain", "frog", "lamp", "ship", "door", "hat", "cup", "pen", "box", "egg", "bag",
         "key", "bell", "coat", "duck", "goat", "ring", "rose", "sock", "wolf", "bear", "corn", "desk",
         "drum", "kite", "leaf", "nest", "milk", "road", "sand", "wind", "gold", "fire", "ice", "map")  # fmt: skip
WORDS = tuple(dict.fromkeys(WORDS))
# Instruct kinds: (seen templates, unseen templates). {w} word, {n} count, {l} list, {a}/{b} numbers.
_INSTRUCT = {
    "repeat": (("Repeat the word {w} {n} times.", "Say the word {w} {n} times."), ("Write {w} exactly {n} times.",)),
    "reverse": (("Say these words in reverse order: {l}.", "Reverse the order of these words: {l}."),
                ("Read this list of words backwards: {l}.",)),
    "count": (("How many words are in this list: {l}?", "Count the words in this list: {l}."),
              ("Tell me the number of words in this list: {l}.",)),
    "compare": (("Is {a} larger than {b}? Answer yes or no.", "Which number is larger, {a} or {b}? Answer with one number."),
                ("Is {a} bigger than {b}? Reply yes or no.",)),
    "first": (("What is the first word in this list: {l}? Answer with one word.",),
              ("Which word comes first in this list: {l}? Reply with one word.",)),
    "last": (("What is the last word in this list: {l}? Answer with one word.",),
             ("Which word comes last in this list: {l}? Reply with one word.",)),
}  # fmt: skip
_AUDIO_Q = {
    "speed": (("Is the speaker talking fast or slow? Answer with one word.",),
              ("How fast is this person speaking, fast or slow?",), ("fast", "slow")),
    "pitch": (("Is the voice high or low? Answer with one word.",),
              ("Does the speaker have a high voice or a low voice?",), ("high", "low")),
    "noise": (("Is there background noise? Answer yes or no.",),
              ("Can you hear any noise behind the voice? Reply yes or no.",), ("yes", "no")),
    "gender": (("Is the speaker a man or a woman? Answer with one word.",),
               ("Does this voice belong to a man or a woman?",), ("man", "woman")),
}  # fmt: skip
ASR_INSTRUCTION = "Transcribe the audio."
_SUBJ = ("The old man", "A young girl", "My brother", "The teacher", "Our neighbor", "The little boy",
         "My sister", "The farmer")  # fmt: skip
_VERB = ("found", "carried", "painted", "washed", "dropped", "bought", "opened", "cleaned", "moved", "sold")
_OBJ = ("a red box", "the green door", "a heavy bag", "an old chair", "the blue cup", "a small basket",
        "the wooden table", "a yellow kite", "the broken lamp", "a new coat")  # fmt: skip
_PLACE = ("in the garden", "near the river", "at the market", "in the kitchen", "by the window",
          "on the hill", "after lunch", "before dinner", "this morning", "last night")  # fmt: skip
_ANIMALS = ("birds", "ducks", "cows", "sheep", "horses", "dogs", "cats", "goats", "frogs")
_SENT_SEEN = ("{s} {v} {o} {p}.", "{w} saw {n} {a} {p}.")
_SENT_UNSEEN = ("Yesterday {w} and {x} walked {l}.", "{w} wants to buy {o} {p}.")


@dataclass
class WorldItem:
    """One mini-world example. ``text`` is T (for audio_only/asr: the instruction sent with the audio);
    ``speak`` is what the TTS says for S; ``seed`` seeds the additive-noise draw."""

    id: str
    task: str
    text: str
    answer: str
    reference: str
    speak: str
    voice: Voice
    noise_snr_db: float | None
    split: str
    template: str
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict (voice as a nested dict); inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorldItem:
        d = dict(d)
        d["voice"] = Voice(**d["voice"])
        return cls(**d)


def voice_gender(voice: Voice) -> str | None:
    """``"man"``/``"woman"`` for espeak-ng ``m*``/``f*`` variants, None otherwise."""
    v = voice.variant or ""
    return {"m": "man", "f": "woman"}.get(v[:1]) if v[1:].isdigit() else None


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest()[:12], 16)


def split_of(key: str) -> str:
    """Which of train/test/heldout owns a normalised instance key (70/15/15 hash partition)."""
    b = _h(key) % 1000
    return next(s for s, (lo, hi) in _BUCKETS.items() if lo <= b < hi)


def _voice(
    rng: random.Random,
    split: str,
    *,
    rate: tuple = RATE_NORMAL,
    pitch: tuple = PITCH_NORMAL,
    gender: str | None = None,
) -> Voice:
    variants = HELDOUT_VARIANTS if split == "heldout" else TRAIN_VARIANTS
    if gender is not None:
        variants = tuple(v for v in variants if v[0] == gender[0])
    name = f"{rng.choice(BASE_VOICES)}+{rng.choice(variants)}"
    return Voice(name, rng.randint(*rate), rng.randint(*pitch))


def _noise(rng: random.Random, split: str, force: bool | None = None) -> float | None:
    on = rng.random() < NOISE_PROB[split] if force is None else force
    return rng.choice(HELDOUT_SNRS if split == "heldout" else TRAIN_SNRS) if on else None


def _reasoning(rng: random.Random, unseen: bool) -> tuple[str, str, str, str]:
    stories = _STORIES_UNSEEN if unseen else _STORIES_SEEN
    tid = rng.choice(sorted(stories))
    start, ups, downs, question, objs = stories[tid]
    who, obj = rng.choice(NAMES), rng.choice(objs)
    cur = rng.randint(3, 30)
    sents, cot = [start.format(w=who, n=cur, o=obj)], []
    for _ in range(rng.choice((2, 3))):
        can_up, can_down = cur <= MAX_NUMBER - 2, cur >= 3  # steps of >= 2 keep "1 birds" out
        up = can_up and (not can_down or rng.random() < 0.5)
        k = rng.randint(2, min(20, MAX_NUMBER - cur)) if up else rng.randint(2, min(20, cur - 1))
        new = cur + k if up else cur - k
        sents.append(rng.choice(ups if up else downs).format(w=who, n=k, o=obj))
        cot.append(f"{cur} {'plus' if up else 'minus'} {k} is {new}.")
        cur = new
    sents.append(question.format(w=who, o=obj))
    return " ".join(sents), str(cur), " ".join(cot) + f" The answer is {cur}.", f"reasoning/{tid}"


def _instruct(rng: random.Random, unseen: bool) -> tuple[str, str, str, str]:
    kind = rng.choice(sorted(_INSTRUCT))
    pool = _INSTRUCT[kind][1 if unseen else 0]
    ti = rng.randrange(len(pool))
    # Every kind is a copy/count/compare over what the prompt says. Spelling and letter reversal were
    # dropped: with whole-word tokens and split-disjoint instances a test word's letters are a fact
    # the teacher never saw in that phrasing (it never learnt them), and sorting 3 numbers stayed far
    # from solved (docs/BENCHMARKS.md); neither is a modality gap, they only cap the teacher.
    tmpl, w, n = pool[ti], rng.choice(WORDS), rng.randint(2, 4)
    a, b = rng.sample(range(1, MAX_NUMBER + 1), 2)
    words = rng.sample(WORDS, rng.randint(3, 5) if kind == "reverse" else rng.randint(3, 7))
    lst = ", ".join(words)
    answer = {
        "repeat": " ".join([w] * n),
        "reverse": ", ".join(reversed(words)),
        "count": str(len(words)),
        "compare": ("yes" if a > b else "no") if "yes or no" in tmpl else str(max(a, b)),
        "first": words[0],
        "last": words[-1],
    }[kind]
    text = tmpl.format(w=w, n=n, l=lst, a=a, b=b)
    return text, answer, answer, f"instruct/{kind}/{'u' if unseen else 's'}{ti}"


def _sentence(rng: random.Random, unseen: bool) -> tuple[str, str]:
    frames = _SENT_UNSEEN if unseen else _SENT_SEEN
    fi = rng.randrange(len(frames))
    w, x = rng.sample(NAMES, 2)
    s = frames[fi].format(s=rng.choice(_SUBJ), v=rng.choice(_VERB), o=rng.choice(_OBJ), p=rng.choice(_PLACE),
                          l=rng.choice(_PLACE[:6]), w=w, x=x, n=rng.randint(2, MAX_NUMBER), a=rng.choice(_ANIMALS))  # fmt: skip
    return s, f"{'u' if unseen else 's'}{fi}"


def _one(task: str, split: str, rng: random.Random) -> tuple[WorldItem, str]:
    """One item (id/seed filled later) and its partition key."""
    unseen = split == "unseen_template"
    voice, noise = _voice(rng, split), _noise(rng, split)
    if task == "reasoning" or task == "instruct":
        text, answer, ref, tmpl = (_reasoning if task == "reasoning" else _instruct)(rng, unseen)
        key, speak = f"{task}|{normalize_answer(text)}|{answer}", text
    elif task == "asr":
        speak, fid = _sentence(rng, unseen)
        text, answer, tmpl = ASR_INSTRUCTION, normalize_text(speak), f"asr/{fid}"
        ref, key = answer, f"sentence|{normalize_text(speak)}"
    elif task == "audio_only":
        kind = rng.choice(sorted(_AUDIO_Q))
        seen_q, unseen_q, answers = _AUDIO_Q[kind]
        text, answer = rng.choice(unseen_q if unseen else seen_q), rng.choice(answers)
        speak, fid = _sentence(rng, unseen)
        if kind == "speed":
            voice = _voice(rng, split, rate=RATE_FAST if answer == "fast" else RATE_SLOW)
        elif kind == "pitch":
            hi = answer == "high"
            voice = _voice(rng, split, pitch=PITCH_HIGH if hi else PITCH_LOW, gender="f" if hi else "m")
        elif kind == "gender":
            voice = _voice(rng, split, pitch=PITCH_GENDER, gender="m" if answer == "man" else "f")
        else:
            noise = _noise(rng, split, force=answer == "yes")
        ref, tmpl, key = answer, f"audio_only/{kind}/{fid}", f"sentence|{normalize_text(speak)}"
    else:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    item = WorldItem("", task, text, answer, ref, speak, voice, noise, split, tmpl)
    return item, key


def generate_items(
    task: str, split: str, n: int, seed: int = 0, unique: bool | None = None
) -> list[WorldItem]:
    """``n`` items of one task for one split, deterministic in ``seed``.

    ``unique`` (default: True except for ``train``, which samples fresh problems with replacement)
    forbids repeated instances inside the split. Raises :class:`DataError` if the split's share of
    the problem space is too small for ``n`` unique items.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    unique = split != "train" if unique is None else unique
    rng = random.Random(f"xopd-world:{seed}:{split}:{task}")
    out: list[WorldItem] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise DataError(
                f"{split}/{task}: only {len(out)} unique items exist (asked {n}); lower n_per_task"
            )
        item, key = _one(task, split, rng)
        if split != "unseen_template" and split_of(key) != split:
            continue
        ukey = f"{key}|{item.text}|{item.voice}|{item.noise_snr_db}" if task in ("asr", "audio_only") else key
        if unique and ukey in seen:
            continue
        seen.add(ukey)
        item.id = f"{split}-{task}-{len(out):05d}"
        item.seed = _h(f"{seed}:{item.id}") % (2**31)
        out.append(item)
    return out


def make_split(
    split: str, n_per_task: dict[str, int], seed: int = 0, unique: bool | None = None
) -> list[WorldItem]:
    """Items of every task in ``n_per_task`` (e.g. ``{"reasoning": 200, "asr": 100}``), in TASKS order."""
    unknown = set(n_per_task) - set(TASKS)
    if unknown:
        raise DataError(f"n_per_task has unknown task(s) {sorted(unknown)}; expected {', '.join(TASKS)}")
    return [
        it
        for t in TASKS
        if n_per_task.get(t, 0) > 0
        for it in generate_items(t, split, n_per_task[t], seed, unique)
    ]


def _literals() -> list[str]:
    out: list[str] = [*NAMES, *WORDS, *_SUBJ, *_VERB, *_OBJ, *_PLACE, *_ANIMALS, *_SENT_SEEN, *_SENT_UNSEEN]
    for start, ups, downs, q, objs in [*_STORIES_SEEN.values(), *_STORIES_UNSEEN.values()]:
        out += [start, *ups, *downs, q, *objs]
    for seen, unseen in _INSTRUCT.values():
        out += [*seen, *unseen]
    for seen, unseen, answers in _AUDIO_Q.values():
        out += [*seen, *unseen, *answers]
    out += [ASR_INSTRUCTION, "plus minus is. The answer is 0.", "yes no"]
    return [re.sub(r"\{\w\}", " ", s) for s in out]


def vocabulary_corpus() -> list[str]:
    """Lines covering every word any split can produce (all templates, incl. unseen), every number
    0..100 and every letter, in both original and lower case: train the tokenizer on this plus
    generated data so no held-out word is unknown."""
    lines = _literals()
    lines += [s.lower() for s in lines]
    lines += [" ".join(map(str, range(101))), " ".join(ascii_lowercase), " ".join(ascii_lowercase.upper())]
    return lines


def all_template_words() -> set[str]:
    """Every word form (``[A-Za-z']+`` or a digit run) in :func:`vocabulary_corpus`."""
    return {w for line in vocabulary_corpus() for w in re.findall(r"[A-Za-z']+|\d+", line)}
