"""The worker processes rules and user functions run in, so that one item's hang, endless
loop or crash costs that item alone: each call has a wall-clock limit past which its worker
is killed and replaced (pebble), and a worker that dies answers its item with an error.

Workers start from a forkserver that has imported the rules (math-verify, transformers)
once: the server's process holds torch threads and gRPC, which do not survive a fork, and a
replacement worker forked from a warm server costs milliseconds, not a cold import."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal

from pebble import ProcessExpired, ProcessPool

from service.pipelines.rules import BUILTIN_RULES, RuleInput, call_python, math_verify, resolve_function

log = logging.getLogger(__name__)

PRELOAD = ["service.pipelines.rules"]


@dataclass(frozen=True)
class Outcome:
    """One call's result: a value, or why there is none."""

    status: Literal["ok", "timeout", "error"]
    value: float | None = None
    message: str | None = None  # for timeout and error: what happened, short
    extras: dict[str, float] | None = None  # a user function's other numeric keys


# ---- in the worker ------------------------------------------------------------------------


def _warm_worker() -> None:
    """Each worker's first math-verify call builds its parsers before a timed call can."""
    # killed past its limit, a worker stuck in C code dies at once (pebble's handler would
    # wait for the interpreter, and pebble gives it 3 s before SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # math-verify warns once that its own (signal-based) timeout is off: the pool's limit replaces it
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_verify(RuleInput(response="1", ground_truth="1"))


def _rule(name: str, params: dict, item: RuleInput) -> tuple[float, None]:
    return BUILTIN_RULES[name](item, **params), None


def _check(function: str) -> tuple[None, None]:
    resolve_function(function)
    return None, None


def _work(fn, *args) -> Outcome:
    """Runs in a worker: an exception comes back as text, since a user's own exception class
    may not unpickle in the server."""
    try:
        value, extras = fn(*args)
    except Exception as error:  # noqa: BLE001 - any failure of one item is that item's error
        return Outcome("error", message=f"{type(error).__name__}: {error}")
    return Outcome("ok", value, extras=extras)


# ---- in the server ------------------------------------------------------------------------


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker process killed by signal {-exitcode} ({signal.strsignal(-exitcode)})"
    return f"worker process died (exit code {exitcode})"


def _started_pool(workers: int) -> ProcessPool:
    """A pool whose workers are up and warm (blocking: run in a thread)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # only the first start of the forkserver reads it
    pool = ProcessPool(max_workers=workers, initializer=_warm_worker, context=context)
    for future in [pool.schedule(os.getpid) for _ in range(workers)]:
        future.result()
    return pool


class RulePool:
    """Runs rules and user functions in `workers` processes, each call under its own limit."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"a rule pool needs at least one worker, got {workers}")
        self.workers = workers
        self._pool: ProcessPool | None = None
        self._restarting = asyncio.Lock()
        self._pending: set[Future] = set()  # answered when the pool closes, as pebble leaves them

    async def start(self) -> None:
        """Workers up and warm, so no timed call pays for an import."""
        if self._pool is None:
            self._pool = await asyncio.to_thread(_started_pool, self.workers)

    async def rule(self, name: str, params: dict, item: RuleInput, timeout_s: float) -> Outcome:
        if name not in BUILTIN_RULES:
            raise ValueError(f"unknown rule {name!r}; one of {', '.join(BUILTIN_RULES)}")
        return await self._call(timeout_s, _rule, name, params, item)

    async def python(self, function: str, item: RuleInput, timeout_s: float) -> Outcome:
        return await self._call(timeout_s, call_python, function, item)

    async def check_python(self, function: str, timeout_s: float) -> None:
        """Raises ValueError saying why `function` cannot be imported, found or called."""
        outcome = await self._call(timeout_s, _check, function)
        if outcome.status == "error" and outcome.message.startswith("ValueError: "):
            raise ValueError(outcome.message.removeprefix("ValueError: "))  # it names the function
        if outcome.status != "ok":
            raise ValueError(f"{function!r}: {outcome.message}")

    async def close(self) -> None:
        """Stops the workers; calls still waiting are answered with an error."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            await asyncio.to_thread(pool.join)
        for future in [f for f in self._pending if not f.done()]:
            future.set_exception(BrokenProcessPool("the rule pool closed"))

    async def _call(self, timeout_s: float, fn, *args) -> Outcome:
        """One call in a worker; the limit counts from when a worker takes it. A task that
        pebble aborts with its pool had not started (a pool breaks when a worker dies with no
        task running), so it is tried once more, on a fresh pool."""
        if not timeout_s > 0:  # pebble reads 0 as no limit
            raise ValueError(f"a call's limit must be positive, got {timeout_s}")
        for retries in (1, 0):
            future = (await self._running()).schedule(_work, args=(fn, *args), timeout=timeout_s)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
            try:
                return await asyncio.wrap_future(future)  # cancelling the caller cancels the task
            except TimeoutError:
                return Outcome("timeout", message=f"timed out after {float(timeout_s)} s")
            except ProcessExpired as expired:
                return Outcome("error", message=_died(expired.exitcode))
            except BrokenProcessPool as broken:
                if not retries or self._pool is None:
                    return Outcome("error", message=f"worker pool stopped: {broken}")

    async def _running(self) -> ProcessPool:
        """The pool, started afresh if pebble gave up on it (as it does when a worker dies
        while no task runs)."""
        if self._pool is None:
            raise RuntimeError("the rule pool is not running (not started, or closed)")
        if not self._pool.active:
            async with self._restarting:
                if self._pool is not None and not self._pool.active:
                    log.warning("rule worker pool broke; starting a new one")
                    broken, self._pool = self._pool, await asyncio.to_thread(_started_pool, self.workers)
                    broken.stop()
                    await asyncio.to_thread(broken.join)
        return self._pool
