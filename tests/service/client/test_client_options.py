"""The clients' typed keyword options name exactly the request fields each method leaves to
keywords, so the types cannot drift from the protocol."""

from __future__ import annotations

import typing

import pytest

from service.client import options
from service.protocol.ranking import CompareRequest, RerankRequest, StepsRequest
from service.protocol.scoring import ScoreRequest

CASES = [  # options, request model, the fields the method takes as arguments
    (options.ScoreOptions, ScoreRequest, {"items"}),
    (options.CompareOptions, CompareRequest, {"prompt", "responses"}),
    (options.RerankOptions, RerankRequest, {"query", "documents"}),
    (options.StepsOptions, StepsRequest, {"items"}),
]


@pytest.mark.parametrize(("typed", "request_model", "arguments"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_options_are_the_request_fields(typed, request_model, arguments):
    assert set(typing.get_type_hints(typed)) == set(request_model.model_fields) - arguments


def test_trainer_options_are_the_score_options_but_the_model():
    assert set(typing.get_type_hints(options.ItemScoring)) == set(ScoreRequest.model_fields) - {"items", "model"}
