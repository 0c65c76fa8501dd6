"""Python clients for rewardserve: `RewardClient` (sync) and `AsyncRewardClient` (asyncio),
over HTTP (`http://`, `https://`) or gRPC (`grpc://`, `grpcs://`), with the same methods (`score`,
`compare`, `rerank`, `steps`, `models`), typed results and errors whichever the protocol,
retrying a full queue or an unavailable server with backoff that honours the server's
retry-after hint. `reward_fn` adapts a client into a TRL GRPOTrainer reward function,
`verl_reward_fns` into veRL's custom reward functions (service.client.trainers).

    from service.client import RewardClient
    with RewardClient("grpc://127.0.0.1:50051") as rm:
        print(rm.score([("How are you?", "Fine, thanks.")]).results[0].score)
"""

from service.client.clients import AsyncRewardClient, RewardClient
from service.client.common import RewardServeError, as_item
from service.client.trainers import reward_fn, verl_reward_fns

__all__ = ["AsyncRewardClient", "RewardClient", "RewardServeError", "as_item", "reward_fn", "verl_reward_fns"]
