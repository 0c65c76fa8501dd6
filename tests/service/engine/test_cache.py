"""The result cache: LRU bounds, the codec, keys, and the two tiers behind the HTTP API
against a real redis-server (hits, TTL, revision isolation, sharing between server
processes, Redis dying and coming back, corrupted entries, per-request modes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest
import yaml
from http_helpers import (
    assert_result_matches,
    free_port,
    live_server,
    poll,
    reference,
    served_input,
    wait_until_loaded,
    write_config,
)
from redis_helpers import RedisProcess, needs_redis

from models.heads import RewardOutput
from service.app import create_app
from service.config import ModelConfig, Settings
from service.engine.cache import LRUCache, cache_key, decode_output, encode_output

PAIR = {"prompt": "Is the sky blue?", "response": "Yes, on a clear day."}
OTHER = {"prompt": "Name a prime.", "response": "Seven."}


# ---- pieces -------------------------------------------------------------------------


def test_lru_is_bounded_in_bytes_and_evicts_least_recent():
    lru = LRUCache(max_bytes=3 * (8 + 100 + 96))
    for i in range(3):
        lru.put(f"key-{i:04d}".encode()[:8], bytes(100), ttl_s=60)
    lru.get(b"key-0000")  # now most recent
    lru.put(b"key-0003", bytes(100), ttl_s=60)
    assert len(lru) == 3 and lru.bytes <= lru.max_bytes
    assert lru.get(b"key-0001") is None and lru.get(b"key-0000") is not None
    lru.put(b"huge", bytes(10_000), ttl_s=60)  # larger than the whole cache: not stored
    assert lru.get(b"huge") is None and lru.bytes <= lru.max_bytes


def test_lru_entries_expire():
    lru = LRUCache(max_bytes=10_000)
    lru.put(b"k", b"v", ttl_s=0.05)
    assert lru.get(b"k") == b"v"
    time.sleep(0.1)
    assert lru.get(b"k") is None and lru.bytes == 0


@pytest.mark.parametrize(
    "out,names",
    [
        (RewardOutput(score=0.25, num_tokens=7), None),
        (
            RewardOutput(
                score=1.5, dimensions={"a": 0.5, "b": -1.0}, gating_weights=[0.3, 0.7], num_tokens=9, truncated=True
            ),
            ["a", "b"],
        ),
        (RewardOutput(score=0.1, step_rewards=[0.9, 0.1], num_tokens=12), None),
    ],
)
def test_codec_round_trip_marks_cached(out, names):
    assert decode_output(encode_output(out), names) == replace(out, cached=True)


@pytest.mark.parametrize("blob", [b"", b"garbage", b"\x93\x01\x02\x03", encode_output(RewardOutput(score=1.0))[:-1]])
def test_codec_rejects_garbage(blob):
    assert decode_output(blob, None) is None


def test_codec_rejects_other_dimension_count():
    blob = encode_output(RewardOutput(score=1.0, dimensions={"a": 1.0, "b": 2.0}))
    assert decode_output(blob, ["a", "b", "c"]) is None and decode_output(blob, None) is None


def test_key_covers_model_revision_and_exact_input(load_tiny):
    model = load_tiny("llama-scalar")
    enc = model.encode(served_input(PAIR))
    key = cache_key("m", "rev1", enc)
    assert key == cache_key("m", "rev1", model.encode(served_input(PAIR)))
    assert key != cache_key("m", "rev2", enc)
    assert key != cache_key("other", "rev1", enc)
    assert key != cache_key("m", "rev1", model.encode(served_input(OTHER)))
    assert key != cache_key("m", "rev1", replace(enc, truncated=True))


# ---- through the server ---------------------------------------------------------------


@pytest.fixture
def redis_process():
    process = RedisProcess()
    process.start()
    yield process
    process.stop()


def _settings(tiny_model_dirs, names=("llama-scalar",), **overrides) -> Settings:
    models = [ModelConfig(name=n, path=str(tiny_model_dirs[n]), **overrides.pop(f"{n}_config", {})) for n in names]
    return Settings(models=models, **overrides)


def _score(client, item, model="llama-scalar", **options) -> dict:
    response = client.post("/v1/score", json={"model": model, "items": [item], **options})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


@contextmanager
def serving(settings):
    """(app, client) for a live server of `settings`, its models loaded."""
    app = create_app(settings)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_until_loaded(client)
        yield app, client


def test_lru_hit_is_flagged_and_identical(tiny_model_dirs, load_tiny):
    with serving(_settings(tiny_model_dirs)) as (app, client):
        first, second = _score(client, PAIR), _score(client, PAIR)
        assert "cached" not in first and second.pop("cached") is True
        assert first == second
        assert_result_matches(second, reference(load_tiny("llama-scalar"), PAIR))
        stats = app.state.registry.cache.stats
        assert (stats.hits["lru"], stats.misses) == (1, 1)


def test_modes_and_per_model_switch(tiny_model_dirs):
    settings = _settings(
        tiny_model_dirs, names=("llama-scalar", "qwen2-scalar"), **{"qwen2-scalar_config": {"cache": False}}
    )
    with serving(settings) as (app, client):
        assert "cached" not in _score(client, PAIR, cache="bypass")
        assert "cached" not in _score(client, PAIR)  # bypass wrote nothing
        assert _score(client, PAIR)["cached"] is True
        assert "cached" not in _score(client, PAIR, cache="refresh")  # recomputed, overwritten
        assert _score(client, PAIR)["cached"] is True
        for _ in range(2):
            assert "cached" not in _score(client, PAIR, model="qwen2-scalar")
        response = client.post("/v1/score", json={"model": "llama-scalar", "items": [PAIR], "cache": "sometimes"})
        assert response.status_code == 422 and response.json()["error"]["field"] == "cache"


def test_process_outputs_cached_before_aggregation(tiny_model_dirs, load_tiny):
    """One cached entry serves every step aggregate: the aggregate is applied afterwards."""
    item = {"prompt": "What is 3 + 4?", "steps": ["3 + 4 = 7", "The answer is 7."]}
    with serving(_settings(tiny_model_dirs, names=("qwen2-prm",))) as (app, client):
        plain = _score(client, item, model="qwen2-prm", aggregate="min")
        last = _score(client, item, model="qwen2-prm", aggregate="last")
        assert last.pop("cached") is True
        assert last["step_rewards"] == plain["step_rewards"] and last["score"] == plain["step_rewards"][-1]


@pytest.mark.e2e  # outside program: redis-server
@needs_redis
def test_redis_hits_ttl_and_corruption(tiny_model_dirs, load_tiny, redis_process):
    settings = _settings(tiny_model_dirs, cache={"max_bytes": 0, "redis_url": redis_process.url},
                         **{"llama-scalar_config": {"cache_ttl_s": 1.0}})
    model = load_tiny("llama-scalar")
    key = cache_key("llama-scalar", model.revision, model.encode(served_input(PAIR)))
    with serving(settings) as (app, client):
        first = _score(client, PAIR)
        poll(
            lambda: httpx.Response(200, json={"n": redis_process.client().exists(key)}),
            lambda r: r.json()["n"] == 1,
            10,
        )
        assert _score(client, PAIR).pop("cached") is True
        assert app.state.registry.cache.stats.hits["redis"] == 1

        redis_process.client().set(key, b"\x00not an entry")
        recomputed = _score(client, PAIR)
        assert "cached" not in recomputed and recomputed == first
        poll(
            lambda: httpx.Response(
                200, json={"ok": decode_output(redis_process.client().get(key) or b"", None) is not None}
            ),
            lambda r: r.json()["ok"],
            10,
        )  # the garbage was overwritten with a valid entry

        ttl_ms = redis_process.client().pttl(key)
        assert 0 < ttl_ms <= 1000
        poll(
            lambda: httpx.Response(200, json={"n": redis_process.client().exists(key)}),
            lambda r: r.json()["n"] == 0,
            10,
        )
        assert "cached" not in _score(client, PAIR)
        assert app.state.registry.cache.stats.errors == 0


@pytest.mark.e2e  # outside program: redis-server
@needs_redis
def test_new_revision_never_reads_old_entries(tiny_model_dirs, tmp_path, redis_process):
    """Same name, same input, changed spec (so a new revision): a miss, not the old score."""
    copy = tmp_path / "llama-scalar"
    shutil.copytree(tiny_model_dirs["llama-scalar"], copy)
    settings = Settings(models=[ModelConfig(name="rm", path=str(copy))],
                        cache={"max_bytes": 0, "redis_url": redis_process.url})
    with serving(settings) as (app, client):
        _score(client, PAIR, model="rm")
        poll(
            lambda: httpx.Response(200, json={"n": len(redis_process.client().keys("rewardserve:*"))}),
            lambda r: r.json()["n"] == 1,
            10,
        )
        assert _score(client, PAIR, model="rm")["cached"] is True
    (copy / "reward_spec.yaml").write_text(yaml.safe_dump({"kind": "scalar", "max_length": 200}))
    with serving(settings) as (app, client):
        assert "cached" not in _score(client, PAIR, model="rm")


@pytest.mark.e2e  # outside program: redis-server
@needs_redis
def test_two_server_processes_share_hits(tiny_model_dirs, tmp_path, load_tiny, redis_process):
    config = write_config(tmp_path / "config.yaml", {"llama-scalar": tiny_model_dirs["llama-scalar"]},
                          cache={"redis_url": redis_process.url, "max_bytes": 0,
                                 "redis_timeout_ms": 5000})  # a busy machine must not turn a hit into a fail-open miss
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", str(p)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports]
        for client in clients:
            poll(lambda c=client: c.get("/health/ready"), lambda r: r.status_code == 200, 90)
        first = _score(clients[0], PAIR)
        poll(
            lambda: httpx.Response(200, json={"n": len(redis_process.client().keys("rewardserve:*"))}),
            lambda r: r.json()["n"] == 1,
            10,
        )
        shared = _score(clients[1], PAIR)
        assert shared.pop("cached") is True and shared == first
        assert_result_matches(shared, reference(load_tiny("llama-scalar"), PAIR))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.e2e  # outside program: redis-server
@needs_redis
def test_redis_killed_mid_load_then_restarted(tiny_model_dirs, load_tiny, redis_process):
    """No request fails while Redis is gone (errors are counted instead), and hits resume
    once it is back."""
    settings = _settings(tiny_model_dirs,
                         cache={"max_bytes": 0, "redis_url": redis_process.url, "redis_timeout_ms": 50})
    model = load_tiny("llama-scalar")
    items = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(30)]
    with serving(settings) as (app, client):
        for i, item in enumerate(items):
            if i == 10:
                redis_process.stop()
            assert_result_matches(
                {k: v for k, v in _score(client, item).items() if k != "cached"}, reference(model, item)
            )
        stats = app.state.registry.cache.stats
        assert stats.errors > 0

        redis_process.start()
        poll(lambda: httpx.Response(200, json=_score(client, items[0])), lambda r: r.json().get("cached") is True, 20)
        # the breaker closed again: fresh writes land and are read back
        _score(client, OTHER)
        poll(lambda: httpx.Response(200, json=_score(client, OTHER)), lambda r: r.json().get("cached") is True, 20)
