"""Verifiable reward rules and user reward functions, as RL trainers compute them (veRL's
reward managers, OpenRLHF's reward_func, TRL's reward functions). Pure functions of one
`RuleInput`, run inside the worker processes of `service.pipelines.workers`, which bound
their time: so nothing here sets a timeout of its own (math-verify's uses signals)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import string
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from math_verify import parse, verify
from transformers import AutoTokenizer


@dataclass(frozen=True)
class RuleInput:
    """What every rule and user function reads; picklable, to cross into a worker."""

    response: str  # the text scored (veRL's solution_str)
    prompt: str | None = None
    ground_truth: Any = None  # any JSON value (OpenRLHF's `labels`)
    data_source: str | None = None
    extra_info: dict | None = None


def _ground_truths(item: RuleInput, rule: str) -> list:
    """The ground truth as a list of candidates (a list means any of them)."""
    if item.ground_truth is None:
        raise ValueError(f"{rule} needs a ground_truth")
    return list(item.ground_truth) if isinstance(item.ground_truth, list) else [item.ground_truth]


def _compile(pattern: str, flags: int = 0) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as error:
        raise ValueError(f"invalid regex {pattern!r}: {error}") from None


# ---- math ---------------------------------------------------------------------------------

LATEX_DELIMITERS = ("$", "\\(", "\\[")


def math_verify(item: RuleInput) -> float:
    """1.0 when the response's final answer equals the ground truth mathematically (math-verify).
    A ground truth without LaTeX delimiters is read as math ($...$). Thousands separators are
    left to math-verify, which reads "1,234" as 1234 but "3,5" as the set {3, 5}."""
    gold = item.ground_truth
    if gold is None or isinstance(gold, bool) or not isinstance(gold, str | int | float):
        raise ValueError(f"math_verify needs a ground_truth that is a number or a string, not {gold!r}")
    gold = str(gold).strip()
    if not any(delimiter in gold for delimiter in LATEX_DELIMITERS):
        gold = f"${gold}$"
    parsed_gold = parse(gold, parsing_timeout=None)
    if not parsed_gold:
        raise ValueError(f"math_verify cannot read an answer in the ground_truth {item.ground_truth!r}")
    answer = parse(item.response, parsing_timeout=None)
    return 1.0 if verify(parsed_gold, answer, timeout_seconds=None) else 0.0


# ---- matching -----------------------------------------------------------------------------

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)
CHOICE_PATTERNS = (
    re.compile(r"\\boxed\{\s*\(?([A-Z])\)?\s*\}"),
    re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*[:：]?\s*\**\s*\(?([A-Z])\)?(?![A-Za-z])"),
)
MATCH_MODES = ("exact", "normalized", "regex", "choice")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    return " ".join(ARTICLES.sub(" ", text.lower().translate(PUNCTUATION)).split())


def final_choice(response: str) -> str | None:
    """The last choice letter the response gives ("Answer: (C)", "\\boxed{C}", "the answer
    is C"), or the response itself when it is only a letter ("C", "(C)", "C.")."""
    found = [m for pattern in CHOICE_PATTERNS for m in pattern.finditer(response)]
    if found:
        return max(found, key=lambda m: m.start(1)).group(1)
    bare = re.fullmatch(r"\s*\(?([A-Z])\)?\.?\s*", response)
    return bare.group(1) if bare else None


def _choice_letter(gold: Any) -> str:
    letter = re.fullmatch(r"\s*\(?([A-Za-z])\)?\.?\s*", str(gold))
    if letter is None:
        raise ValueError(f"match mode 'choice' needs ground_truth letters A-Z, not {gold!r}")
    return letter.group(1).upper()


def _extracted(response: str, pattern: str | None) -> str | None:
    if not pattern:
        raise ValueError("match mode 'regex' needs a pattern")
    compiled = _compile(pattern)
    found = list(compiled.finditer(response))
    if not found:
        return None
    return found[-1].group(1) if compiled.groups else found[-1].group(0)


def match(item: RuleInput, mode: str = "normalized", pattern: str | None = None) -> float:
    """1.0 when the response (or what `pattern` extracts from it, or its final choice letter)
    matches the ground truth, or any element of a ground-truth list."""
    golds = _ground_truths(item, "match")
    if mode == "exact":
        return float(item.response.strip() in {str(gold).strip() for gold in golds})
    if mode == "normalized":
        return float(normalize_answer(item.response) in {normalize_answer(str(gold)) for gold in golds})
    if mode == "regex":
        answer = _extracted(item.response, pattern)
        return float(answer is not None and normalize_answer(answer) in {normalize_answer(str(g)) for g in golds})
    if mode == "choice":
        letters = {_choice_letter(gold) for gold in golds}
        return float(final_choice(item.response) in letters)
    raise ValueError(f"unknown match mode {mode!r}; one of {', '.join(MATCH_MODES)}")


def format(item: RuleInput, must_match: Iterable[str] = (), must_not_match: Iterable[str] = ()) -> float:
    """1.0 when every `must_match` regex is found in the response and no `must_not_match` one."""
    flags = re.DOTALL | re.MULTILINE
    required = [_compile(p, flags) for p in ([must_match] if isinstance(must_match, str) else must_match)]
    banned = [_compile(p, flags) for p in ([must_not_match] if isinstance(must_not_match, str) else must_not_match)]
    ok = all(p.search(item.response) for p in required) and not any(p.search(item.response) for p in banned)
    return float(ok)


# ---- length and repetition ----------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    """A worker loads each tokenizer once."""
    return AutoTokenizer.from_pretrained(path)


def length(item: RuleInput, max_length: int, buffer: int, tokenizer: str, penalty: float = 1.0) -> float:
    """DAPO's overlong penalty: 0 up to max_length - buffer tokens, then falling linearly to
    -penalty at max_length (and on past it: veRL's responses are cut at max_length)."""
    if not 0 < buffer <= max_length:
        raise ValueError(f"length needs 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    tokens = len(_tokenizer(tokenizer)(item.response, add_special_tokens=False)["input_ids"])
    exceed = tokens - (max_length - buffer)
    return min(-exceed / buffer * penalty, 0.0)


def repetition(item: RuleInput, n: int = 3, max_penalty: float = -1.0) -> float:
    """open-r1's n-gram repetition penalty over lower-cased whitespace words:
    max_penalty * (1 - unique n-grams / n-grams); 0 when there are fewer than n words."""
    if n < 1 or max_penalty > 0:
        raise ValueError(f"repetition needs n >= 1 and max_penalty <= 0, got n={n}, max_penalty={max_penalty}")
    words = item.response.lower().split()
    if len(words) < n:
        return 0.0
    ngrams = list(zip(*(words[i:] for i in range(n))))
    return max_penalty * (1 - len(set(ngrams)) / len(ngrams))


BUILTIN_RULES: dict[str, Callable[..., float]] = {
    "math_verify": math_verify,
    "match": match,
    "format": format,
    "length": length,
    "repetition": repetition,
}


# ---- user functions -----------------------------------------------------------------------

VERL_KEYWORDS = ("data_source", "solution_str", "ground_truth", "extra_info")


def _import(module: str):
    """A module by name, or a .py file by path (loaded under a name of its own)."""
    path = Path(module).resolve()
    if module.endswith(".py") and not path.is_file():
        raise ValueError(f"no file {module!r}")
    try:
        if not module.endswith(".py"):
            return importlib.import_module(module)
        name = f"rewardserve_user_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    except Exception as error:  # noqa: BLE001 - whatever importing user code raises says why
        raise ValueError(f"cannot import {module!r}: {type(error).__name__}: {error}") from None


@functools.lru_cache(maxsize=64)
def resolve_function(function: str) -> Callable:
    """`module:function` or `path/to/file.py:function`, imported once per worker, and checked
    to take veRL's keywords (data_source, solution_str, ground_truth, extra_info)."""
    module, sep, name = function.rpartition(":")
    if not sep or not module or not name:
        raise ValueError(f"function {function!r} should be 'module:function' or 'path/to/file.py:function'")
    found = getattr(_import(module), name, None)
    if not callable(found):
        raise ValueError(f"{module!r} has no function {name!r}")
    try:
        inspect.signature(found).bind(**dict.fromkeys(VERL_KEYWORDS))
    except TypeError as error:
        raise ValueError(f"{function!r} cannot be called with {', '.join(VERL_KEYWORDS)}: {error}") from None
    except ValueError:
        pass  # no signature to read (a builtin): the call itself will tell
    return found


def _number(value: Any, function: str, what: str) -> float:
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{function!r} returned {what}{value!r}, not a finite number")
    return float(value)


def call_python(function: str, item: RuleInput) -> tuple[float, dict[str, float] | None]:
    """A user function called as veRL calls one; (score, extras) from the float (int, bool) it
    returns or from the dict with a `score` (its other numeric keys are the extras)."""
    result = resolve_function(function)(data_source=item.data_source, solution_str=item.response,
                                        ground_truth=item.ground_truth, extra_info=item.extra_info)
    if not isinstance(result, dict):
        return _number(result, function, ""), None
    if "score" not in result:
        raise ValueError(f"{function!r} returned a dict without 'score' (keys: {sorted(map(str, result))})")
    extras = {str(key): float(value) for key, value in result.items()
              if key != "score" and isinstance(value, numbers.Real) and math.isfinite(value)}
    return _number(result["score"], function, "score "), extras or None
