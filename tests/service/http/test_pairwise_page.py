"""docs/pairwise.md's examples, run for real: its specs are valid reward specs, and every curl
example's shown numbers are what a server of the tests' PairRM-layout checkpoint answers."""

from __future__ import annotations

import pytest
import yaml
from doc_examples import blocks, check_curl_example, curl_examples
from http_helpers import serve
from model_cards import checkpoints
from paths import ROOT

from models.spec import RewardSpec
from service.config import ModelConfig, Settings

PAGE = ROOT / "docs" / "pairwise.md"


def specs() -> list[dict]:
    return [yaml.safe_load(text) for lang, text in blocks(PAGE) if lang == "yaml"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = checkpoints.pairrm(tmp_path_factory.mktemp("pairrm") / "pairrm")
    model = ModelConfig(name="pairrm", path=str(directory), spec=specs()[0])
    with serve(Settings(models=[model], server={"grpc_port": 0}, canary={"interval_s": 0})) as served:
        yield served.http


def test_the_pages_specs_are_reward_specs():
    assert [RewardSpec(**spec).pairwise.convention for spec in specs()] == ["pairrm", "ab_judge"]


def test_the_page_has_an_example_per_route():
    assert sorted({path for path, _, _ in curl_examples(PAGE, ["pairrm"])}) == ["/v1/compare", "/v1/rerank",
                                                                                 "/v1/score"]


@pytest.mark.parametrize("path,body,shown", curl_examples(PAGE, ["pairrm"]),
                         ids=lambda x: x if isinstance(x, str) and x.startswith("/") else "")
def test_curl_example_numbers_are_what_the_server_answers(server, path, body, shown):
    check_curl_example(server, path, body, shown)
