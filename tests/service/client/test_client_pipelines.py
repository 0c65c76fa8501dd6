"""The client against a served pipeline, over HTTP and gRPC alike: items carry their ground
truths, data sources and extra info, results their components and uncertainty; TRL's and
veRL's reward functions send the dataset's ground truths with each item."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipeline_helpers import ACCURACY, DEFAULT, FORMAT, ITEMS, MEMBERS, NAME, assert_same_result, pipeline

from service.client import AsyncRewardClient, RewardClient, reward_fn, verl_reward_fns

TRANSPORTS = ("http", "grpc")
PROMPTS = [item["prompt"] for item in ITEMS]
RESPONSES = [item["response"] for item in ITEMS]
TRUTHS = [item["ground_truth"] for item in ITEMS]


@pytest.fixture(scope="module")
def urls(served, tmp_path_factory):
    config = pipeline(tmp_path_factory.mktemp("functions"))
    with served(MEMBERS, pipelines=[config]) as server:
        yield {"http": server.url, "grpc": f"grpc://{server.grpc_target}"}


@pytest.fixture(scope="module")
def expected(urls) -> list[dict]:
    with RewardClient(urls["http"], model=NAME) as client:
        return [r.model_dump() for r in client.score(ITEMS).results]


def test_http_results_carry_the_components(expected):
    for result, fmt, acc in zip(expected, FORMAT, ACCURACY, strict=True):
        assert result["components"]["fmt"]["value"] == fmt and result["components"]["acc"]["value"] == acc
        assert result["components"]["user"]["status"] == "error" and result["components"]["user"]["value"] == DEFAULT
        assert result["uncertainty"] is not None and result["components"]["ens"]["spread"] is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_transports_agree(urls, expected, transport):
    with RewardClient(urls[transport], model=NAME) as client:
        response = client.score(ITEMS)
    assert response.kind == "pipeline"
    for result, want in zip(response.results, expected, strict=True):
        assert_same_result(result.model_dump(), want)
    assert list(response.results[0].components) == ["rm", "ens", "fmt", "acc", "user"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_async_client_too(urls, expected, transport):
    async def main():
        async with AsyncRewardClient(urls[transport], model=NAME) as client:
            return await client.score(ITEMS)

    for result, want in zip(asyncio.run(main()).results, expected, strict=True):
        assert_same_result(result.model_dump(), want)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_trl_reward_function_passes_the_ground_truth_column(urls, expected, transport):
    with RewardClient(urls[transport], model=NAME) as client:
        rewards = reward_fn(client)(prompts=PROMPTS, completions=RESPONSES, ground_truth=TRUTHS, level=[1, 2, 3])
        renamed = reward_fn(client, ground_truth_key="answer")(prompts=PROMPTS, completions=RESPONSES,
                                                              answer=np.array(TRUTHS))
    assert rewards == pytest.approx(renamed, abs=1e-6)
    assert rewards == pytest.approx([r["score"] for r in expected], abs=1e-6)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verl_reward_functions_send_the_samples_context(urls, expected, transport):
    infos = [{"question": p, **item.get("extra_info", {})} for p, item in zip(PROMPTS, ITEMS, strict=True)]
    with RewardClient(urls[transport], model=NAME) as client:
        per_sample, batched = verl_reward_fns(client)
        one = [per_sample(data_source="arith", solution_str=r, ground_truth=t, extra_info=i)
               for r, t, i in zip(RESPONSES, TRUTHS, infos, strict=True)]
        many = batched(data_sources=["arith"] * 3, solution_strs=RESPONSES, ground_truths=TRUTHS, extra_infos=infos)
    assert [r["acc"] for r in one] == [r["acc"] for r in many] == ACCURACY
    assert [r["score"] for r in one] == pytest.approx([r["score"] for r in many], abs=1e-6)
    assert [r["score"] for r in one] == pytest.approx([r["score"] for r in expected], abs=1e-6)
