"""docs/pipelines.md's examples, run for real: its configuration served on the embedded models,
and every curl example's shown numbers what the server answers."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml
from doc_examples import blocks, check_curl_example, curl_examples
from http_helpers import serve
from paths import ROOT

from service.config import DEFAULT_MODELS, Settings

PAGE = ROOT / "docs" / "pipelines.md"


def page_pipelines() -> list[dict]:
    configs = [yaml.safe_load(text) for lang, text in blocks(PAGE) if lang == "yaml" and text.startswith("pipelines:")]
    return [pipeline for config in configs for pipeline in config["pipelines"]]


@pytest.fixture(scope="module")
def server():
    with serve(Settings(pipelines=page_pipelines(), server={"grpc_port": 0}, canary={"interval_s": 0})) as server:
        yield server.http


def examples():
    return curl_examples(PAGE, [p["name"] for p in page_pipelines()])


def test_the_page_has_examples():
    assert page_pipelines() and examples()


@pytest.mark.parametrize("path,body,shown", examples(), ids=lambda x: x if isinstance(x, str) and x.startswith("/")
                         else "")
def test_curl_example_numbers_are_what_the_server_answers(server, path, body, shown):
    check_curl_example(server, path, body, shown)


def test_the_arithmetic_the_page_shows_is_the_answers(server):
    """The page spells out the first item's reward; the sum it shows is the served one."""
    spelled = re.search(r"`1\.0 \+ 0\.5 × ([\d.]+) \+ 0\.1 × \(([-\d.]+)\) - ([\d.]+) = ([\d.]+)`", PAGE.read_text())
    steps, harmless, overlong, total = map(float, spelled.groups())
    assert 1.0 + 0.5 * steps + 0.1 * harmless - overlong == pytest.approx(total, abs=1e-4)


def test_the_pages_own_function_serves_as_shown(tmp_path):
    """The page's veRL-style function, in the component the page configures it with."""
    code = next(text for lang, text in blocks(PAGE) if lang == "python" and "def compute_score" in text)
    snippet = next(text for lang, text in blocks(PAGE) if lang == "yaml" and "type: python" in text)
    (tmp_path / "gsm8k.py").write_text(code)
    component = yaml.safe_load(textwrap.dedent(snippet))[0]
    component["function"] = component["function"].replace("/srv/rewards", str(tmp_path))
    pipeline = {"name": "own", "components": [component]}
    items = [{"prompt": "2 + 2?", "response": "It is 4", "ground_truth": 4},
             {"prompt": "2 + 2?", "response": "It is 5", "ground_truth": 4}]
    with serve(Settings(models=[DEFAULT_MODELS[0]], pipelines=[pipeline], server={"grpc_port": 0},
                        canary={"interval_s": 0})) as server:
        results = server.http.post("/v1/score", json={"model": "own", "items": items}).json()["results"]
    assert [r["components"][component["name"]] for r in results] == [{"value": 1.0, "status": "ok"},
                                                                      {"value": 0.0, "status": "ok"}]
