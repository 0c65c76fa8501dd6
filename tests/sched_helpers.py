"""Helpers shared by the scheduler tests: a gate around a real model forward that holds the
model busy until the test lets it go and records what every forward was given, and a
bounded wait for a condition another thread or task makes true. Ordering is controlled
with these, never with sleeps of a guessed length."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable

from models.inputs import Encoded


def ids(enc: Encoded) -> tuple[int, ...]:
    return tuple(enc.input_ids)


def intercept_forward(monkeypatch, model, wrap: Callable[[Callable], Callable]) -> Callable:
    """Route every batch a served RewardModel runs through `wrap(its own forward)`, which is
    returned: `forward`, and `prepare` (what the scheduler calls, to run the batch later)."""
    own_prepare = model.prepare
    wrapped = wrap(lambda batch: own_prepare(batch)())
    monkeypatch.setattr(model, "forward", wrapped)
    monkeypatch.setattr(model, "prepare", lambda batch: functools.partial(wrapped, batch))
    return wrapped


class GatedForward:
    """Wraps a real `forward(batch)`. Each call is recorded in `entered` as it starts, then
    waits for the gate: one call per `step()`, or every call once `open()`. Past the gate,
    a batch holding an item `poison(enc)` picks raises `error` (a stand-in for a device
    failure on that input); any other batch is recorded in `forwarded` and runs the real
    forward. No call waits more than `limit` seconds."""

    def __init__(self, forward: Callable[[list[Encoded]], list], *, held: bool = True,
                 poison: Callable[[Encoded], bool] | None = None,
                 error: Callable[[str], Exception] = RuntimeError, limit: float = 30.0):
        self._forward = forward
        self._cond = threading.Condition()
        self._open = not held
        self._permits = 0
        self.poison = poison
        self.error = error
        self.limit = limit
        self.entered: list[list[Encoded]] = []
        self.forwarded: list[list[Encoded]] = []
        self.stuck = False

    def __call__(self, batch: list[Encoded]) -> list:
        with self._cond:
            self.entered.append(list(batch))
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._open or self._permits > 0, timeout=self.limit):
                self.stuck = True
                raise RuntimeError("the test never released the gate")
            if not self._open:
                self._permits -= 1
        if self.poison is not None and any(self.poison(enc) for enc in batch):
            raise self.error("poisoned input in batch")
        with self._cond:
            self.forwarded.append(list(batch))
        return self._forward(batch)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def step(self, calls: int = 1) -> None:
        with self._cond:
            self._permits += calls
            self._cond.notify_all()

    def wait_entered(self, count: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.entered) >= count, timeout=timeout)

    async def until_entered(self, count: int, timeout: float = 30.0) -> None:
        """From async code: wait (bounded) until `count` forwards have started."""
        assert await asyncio.to_thread(self.wait_entered, count, timeout), \
            f"only {len(self.entered)} forwards started, expected {count}"

    def forwarded_ids(self) -> list[tuple[int, ...]]:
        """Every item that reached the real model, once per forward it was in."""
        with self._cond:
            return [ids(enc) for batch in self.forwarded for enc in batch]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until `predicate()` holds, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.005)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """`until` for synchronous code: poll `predicate()` from this thread."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)
