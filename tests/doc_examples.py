"""The examples of a Markdown page (the README, the docs site's pages), run for real: each
curl example followed by its JSON output, and each Python example with shown output."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

import pytest

# Numbers that differ from run to run: times and ids.
VOLATILE = {"created", "computed_at", "checked_at", "seconds"}


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block of a Markdown page, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", page.read_text(), re.S)]


def curl_examples(page: Path, served: Iterable[str]) -> list[tuple[str, dict, str]]:
    """(path, body, shown JSON) of each curl example for a `served` model (the first when it
    names none) followed by its output."""
    served = list(served)
    found, all_blocks = [], blocks(page)
    for (lang, text), (next_lang, shown) in zip(all_blocks, all_blocks[1:]):
        if lang != "bash" or not text.startswith("curl ") or next_lang != "json":
            continue
        args = shlex.split(text)
        body = json.loads(args[args.index("-d") + 1])
        url = next(a for a in args if a.startswith("localhost:"))
        if body.get("model", served[0]) in served and "/admin/" not in url:
            found.append((url.removeprefix("localhost:8000"), body, shown))
    return found


def python_examples(page: Path) -> list[tuple[str, list[str]]]:
    """(code, lines it must print) of each Python example whose output is shown: in the block
    after it, or as `# [...]` comments after its prints."""
    found, all_blocks = [], blocks(page)
    for i, (lang, code) in enumerate(all_blocks):
        if lang != "python" or "print(" not in code or "127.0.0.1" not in code:
            continue
        after = all_blocks[i + 1] if i + 1 < len(all_blocks) else ("", "")
        if after[0] == "":
            expected = after[1].strip().splitlines()
        else:
            expected = re.findall(r"#\s*(\[[-\d., ]*\])\s*$", code, re.M)
        if expected:
            found.append((code, expected))
    return found


def shown_numbers(shown: str) -> list[tuple[str, object]]:
    """`"key": number` and `"key": [numbers]` pairs of a shown output, in order."""
    pairs = re.findall(r'"(\w+)":\s*(\[[-\d.e, \[\]]*\]|-?\d+(?:\.\d+)?(?:e-?\d+)?)', shown)
    return [(key, json.loads(value)) for key, value in pairs if key not in VOLATILE]


def flattened(value, key: str | None = None):
    """(key, value) of every number or list of numbers in a response, in order."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flattened(v, k)
    elif isinstance(value, list) and all(isinstance(v, (int, float, list)) for v in value):
        yield key, value
        if any(isinstance(v, list) for v in value):
            for v in value:
                yield from flattened(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from flattened(v, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def same_as_shown(actual, shown) -> bool:
    if isinstance(shown, list):
        return isinstance(actual, list) and len(actual) == len(shown) and all(map(same_as_shown, actual, shown))
    digits = len(str(shown).split(".")[1]) if "." in str(shown) else 0
    # shown rounded, from a score within float tolerance of this machine's (CPUs round apart)
    return math.isclose(actual, shown, abs_tol=10 ** -digits / 2 + 1e-5)


def check_curl_example(client, path: str, body: dict, shown: str) -> None:
    """The example's request answered 200, with every number (and revision) shown, in order."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    shown_revision = re.search(r'"revision": "(sha256:[0-9a-f]+)…"', shown)
    if shown_revision:
        assert response.json()["revision"].startswith(shown_revision.group(1))
    actual = list(flattened(response.json()))
    position = 0
    for key, value in shown_numbers(shown):
        for index in range(position, len(actual)):
            if actual[index][0] == key:
                break
        else:
            pytest.fail(f"{key} = {value} is shown but not answered (in order)")
        assert same_as_shown(actual[index][1], value), (key, actual[index][1], value)
        position = index + 1
