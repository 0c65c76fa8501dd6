"""Shared fixtures: the tiny reward models, built once per test session, and `served`, a live
server of them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from http_helpers import Served, free_port, serve
from tiny_models import build_all

from models.reward_model import RewardModel
from service.config import ModelConfig, Settings

torch.set_num_threads(2)
# Servers the tests start leave gRPC off unless a test asks for it (server.grpc_port=free_port()),
# so servers running side by side never contend for the default port.
os.environ.setdefault("REWARDSERVE_SERVER__GRPC_PORT", "0")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """{name: directory} for every tiny model in tiny_models.py, built once."""
    return build_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def load_tiny(tiny_model_dirs) -> Callable[[str], RewardModel]:
    """name -> RewardModel loaded from its tiny model directory, cached for the session.
    Tests must not mutate the returned model."""
    cache: dict[str, RewardModel] = {}

    def load(name: str) -> RewardModel:
        if name not in cache:
            cache[name] = RewardModel.load(name, tiny_model_dirs[name])
        return cache[name]

    return load


class _LazyModels(Mapping):
    """A read-only {name: RewardModel} that loads a model the first time it is looked up."""

    def __init__(self, names: list[str], load: Callable[[str], RewardModel]):
        self._names = names
        self._load = load

    def __getitem__(self, name: str) -> RewardModel:
        if name not in self._names:
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@pytest.fixture(scope="session")
def served(tiny_model_dirs) -> Callable[..., AbstractContextManager[Served]]:
    """`with served(models, **sections) as server:` a live rewardserve (http_helpers.serve)
    of `models`: tiny model names (served under their own names) or ModelConfig entries,
    with the settings' `sections` on top (`batching={"max_batch_size": 4}`, ...) and gRPC on
    a free port unless `grpc=False` or `server` names a grpc_port; `ready` and `timeout` go
    to serve()."""
    def start(models: list[str | ModelConfig], *, grpc: bool = True, ready: bool = True, timeout: float = 60.0,
              server: dict | None = None, **sections) -> AbstractContextManager[Served]:
        entries = [m if isinstance(m, ModelConfig) else ModelConfig(name=m, path=str(tiny_model_dirs[m]))
                   for m in models]
        server = {"grpc_port": free_port() if grpc else 0} | (server or {})
        return serve(Settings(models=entries, server=server, **sections), ready=ready, timeout=timeout)

    return start


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs, load_tiny) -> Mapping[str, RewardModel]:
    """The same cached models as `load_tiny`, as a lazy mapping."""
    return _LazyModels(list(tiny_model_dirs), load_tiny)


def _close(actual, expected, tol: float) -> bool:
    if expected is None:
        return actual is None
    return actual == pytest.approx(expected, abs=tol, rel=0)


def _assert_outputs_match(actual: list, expected: list, tol: float = 1e-5) -> None:
    """Two lists of RewardOutput agree on every field: score, every dimension, gating
    weight and step reward within `tol`; token counts and the truncated flag exactly."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a.num_tokens, a.truncated) == (e.num_tokens, e.truncated), f"item {i}"
        assert _close(a.score, e.score, tol), f"item {i}: score {a.score} != {e.score}"
        if e.dimensions is not None:
            assert list(a.dimensions) == list(e.dimensions), f"item {i}: dimension names"
        for field in ("dimensions", "gating_weights", "step_rewards"):
            got, want = getattr(a, field), getattr(e, field)
            if want is not None and got is not None:
                assert len(got) == len(want), f"item {i}: {field} length"
            assert _close(got, want, tol), f"item {i}: {field} {got} != {want}"


@pytest.fixture(scope="session")
def assert_outputs_match() -> Callable[..., None]:
    """`assert_outputs_match(actual, expected, tol=1e-5)` for two RewardOutput lists."""
    return _assert_outputs_match
