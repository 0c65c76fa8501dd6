"""Result cache: an in-process LRU bounded in bytes, in front of an optional Redis shared by
every replica. Both fail open: a cache problem costs a forward, never a request.

Keys hash the model name, its revision fingerprint (weights, tokenizer, chat template,
head, spec) and the exact encoded input (ids, segment ids, prompt length, truncation,
step-marker positions), so a new revision can never read an old one's entries. Values are
the model's raw output (before per-request step aggregation or normalization, which are
cheap and applied afterwards), so one entry serves every such option.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgpack

from models.heads import RewardOutput, TokenRewards
from models.inputs import Encoded

log = logging.getLogger("rewardserve")
CODEC_VERSION = 2
KEY_PREFIX = b"rewardserve:v1:"
ENTRY_OVERHEAD_BYTES = 96  # dict slot, OrderedDict links, bytes headers: keeps the byte bound honest


def cache_key(model: str, revision: str, enc: Encoded, alone: bool = False,
              adapter: tuple[str, str] | None = None, token_rewards: bool = False) -> bytes:
    """The entry of an item's result; one scored `alone` (bitwise batch-invariant) is kept apart
    from batched ones, whose last bits depend on their batch-mates; one scored by a LoRA
    `adapter` (its name and revision) from the base's and every other adapter's; one with its
    token rewards from one without (the smaller entry most requests read)."""
    fields = [model, revision, enc.input_ids, enc.token_type_ids, enc.prompt_length, enc.truncated,
              enc.marker_positions]
    if alone:
        fields.append("alone")
    if adapter is not None:
        fields.append(list(adapter))
    if token_rewards:
        fields.append("token_rewards")
    return KEY_PREFIX + hashlib.sha256(msgpack.packb(fields)).hexdigest().encode()


def encode_output(out: RewardOutput) -> bytes:
    dims = list(out.dimensions.values()) if out.dimensions is not None else None
    dense = out.token_rewards
    dense = [dense.start, dense.token_ids, dense.values] if dense is not None else None
    return msgpack.packb([CODEC_VERSION, out.score, dims, out.gating_weights, out.step_rewards,
                          out.num_tokens, out.truncated, dense])


def decode_output(blob: bytes, dimension_names: list[str] | None) -> RewardOutput | None:
    """The stored output, or None for anything that is not a well-formed entry of this
    model (garbage, another codec version, a different dimension count)."""
    try:
        version, score, dims, gating, steps, num_tokens, truncated, dense = msgpack.unpackb(blob)
        if version != CODEC_VERSION or not isinstance(score, float):
            return None
        if (dims is None) != (dimension_names is None) or (dims is not None and len(dims) != len(dimension_names)):
            return None
        named = dict(zip(dimension_names, map(float, dims))) if dims is not None else None
        if dense is not None:
            start, token_ids, values = dense
            dense = TokenRewards(int(start), tuple(token_ids), tuple(map(float, values)))
        return RewardOutput(score=score, dimensions=named, gating_weights=gating, step_rewards=steps,
                            token_rewards=dense, num_tokens=int(num_tokens), truncated=bool(truncated), cached=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


@dataclass
class CacheStats:
    hits: dict[str, int] = field(default_factory=lambda: {"lru": 0, "redis": 0})
    misses: int = 0
    errors: int = 0


class LRUCache:
    """Bounded in bytes; entries also expire after their TTL."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, value: bytes, ttl_s: float) -> None:
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, time.monotonic() + ttl_s)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= len(key) + len(value) + ENTRY_OVERHEAD_BYTES

    def __len__(self) -> int:
        return len(self._entries)


class RedisTier:
    """Redis behind a short timeout and a circuit breaker: after `breaker_failures`
    consecutive errors it is skipped for `breaker_reset_s`, then one call probes it."""

    def __init__(self, url: str, timeout_s: float, breaker_failures: int = 3, breaker_reset_s: float = 2.0):
        try:  # an optional dependency: the [redis] extra
            from redis.asyncio import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise RuntimeError("cache.redis_url needs the redis package: pip install 'rewardserve[redis]'") from None
        self.client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.timeout_s = timeout_s
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self._failures = 0
        self._open_until = 0.0
        self.stats_errors = 0

    @property
    def available(self) -> bool:
        return self._failures < self.breaker_failures or time.monotonic() >= self._open_until

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return await self._call(self.client.mget(keys), default=[None] * len(keys))

    async def put_many(self, pairs: list[tuple[bytes, bytes]], ttl_s: float) -> None:
        async def write():
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in pairs:
                    pipe.set(key, value, px=max(1, int(ttl_s * 1000)))
                return await pipe.execute()

        await self._call(write(), default=None)

    async def _call(self, work, default):
        if not self.available:
            work.close()
            return default
        try:
            result = await asyncio.wait_for(work, timeout=self.timeout_s * 4)
        except Exception as err:  # noqa: BLE001 - any Redis failure degrades to a miss
            self._failures += 1
            self.stats_errors += 1
            if self._failures >= self.breaker_failures:
                self._open_until = time.monotonic() + self.breaker_reset_s
            log.debug("redis cache error: %s: %s", type(err).__name__, err)
            return default
        self._failures = 0
        return result

    async def close(self) -> None:
        await self.client.aclose()


class ResultCache:
    """The two tiers together: LRU first, then Redis; Redis hits refill the LRU. Writes to
    Redis go out in the background so a slow Redis never delays a response."""

    def __init__(self, lru: LRUCache | None, redis: RedisTier | None):
        self.lru = lru
        self.redis = redis
        self.stats = CacheStats()
        self._writes: set[asyncio.Task] = set()

    async def get_many(self, keys: list[bytes], ttl_s: float) -> list[tuple[bytes | None, str | None]]:
        """(value, tier) per key; (None, None) on a miss."""
        found: list[tuple[bytes | None, str | None]] = [(None, None)] * len(keys)
        if self.lru is not None:
            found = [(value, "lru") if (value := self.lru.get(k)) is not None else (None, None) for k in keys]
        missing = [i for i, (value, _) in enumerate(found) if value is None]
        if self.redis is not None and missing:
            errors_before = self.redis.stats_errors
            values = await self.redis.get_many([keys[i] for i in missing])
            self.stats.errors += self.redis.stats_errors - errors_before
            for i, value in zip(missing, values):
                if value is not None:
                    found[i] = (value, "redis")
                    if self.lru is not None:
                        self.lru.put(keys[i], value, ttl_s)
        for _, tier in found:
            if tier is None:
                self.stats.misses += 1
            else:
                self.stats.hits[tier] += 1
        return found

    def put_many(self, pairs: list[tuple[bytes, bytes]], ttl_s: float) -> None:
        if not pairs:
            return
        if self.lru is not None:
            for key, value in pairs:
                self.lru.put(key, value, ttl_s)
        if self.redis is not None:
            task = asyncio.get_running_loop().create_task(self._write_redis(pairs, ttl_s))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_redis(self, pairs, ttl_s) -> None:
        errors_before = self.redis.stats_errors
        await self.redis.put_many(pairs, ttl_s)
        self.stats.errors += self.redis.stats_errors - errors_before

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=1.0)
        if self.redis is not None:
            await self.redis.close()
