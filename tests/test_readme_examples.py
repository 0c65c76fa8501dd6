"""The README's examples against the embedded default models, run for real: every curl
example is sent to a live server and every number its JSON output block shows must be what
the server answers (to the digits shown), its revision too; every Python example with shown output is run and
must print exactly that. Examples for models that are not embedded are left out."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from doc_examples import check_curl_example, curl_examples, python_examples
from http_helpers import free_port, serve

from service.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
EMBEDDED = ("minilm-harmless", "minilm-prm", "minilm-multi")


@pytest.fixture(scope="module")
def server():
    with serve(Settings(server={"grpc_port": free_port()}, canary={"interval_s": 0})) as server:
        yield server.http, server.url, server.app.state.grpc_port


def test_readme_has_examples_for_the_embedded_models():
    assert len(curl_examples(README, EMBEDDED)) >= 9 and len(python_examples(README)) >= 3


@pytest.mark.parametrize("path,body,shown", curl_examples(README, EMBEDDED), ids=lambda x: x if isinstance(x, str) and
                         x.startswith("/") else "")
def test_curl_example_numbers_are_what_the_server_answers(server, path, body, shown):
    client, _, _ = server
    check_curl_example(client, path, body, shown)


@pytest.mark.parametrize("code,expected", python_examples(README), ids=lambda x: "")
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
