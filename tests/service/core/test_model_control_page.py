"""docs/model-control.md's examples, run against a live server whose model `rm` stands for
the page's: each curl call (its method, route and body) answers what the page shows after
it, and the tritonclient example prints what the page shows."""

from __future__ import annotations

import contextlib
import io
import json
import shlex

from doc_examples import blocks
from paths import ROOT

from service.config import ModelConfig

PAGE = ROOT / "docs" / "model-control.md"
NEW_DIR = "/models/rm-v2"  # the page's new directory, the test's copy of another model


def curl_calls(text: str) -> list[tuple[str, dict | None]]:
    """(route, body) of each curl line of a block."""
    calls = []
    for line in text.strip().splitlines():
        args = shlex.split(line)
        url = next(a for a in args if a.startswith("localhost:"))
        body = json.loads(args[args.index("-d") + 1]) if "-d" in args else None
        calls.append((url.removeprefix("localhost:8000"), body))
    return calls


def test_the_pages_examples(served, tiny_model_dirs):
    page = blocks(PAGE)
    new_dir = str(tiny_model_dirs["qwen2-scalar"])
    with served([ModelConfig(name="rm", path=str(tiny_model_dirs["llama-scalar"]))]) as server:
        curls = [(text, shown) for (lang, text), (_, shown) in zip(page, page[1:]) if lang == "bash"]
        assert len(curls) == 2
        for text, shown in curls:
            for route, body in curl_calls(text.replace(NEW_DIR, new_dir)):
                answer = server.http.post(route, json=body)
                assert answer.status_code == 200, (route, answer.text)
            expected = {key: value for key, value in json.loads(shown).items() if value != "…"}
            assert {key: answer.json()[key] for key in expected} == expected

        code, shown = next((text, page[i + 1][1]) for i, (lang, text) in enumerate(page) if lang == "python")
        code = code.replace("localhost:8000", server.url.removeprefix("http://")).replace(NEW_DIR, new_dir)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(PAGE), "exec"), {})  # the page's own example
        assert printed.getvalue().split() == shown.split()
