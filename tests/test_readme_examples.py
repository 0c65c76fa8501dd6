"""The README's examples against the embedded default models, run for real: every curl
example is sent to a live server and every number its JSON output block shows must be what
the server answers (to the digits shown), its revision too; every Python example with shown output is run and
must print exactly that. Examples for models that are not embedded are left out."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shlex
from pathlib import Path

import pytest
from http_helpers import free_port, serve

from service.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
EMBEDDED = ("minilm-harmless", "minilm-prm", "minilm-multi")
# Numbers that differ from run to run: times and ids.
VOLATILE = {"created", "computed_at", "checked_at", "seconds"}


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", README.read_text(), re.S)]


def curl_examples() -> list[tuple[str, dict, str]]:
    """(path, body, shown JSON) of each curl example for an embedded model followed by its output."""
    found, all_blocks = [], blocks()
    for (lang, text), (next_lang, shown) in zip(all_blocks, all_blocks[1:]):
        if lang != "bash" or not text.startswith("curl ") or next_lang != "json":
            continue
        args = shlex.split(text)
        body = json.loads(args[args.index("-d") + 1])
        url = next(a for a in args if a.startswith("localhost:"))
        if body.get("model", EMBEDDED[0]) in EMBEDDED and "/admin/" not in url:
            found.append((url.removeprefix("localhost:8000"), body, shown))
    return found


def python_examples() -> list[tuple[str, list[str]]]:
    """(code, lines it must print) of each Python example whose output is shown: in the block
    after it, or as `# [...]` comments after its prints."""
    found, all_blocks = [], blocks()
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


@pytest.fixture(scope="module")
def server():
    with serve(Settings(server={"grpc_port": free_port()}, canary={"interval_s": 0})) as server:
        yield server.http, server.url, server.app.state.grpc_port


def test_readme_has_examples_for_the_embedded_models():
    assert len(curl_examples()) >= 9 and len(python_examples()) >= 3


@pytest.mark.parametrize("path,body,shown", curl_examples(), ids=lambda x: x if isinstance(x, str) and
                         x.startswith("/") else "")
def test_curl_example_numbers_are_what_the_server_answers(server, path, body, shown):
    client, _, _ = server
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


@pytest.mark.parametrize("code,expected", python_examples(), ids=lambda x: "")
def test_python_example_prints_what_is_shown(server, code, expected):
    _, url, grpc_port = server
    code = code.replace("http://127.0.0.1:8000", url).replace("127.0.0.1:8000", url.removeprefix("http://"))
    code = code.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    lines = printed.getvalue().strip().splitlines()
    if all(line.startswith("[") for line in expected):  # shown as comments: those prints, in order
        lines = [line for line in lines if line.startswith("[")]
    assert lines == expected
