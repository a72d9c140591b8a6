"""The AST reader of a VoiceBench checkout, on made-up files in the official files' code shapes
(conftest.VOICEBENCH_SRC_FILES), and the official interpretation of what it reads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from xopd.errors import DataError
from xopd.eval.benchmarks import voicebench_official as vo
from xopd.eval.benchmarks.voicebench import rules_for
from xopd.eval.benchmarks.voicebench_rules import DEFAULT_RULES, OfficialRules, bbh_accuracy, mcq_accuracy

from .conftest import VOICEBENCH_SRC_FILES, write_voicebench_src


def test_tables_are_read_from_the_source(voicebench_src: Path) -> None:
    mcq = vo.load_mcq(voicebench_src)
    assert mcq.templates == ("my pick is <X>", "letter <X> wins", "[<X>]") and mcq.placeholder == "<X>"
    assert mcq.choices == ("a", "b", "c", "d") and mcq.punctuation == (".", ")")
    assert mcq.phrases == (("gold star for a", "A"), ("crown goes to b", "B"))
    bbh = vo.load_bbh(voicebench_src)
    assert bbh.dispatch == (("sports_understanding", "extract_answer_sports"),
                            ("hyperbaton", "extract_answer_hyperbaton"))  # fmt: skip
    sports = bbh.chains["extract_answer_sports"]
    assert sports.preludes == ("extract_answer_verdict",) and sports.fallback == "random"
    assert sports.rules == (("eq", "sure", 1), ("re", r"seems (.+?) odd", 0), ("start", "nope", 0), ("end", "fine", 1))
    assert bbh.chains["extract_answer_verdict"].fallback == "none"
    assert bbh.chains["extract_answer_verdict"].rules == (("in", "verdict yes", 1), ("in", "verdict no", 0))
    # Python's implicit concatenation (a missing comma) fuses two strings: read as the interpreter would
    assert vo.load_refusals(voicebench_src) == ("No way", "Not doing thatAbsolutely not", "Nope")
    judge = vo.load_judge(voicebench_src)
    assert judge.open.startswith("\nFIXTURE OPEN RATING") and judge.qa.startswith("FIXTURE QA CHECK")  # .strip() applied
    assert judge.system == "Fixture system line."


def test_official_interpretation(voicebench_src: Path) -> None:
    rules = OfficialRules(voicebench_src)
    assert rules.label == f"official (VoiceBench src at {voicebench_src})"
    assert rules.mcq_letter("My pick is C, clearly") == "C"
    assert rules.mcq_letter("<1>letter d wins") == "D"  # turn marker dropped, lower-cased
    assert rules.mcq_letter("[b] or letter a wins") == "A"  # template order first, then choice order
    assert rules.mcq_letter("b") == "B" and rules.mcq_letter("c) helium") == "C" and rules.mcq_letter("c, x") is None
    assert rules.mcq_letter("A gold star for A") == "A" and rules.mcq_letter("the answer is b") is None
    rng = random.Random(0)
    assert rules.bbh_label("Verdict: YES.", "sports_understanding_1", rng) == 1  # prelude, after normalising
    assert rules.bbh_label("sure", "sports_understanding_1", rng) == 1
    assert rules.bbh_label("it seems rather odd", "sports_understanding_1", rng) == 0
    assert rules.bbh_label("nope", "sports_understanding_1", rng) == 0
    assert rules.bbh_label("all fine", "sports_understanding_1", rng) == 1
    assert rules.bbh_label("the second one", "hyperbaton_3", rng) == 1
    with pytest.raises(ValueError, match="names none"):
        rules.bbh_label("yes", "navigate_2", rng)
    assert rules.is_refusal("") and rules.is_refusal("NOPE.") and rules.is_refusal("not doing thatabsolutely not")
    assert not rules.is_refusal("Not doing that")  # only the fused string is in the list


def test_official_random_fallbacks_are_seeded(voicebench_src: Path) -> None:
    rules = OfficialRules(voicebench_src)
    res = mcq_accuracy(["no idea", "my pick is b"], ["A", "B"], seed=5, rules=rules)
    guess = random.Random(5).choice("ABCD")
    assert res == {"acc": 100 * ((guess == "A") + 1) / 2, "fail": 50.0}
    acc = bbh_accuracy(["hmm", "the first one"], ["sports_understanding_1", "hyperbaton_1"], ["yes", "(A)"],
                       seed=5, rules=rules)  # fmt: skip
    assert acc == 100 * ((random.Random(5).choice([0, 1]) == 1) + 1) / 2


def test_rule_set_choice(voicebench_src: Path, monkeypatch) -> None:
    monkeypatch.delenv(vo.ENV_VAR, raising=False)
    assert rules_for(["mcq"]) is DEFAULT_RULES
    assert rules_for(["mcq"], voicebench_src).label.startswith("official")
    monkeypatch.setenv(vo.ENV_VAR, str(voicebench_src))
    assert rules_for(["harm"]).label == f"official (VoiceBench src at {voicebench_src})"
    # only the files the chosen subsets need are read
    (voicebench_src / "api_judge.py").unlink()
    assert rules_for(["mcq", "bbh", "harm", "ifeval"]).label.startswith("official")
    with pytest.raises(DataError, match="api_judge.py not found"):
        rules_for(["open"])


def _broken(tmp_path: Path, rel: str, text: str) -> Path:
    return write_voicebench_src(tmp_path, {**VOICEBENCH_SRC_FILES, rel: text})


@pytest.mark.parametrize(
    ("rel", "text", "kind", "message"),
    [
        ("src/evaluator/mcq.py", "def extract_answer(self, response):\n    return None\n", "mcq",
         r"mcq\.py \(line 1\): expected in extract_answer, a loop over the answer templates"),
        ("src/evaluator/mcq.py", "x = 1\n", "mcq", r"mcq\.py: expected a function extract_answer"),
        ("src/evaluator/mcq.py", VOICEBENCH_SRC_FILES["src/evaluator/mcq.py"].replace('"letter <X> wins",', "WINS,"),
         "mcq", r"expected in extract_answer, a list of strings"),
        ("src/evaluator/bbh.py", VOICEBENCH_SRC_FILES["src/evaluator/bbh.py"].replace(
            "response.startswith('nope')", "len(response) < 3"), "bbh",
         r"bbh\.py \(line \d+\): expected in extract_answer_sports, a test of the form response == 's'"),
        ("src/evaluator/bbh.py", VOICEBENCH_SRC_FILES["src/evaluator/bbh.py"].replace("return 1\n", "return 'x'\n", 1),
         "bbh", r"expected in extract_answer_verdict, branches returning 0 or 1"),
        ("src/evaluator/bbh.py", VOICEBENCH_SRC_FILES["src/evaluator/bbh.py"].replace(
            "extract_answer_hyperbaton(self", "extract_answer_hyper(self"), "bbh",
         r"expected a method extract_answer_hyperbaton"),
        ("src/evaluator/harm.py", "class H:\n    refusal = [1, 2]\n", "harm", r"refusal list to hold string literals"),
        ("src/evaluator/harm.py", "x = ['a']\n", "harm", r"a name containing 'refusal'"),
        ("api_judge.py", 'meta_prompt_open = "no fields"\n', "judge", r"meta_prompt_open to contain the placeholder"),
        ("api_judge.py", "def f(:\n", "judge", r"api_judge\.py: not readable Python"),
    ],
)  # fmt: skip
def test_unknown_shapes_fail_with_one_line_naming_the_file(tmp_path: Path, rel, text, kind, message) -> None:
    src = _broken(tmp_path, rel, text)
    loader = {"mcq": vo.load_mcq, "bbh": vo.load_bbh, "harm": vo.load_refusals, "judge": vo.load_judge}[kind]
    with pytest.raises(DataError, match=message) as err:
        loader(src)
    assert len(str(err.value).splitlines()) == 1 and str(src / rel) in str(err.value)


def test_missing_checkout_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder; clone https://github.com/MatthewCYM/VoiceBench"):
        vo.resolve_src(tmp_path / "nope")
    with pytest.raises(DataError, match=r"src/evaluator/bbh\.py not found"):
        vo.load_bbh(tmp_path)


def test_the_parser_never_runs_the_source(tmp_path: Path) -> None:
    boom = "raise SystemExit('executed')\n"
    src = write_voicebench_src(tmp_path, {rel: boom + text for rel, text in VOICEBENCH_SRC_FILES.items()})
    assert OfficialRules(src).mcq_letter("letter b wins") == "B"
