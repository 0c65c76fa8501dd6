"""Helpers shared by the HTTP, CLI and config tests: a real uvicorn server on a free
loopback port (and a rewardserve app served there, loaded), bounded polling, YAML configs,
sample items per model and the comparison of a JSON result with the unbatched reference
`RewardModel.score([item])`, and the shape of JSON errors."""

from __future__ import annotations

import functools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import TypeAdapter

from loadtests.servers import free_port  # noqa: F401 - re-exported for the tests
from models.heads import RewardOutput
from models.inputs import ScoreInput
from models.reward_model import RewardModel
from models.spec import ModelKind
from service.app import create_app
from service.config import Settings
from service.core.inputs import item_input
from service.http.protocol import BoundedH11Protocol
from service.protocol.scoring import ScoreItem

TOL = 1e-5
_parse_item = TypeAdapter(ScoreItem).validate_python


@contextmanager
def live_server(app, startup_timeout: float = 30.0, **uvicorn_options) -> Iterator[str]:
    """Serve `app` with uvicorn on a real loopback socket in a background thread; yields
    the base URL (https:// when `uvicorn_options` carry a certificate). The socket is bound
    before the server starts, so there is no port race. A rewardserve app is served over the
    protocol `rewardserve serve` runs (its bounds on request heads and bodies)."""
    if hasattr(app.state, "settings"):
        uvicorn_options = {"http": functools.partial(BoundedH11Protocol, settings=app.state.settings),
                           **uvicorn_options}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options))
    try:
        with running(server, [sock], startup_timeout) as port:
            yield f"{'https' if 'ssl_certfile' in uvicorn_options else 'http'}://127.0.0.1:{port}"
    finally:
        sock.close()


@contextmanager
def running(server: uvicorn.Server, sockets: list[socket.socket] | None = None,
            startup_timeout: float = 30.0) -> Iterator[int]:
    """Run a uvicorn `server` (on `sockets`, else where its config says; port 0 picks a
    free one) in a background thread until the block ends; yields the port it listens on."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.02)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not shut down"



@dataclass
class Served:
    """A live rewardserve: its app, base URL and an HTTP client on it; `grpc_target` is its
    gRPC port's host:port (when gRPC is on)."""

    app: FastAPI
    url: str
    http: httpx.Client

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.state.grpc_port}"


@contextmanager
def serve(settings: Settings, *, ready: bool = True, timeout: float = 60.0, **uvicorn_options) -> Iterator[Served]:
    """`settings` served by `create_app` under a real uvicorn on loopback (live_server) until
    the block ends, once no model is loading any more; with `ready`, every model must have
    loaded. The HTTP client's timeout and the wait for loading are `timeout` seconds."""
    app = create_app(settings)
    with live_server(app, **uvicorn_options) as url, httpx.Client(base_url=url, timeout=timeout) as http:
        loaded = wait_until_loaded(http, timeout)
        if ready:
            assert loaded.status_code == 200, loaded.text
        yield Served(app, url, http)


def hung_up(sock: socket.socket) -> bytes:
    """What the server sent on `sock` before it closed the connection (b"" for a bare close
    or a reset); bounded by the socket's timeout."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def poll(fetch: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool],
         timeout: float = 60.0, interval: float = 0.05) -> httpx.Response:
    """Call `fetch` until `done(response)`, at most `timeout` seconds; the last response.
    Connection errors count as not done (a server still starting)."""
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    for _ in range(int(timeout / interval) + 1):
        try:
            last = fetch()
            if done(last):
                return last
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    pytest.fail(f"gave up after {timeout}s; last response: {last and (last.status_code, last.text)}")


def wait_until_loaded(client, timeout: float = 60.0) -> httpx.Response:
    """Poll /health/ready until no model is loading any more; the final response."""
    return poll(lambda: client.get("/health/ready"), lambda r: r.json()["status"] != "loading", timeout)


def write_config(path: Path, model_dirs: dict[str, Path], **settings) -> Path:
    """A YAML server config serving `model_dirs` ({name: directory}) plus `settings`."""
    body = {"models": [{"name": name, "path": str(d)} for name, d in model_dirs.items()], **settings}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """The response is `{"error": {"code", "message", "field"}}` with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "field"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert error["field"] == field, error
    return error


# ---- items and references ------------------------------------------------------------

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)


def sample_items(model: RewardModel) -> list[dict]:
    """Request items in every form `model` accepts, of quite different lengths, in an order
    that is not sorted by length (so batching must restore it)."""
    def encode(item: dict):
        return model.encode(item_input(_parse_item(item)))

    if model.spec.kind == ModelKind.process:
        short = {"prompt": "What is 3 + 4?", "steps": ["3 + 4 = 7", "The answer is 7."]}
        long = {"prompt": f"Explain, then compute. {LONG_TEXT}", "steps": ["Add 3 and 4 to get 7.", LONG_TEXT,
                                                                          "Multiply 7 by 2 to get 14.", "14"]}
        return [long, {"input_ids": encode(short).input_ids}, short,
                {"prompt": "Natalia sold clips.", "steps": ["She sold 48.", "Then 24.", "72 in all."]},
                {"input_ids": encode(long).input_ids}]
    pair = {"prompt": "Please answer the question clearly.", "response": "A helpful assistant answers politely."}
    enc = encode(pair)
    return [
        {"prompt": f"Tell me a story. {LONG_TEXT}", "response": LONG_TEXT},
        {"prompt": "Hi", "response": "Hello!"},
        {"input_ids": enc.input_ids, "prompt_length": enc.prompt_length},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                      {"role": "assistant", "content": "4"}]},
        pair,
        {"messages": [{"role": "user", "content": LONG_TEXT}, {"role": "assistant", "content": "I cannot help."}]},
    ]


def served_input(item: dict) -> ScoreInput:
    """A JSON item as the model layer receives it."""
    return item_input(_parse_item(item))


def reference(model: RewardModel, item: dict, truncate: str | None = None) -> RewardOutput:
    """The unbatched reference: `item` scored alone, straight through RewardModel."""
    return model.score([served_input(item)], truncate)[0]


def assert_result_matches(result: dict, expected: RewardOutput, tol: float = TOL) -> None:
    """A JSON result (HTTP or CLI) carries the reference's numbers: score, dimensions,
    gating weights and step rewards within `tol`, token count and truncation exactly, and
    no field the reference does not have."""
    assert result["num_tokens"] == expected.num_tokens
    assert result["truncated"] is expected.truncated
    assert math.isclose(result["score"], expected.score, rel_tol=0, abs_tol=tol), (result["score"], expected.score)
    if expected.dimensions is None:
        assert "dimensions" not in result
    else:
        assert list(result["dimensions"]) == list(expected.dimensions)
        assert result["dimensions"] == pytest.approx(expected.dimensions, abs=tol, rel=0)
    for field in ("gating_weights", "step_rewards"):
        want = getattr(expected, field)
        if want is None:
            assert field not in result, field
        else:
            assert len(result[field]) == len(want), field
            assert result[field] == pytest.approx(want, abs=tol, rel=0), field


def within_tol(value, tol: float = TOL):
    """`value` (nested dicts and lists) with every float replaced by pytest.approx, so it
    compares equal to a result that differs only by batching's float rounding."""
    if isinstance(value, float):
        return pytest.approx(value, abs=tol, rel=0)
    if isinstance(value, dict):
        return {key: within_tol(v, tol) for key, v in value.items()}
    if isinstance(value, list):
        return [within_tol(v, tol) for v in value]
    return value
