"""A real redis-server on a free loopback port, started and stopped by whoever needs one
(the cache benchmark, the cache tests); stoppable and restartable on the same port."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from loadtests.servers import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout_s: float = 10.0) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("redis-server did not answer PING in time")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
