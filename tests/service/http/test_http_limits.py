"""Clients that send bad or slow traffic, over raw loopback sockets, against `rewardserve
serve` in a subprocess with API keys on: a request head past `max_header_bytes` is 431
before the key is looked at, however it arrives, and the server's memory does not grow
with it; a client that trickles a head gets 408 once `header_timeout_s` has passed, one
that trickles a body is disconnected once `body_timeout_s` has, and authenticated requests
are served while such clients hold connections."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from http_helpers import assert_error, free_port, hung_up, poll, write_config

SCALAR = "llama-scalar"
KEY = "test-key"
MAX_HEADER_BYTES = 65536  # the default
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
SLOW_CLIENTS = 20  # of each kind
WAIT_S = 30  # bound on every wait for the server to answer or hang up
PAIRS = {"model": SCALAR, "items": [{"prompt": "What is 2 + 2?", "response": "4"}]}


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)

    def peak_rss(self) -> int:
        """The server process's peak resident memory so far, in bytes (VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024

    def score(self) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/score", json=PAIRS, headers={"x-api-key": KEY}, timeout=WAIT_S)


@pytest.fixture(scope="module")
def server(tiny_model_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    config = write_config(tmp / "config.yaml", {SCALAR: tiny_model_dirs[SCALAR]},
                          server={"port": port, "grpc_port": 0, "header_timeout_s": HEADER_TIMEOUT_S,
                                  "body_timeout_s": BODY_TIMEOUT_S, "log_level": "warning"}, auth={"api_keys": [KEY]})
    log = tmp / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
                                   env={k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")},
                                   stderr=stderr)
    served = Server(process, port, log)
    try:
        poll(lambda: httpx.get(f"{served.url}/health/ready"), lambda r: r.status_code == 200, timeout=120)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def response_of(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body the server answered on `sock` before closing it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def head(path: str, *lines: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


def test_a_head_past_the_limit_is_431_before_the_key_is_checked(server):
    padding = "x" * (MAX_HEADER_BYTES - 200)
    with server.connect() as sock:  # under the limit and no key: the key is checked
        sock.sendall(head("/v1/models", f"X-Padding: {padding}", "Connection: close"))
        status, body = response_of(sock)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    with server.connect() as sock:  # under the limit with a key: served
        sock.sendall(head("/v1/models", f"X-Padding: {padding}", f"X-Api-Key: {KEY}", "Connection: close"))
        assert response_of(sock)[0] == 200
    for split in (False, True):  # past it, arriving in one read or in pieces
        request = head("/v1/models", f"X-Padding: {padding}", f"X-More: {'y' * 400}", f"X-Api-Key: {KEY}")
        with server.connect() as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before the end
                for offset in range(0, len(request), 1000 if split else len(request)):
                    sock.sendall(request[offset:offset + 1000 if split else len(request)])
            status, body = response_of(sock)
        assert status == 431
        assert body["error"]["code"] == "request_header_too_large" and "max_header_bytes" in body["error"]["message"]


def test_a_huge_header_is_refused_without_the_server_holding_it(server):
    """The report's attack: one header value of 256 MiB, sent as fast as the client can."""
    before = server.peak_rss()
    chunk = b"a" * 2**20
    sent = 0
    with server.connect() as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
        try:
            for _ in range(256):
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = hung_up(sock)
    assert sent < 64 * 2**20, "the server kept reading the header"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert server.peak_rss() - before < 16 * 2**20
    assert server.score().status_code == 200


def test_slow_clients_are_cut_off_and_others_are_served_meanwhile(server):
    """Slowloris: clients that connect and send nothing, or trickle a head or a body, a
    byte at a time, each from a thread of its own, until the server hangs up."""
    trickle_body = head("/v1/score", f"X-Api-Key: {KEY}", "Content-Type: application/json",
                        "Content-Length: 1000").replace(b"GET", b"POST", 1)
    kinds = {"silent": (b"", b""), "slow head": (b"", b"GET /v1/models HTTP/1.1\r\nX-Slow: "),
             "slow body": (trickle_body, b'{"items": [' + b" " * 900)}
    answers: dict[tuple[str, int], bytes] = {}
    connected = threading.Barrier(len(kinds) * SLOW_CLIENTS + 1, timeout=WAIT_S)

    def client(kind: str, index: int) -> None:
        first, trickled = kinds[kind]
        with server.connect() as sock:
            sock.sendall(first)
            connected.wait()
            sock.settimeout(0.1)
            deadline = time.monotonic() + WAIT_S
            for byte in trickled:
                try:
                    sock.send(bytes([byte]))
                    sock.recv(1, socket.MSG_PEEK)
                    break  # the server answered or hung up
                except TimeoutError:
                    if time.monotonic() > deadline:
                        break
                except (BrokenPipeError, ConnectionResetError):
                    break
            sock.settimeout(WAIT_S)
            answers[kind, index] = hung_up(sock)

    threads = [threading.Thread(target=client, args=(kind, i)) for kind in kinds for i in range(SLOW_CLIENTS)]
    for thread in threads:
        thread.start()
    connected.wait()  # every slow client holds its connection
    served = server.score()
    for thread in threads:
        thread.join(timeout=WAIT_S + 10)
    assert served.status_code == 200, served.text
    assert len(answers) == len(threads), "a slow client was never disconnected"
    for (kind, _), answer in answers.items():
        if kind == "slow body":
            assert answer == b""  # the handler saw its client go; no answer
        else:
            assert answer.startswith(b"HTTP/1.1 408 ")
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert error["code"] == "request_timeout" and "header_timeout_s" in error["message"]
    assert_error(httpx.post(f"{server.url}/v1/score", json=PAIRS, timeout=WAIT_S), 401, "unauthorized")
