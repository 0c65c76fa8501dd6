"""Reward functions for RL trainers, backed by a rewardserve client: TRL's GRPOTrainer
reward function (`reward_fn`) and veRL's custom reward function, per sample
(`compute_score`) and batched (`compute_score_batch`). Every call scores as bulk work, so
the server batches it with the rest of the step's rollouts.

veRL loads a custom reward function from a file by name, passing the config's
`reward_kwargs` as keywords; point it at this file:

    custom_reward_function.path=$(python -c "import service.client.trainers as t; print(t.__file__)")
    custom_reward_function.name=compute_score          # or compute_score_batch (reward_manager=batch)
    +custom_reward_function.reward_kwargs.url=grpc://rm-host:50051
    +custom_reward_function.reward_kwargs.prompt_key=question
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from service.client.clients import RewardClient
from service.client.options import ItemScoring

URL_ENV = "REWARDSERVE_URL"


# ---- TRL ------------------------------------------------------------------------------------


def _completion_item(prompt: Any, completion: Any) -> dict:
    """TRL passes plain strings, or conversations (lists of {role, content})."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"prompt": prompt, "response": completion}
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return {"messages": [*turns, *reply]}


def reward_fn(client: RewardClient, *, model: str | None = None, ground_truth_key: str = "ground_truth",
              **options: Unpack[ItemScoring]) -> Callable[..., list[float]]:
    """A TRL GRPOTrainer reward function (`reward_funcs=[reward_fn(client)]`): scores each
    (prompt, completion) with the server, as bulk work, over the client's transport. TRL
    passes the dataset's other columns as keyword lists: the `ground_truth_key` column, when
    the dataset has it, is each item's ground truth (which a pipeline's rules read)."""
    options.setdefault("priority", "bulk")

    def rewardserve_reward(prompts: list, completions: list, **columns: Any) -> list[float]:
        items = [_completion_item(p, c) for p, c in zip(prompts, completions, strict=True)]
        truths = columns.get(ground_truth_key)
        if truths is not None:
            items = [{**item, "ground_truth": jsonable(truth)} for item, truth in zip(items, truths, strict=True)]
        return [result.score for result in client.score(items, model=model, **options).results]

    return rewardserve_reward


# ---- veRL -----------------------------------------------------------------------------------


def _prompt(extra_info: dict | None, prompt_key: str) -> str:
    """veRL hands a reward function the response only; the prompt comes from the sample's
    extra_info (its dataset's preprocessing decides the key)."""
    if not extra_info or prompt_key not in extra_info:
        raise KeyError(f"extra_info has no {prompt_key!r} holding the prompt (keys: {sorted(extra_info or {})}); "
                       "set reward_kwargs.prompt_key")
    return str(extra_info[prompt_key])


def jsonable(value: Any) -> Any:
    """A dataset's value as JSON: numpy arrays and scalars (what parquet columns load as)
    as lists and numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _verl_item(prompt_key: str, data_source: Any, solution: str, ground_truth: Any, extra_info: dict | None) -> dict:
    """A sample as an item, with what a pipeline's rules and user functions read."""
    item = {"prompt": _prompt(extra_info, prompt_key), "response": solution, "ground_truth": jsonable(ground_truth),
            "data_source": None if data_source is None else str(data_source), "extra_info": jsonable(extra_info)}
    return {key: value for key, value in item.items() if value is not None}


def _reward(result) -> float | dict:
    """A float; for a multi-objective model or a pipeline a dict with "score" and each
    dimension (component), which veRL logs beside the reward."""
    return result.score if result.dimensions is None else {"score": result.score, **result.dimensions}


def verl_reward_fns(client: RewardClient, *, model: str | None = None, prompt_key: str = "question",
                    **options: Unpack[ItemScoring]) -> tuple[Callable[..., float | dict], Callable[..., list]]:
    """veRL's two custom reward function forms for `client`: per sample (naive and dapo
    reward managers, called with keywords; prime calls it positionally) and batched (the
    batch reward manager). Each item carries the sample's ground_truth, data_source and
    extra_info, which a pipeline's rules and user functions read."""
    options.setdefault("priority", "bulk")

    def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                      extra_info: dict | None = None, **_: Any) -> float | dict:
        item = _verl_item(prompt_key, data_source, solution_str, ground_truth, extra_info)
        return _reward(client.score([item], model=model, **options).results[0])

    def compute_score_batch(data_sources: Sequence = (), solution_strs: Sequence[str] = (),
                            ground_truths: Sequence = (), extra_infos: Sequence[dict | None] = (),
                            **_: Any) -> list:
        count = len(solution_strs)
        columns = zip(list(data_sources) or [None] * count, solution_strs, list(ground_truths) or [None] * count,
                      list(extra_infos) or [None] * count, strict=True)
        items = [_verl_item(prompt_key, *sample) for sample in columns]
        return [_reward(r) for r in client.score(items, model=model, **options).results] if items else []

    return compute_score, compute_score_batch


@functools.cache
def _client(url: str) -> RewardClient:
    return RewardClient(url)


def _from_kwargs(kwargs: dict) -> tuple[Callable, Callable]:
    """The reward functions for the server the config's reward_kwargs name (`url`, else
    $REWARDSERVE_URL), with its `model`, `prompt_key` and scoring options; veRL's own
    keywords (reward_router_address, reward_model_tokenizer, ...) are left out."""
    url = kwargs.pop("url", None) or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"say where the server is: reward_kwargs.url or ${URL_ENV}")
    options = {k: kwargs[k] for k in ("model", "prompt_key", "truncate", "priority", "timeout_ms") if k in kwargs}
    return verl_reward_fns(_client(url), **options)


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: dict | None = None, **kwargs: Any) -> float | dict:
    """veRL's per-sample custom reward function (see the module docstring)."""
    return _from_kwargs(kwargs)[0](data_source, solution_str, ground_truth, extra_info)


def compute_score_batch(data_sources: Sequence = (), solution_strs: Sequence[str] = (), ground_truths: Sequence = (),
                        extra_infos: Sequence[dict | None] = (), **kwargs: Any) -> list:
    """veRL's batched custom reward function (reward_manager=batch)."""
    return _from_kwargs(kwargs)[1](data_sources, solution_strs, ground_truths, extra_infos)
