"""One served model: its load and warm-up, its scheduler, and the threads its batches run on.

Tokenization runs in the shared thread pool, forwards on the model's own thread and the
building of the next batch's inputs on another, so the event loop stays responsive,
tokenizing one request never waits behind another's forward, and a batch is ready to run
when the forward before it ends. The scheduler batches items across requests; offline scoring (`forward_all`),
which holds every item up front, cuts length-sorted batches directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from models.encoding import texts_of
from models.errors import InputError
from models.heads import RewardOutput
from models.inputs import Encoded, ScoreInput, TokenIds
from models.reward_model import ModelInfo, RewardModel, warmup_inputs
from service.config import ModelConfig, Settings
from service.engine.admission import QueueFull, Ticket
from service.engine.cache import (
    ResultCache,
    cache_key,
    decode_output,
    encode_output,
)
from service.engine.observer import RunnerObserver
from service.engine.scheduler import Scheduler
from service.protocol.enums import CacheMode, Priority, Truncate

log = logging.getLogger("rewardserve")
T = TypeVar("T")
WARMUP_ROUNDS = 3  # timed warm-up forwards of each batch size; the fastest counts


class ItemError(Exception):
    """Why one item of a request could not be scored, tagged with its index: an
    InputError from encoding, or the scheduler's ItemTimeout / forward_thread.ItemFailed."""

    def __init__(self, index: int, error: Exception):
        super().__init__(str(error))
        self.index, self.error = index, error


def plan_batches(lengths: list[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, each within both budgets
    (padded tokens = longest item x batch size)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) >= max_items or lengths[index] * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class ModelRunner:
    def __init__(self, config: ModelConfig, settings: Settings, cache: ResultCache | None = None):
        self.config = config
        self.cache = cache if config.cache else None
        self.max_batch_size = settings.batching.max_batch_size
        self.max_batch_tokens = settings.batching.max_batch_tokens
        self.status = "loading"
        self.error: str | None = None
        self.model: RewardModel | None = None
        self.load_seconds: float | None = None
        self.chars_per_token = 4.0  # measured as items are tokenized; sizes requests before they are
        self.observer = RunnerObserver()  # service.monitoring installs the real one
        self._active = 0  # requests and graph forwards admitted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{config.name}")
        self._prepare_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prepare-{config.name}")
        self.scheduler = Scheduler(
            lambda batch: self.model.forward(batch),
            self._forward_thread,
            prepare=(lambda batch: self.model.prepare(batch)) if config.pipelines() else None,
            prepare_executor=self._prepare_thread,
            prepare_alone=lambda batch: self.model.prepare_alone(batch),
            batching=settings.batching,
            queue=settings.queue,
            cost_clock=lambda: self.model.forward_clock(),
            on_batch=lambda record: self.observer.batch(record),
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def info(self) -> ModelInfo | None:
        return self.model.info if self.model else None

    def load(self) -> None:
        """Blocking: load from disk, then one warm-up forward before declaring ready."""
        started = time.perf_counter()
        try:
            config = self.config
            model = RewardModel.load(self.name, config.resolved_path(download=True), config.spec,
                                     device=config.resolved_device(), dtype=config.resolved_dtype(),
                                     backend=config.backend, packed=config.packed, share_prefix=config.share_prefix,
                                     adapters=config.resolved_adapters())
            model.score(warmup_inputs(model.spec.kind), truncate="right")
            self._measure_warm_forward(model)
            if config.serve_graph:  # its tensors' shapes, read off one forward before any request runs
                _ = model.graph_contract
        except Exception as err:  # a model that fails to load must not take the others down
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.name, self.error,
                      exc_info=log.isEnabledFor(logging.DEBUG))  # the traceback under --debug
            return
        self.load_seconds = time.perf_counter() - started
        self.model, self.status = model, "ready"
        log.info("model %s ready in %.1fs (%s)", self.name, time.perf_counter() - started, model.revision[:19])

    def _measure_warm_forward(self, model: RewardModel) -> None:
        """Timed warm-up forwards, so the queue's time bound holds from the first burst: its
        forward cost, a cost per batch plus a cost per token, needs two batch sizes to tell
        them apart (1 and 8 items). The items are of a realistic length (a few hundred
        tokens) and all alike, unpadded as the scheduler's length-grouped batches nearly
        are: padding would count as real tokens and make every token look dearer. The sizes
        take turns for WARMUP_ROUNDS rounds and each one's fastest counts: a shape's first
        forward pays one-time costs, and a busy machine's stalls would pass for the model's
        cost. Unshared: the items repeat, which prefix sharing would compute once."""
        item = model.encode(warmup_inputs(model.spec.kind, repeat=32)[1], "right")
        batches = ([item], [item] * 8)
        fastest = [math.inf] * len(batches)
        for _ in range(WARMUP_ROUNDS):
            for i, batch in enumerate(batches):
                started = model.forward_clock()
                model.forward_unshared(batch)
                fastest[i] = min(fastest[i], model.forward_clock() - started)
        for batch, seconds in zip(batches, fastest):
            self.scheduler.admission.forwarded(sum(e.num_tokens for e in batch), seconds)

    def encode_all(self, inputs: list[ScoreInput], truncate: Truncate | None, item_errors: bool = False,
                   keep: int | None = None, adapter: str | None = None) -> list[Encoded | ItemError]:
        """Every item tokenized (cut to `keep` tokens with `truncate`: Encoder.encode), to be
        scored by `adapter`; one that cannot be raises its ItemError, or with `item_errors`
        stands in the list in its place."""
        encoded: list[Encoded | ItemError] = []
        for index, item in enumerate(inputs):
            try:
                encoded.append(dataclasses.replace(self.model.encode(item, truncate, keep), adapter=adapter))
            except InputError as err:
                if not item_errors:
                    raise ItemError(index, err) from err
                encoded.append(ItemError(index, err))
        return encoded

    def estimated_tokens(self, inputs: list[ScoreInput]) -> int:
        """The tokens `inputs` will take, from their characters, before tokenizing them."""
        max_length = self.model.info.max_length
        total = 0
        for item in inputs:
            if isinstance(item, TokenIds):
                total += min(len(item.input_ids), max_length)
            else:
                chars = sum(len(text) for _, text in texts_of(item))
                total += min(int(chars / self.chars_per_token) + 1, max_length)
        return total

    def _measure_chars_per_token(self, inputs: list[ScoreInput], encoded: list[Encoded | ItemError]) -> None:
        chars = tokens = 0
        for item, enc in zip(inputs, encoded):
            if isinstance(enc, Encoded) and not enc.truncated and not isinstance(item, TokenIds):
                chars += sum(len(text) for _, text in texts_of(item))
                tokens += enc.num_tokens
        if chars and tokens:
            self.chars_per_token = 0.9 * self.chars_per_token + 0.1 * (chars / tokens)

    def forward_all(self, encoded: list[Encoded]) -> list[RewardOutput]:
        """Blocking: every item, in batches, on the calling thread."""
        outputs: list[RewardOutput | None] = [None] * len(encoded)
        for batch in plan_batches([e.num_tokens for e in encoded], self.max_batch_size, self.max_batch_tokens):
            for index, output in zip(batch, self.model.forward([encoded[i] for i in batch])):
                outputs[index] = output
        return outputs

    async def score(self, inputs: list[ScoreInput], truncate: Truncate | None,
                    priority: Priority = Priority.interactive, deadline: float | None = None,
                    cache_mode: CacheMode = CacheMode.use, item_errors: bool = False,
                    keep: int | None = None, alone: bool = False,
                    adapter: str | None = None, token_rewards: bool = False) -> list[RewardOutput | ItemError]:
        """Every item scored, in request order: cache hits answered at once, the rest
        through the scheduler. `deadline` is a time.monotonic() instant; `keep`: what
        `truncate` cuts to (default max_length). The request is
        admitted (or QueueFull) before it is tokenized. An item that fails raises its
        ItemError, or with `item_errors` is answered by it while the rest are scored. With
        `alone`, each item is forwarded in a batch of its own (Scheduler.submit), so its score
        is the same bits whatever else is queued; the cache keeps those results apart, so an
        item scored alone is never answered by a batched result nor a batched one by it.
        `adapter`: the LoRA adapter that scores every item (None: the base model); items of
        different adapters never share a forward, a cache entry or an in-flight computation. An
        implicit model's token rewards are returned and cached only with `token_rewards`, so
        entries stay small where they are not asked for and a request asking for them reads
        entries that have them."""
        with self._serving():
            self.observer.request()
            try:
                ticket = self.scheduler.admission.admit(len(inputs), self.estimated_tokens(inputs), priority)
            except QueueFull:
                self.observer.rejected(len(inputs))
                raise
            try:
                return await self._score(inputs, truncate, priority, deadline, cache_mode, item_errors, ticket, keep,
                                         alone, adapter, token_rewards)
            finally:
                self.scheduler.admission.release(ticket)

    async def _score(self, inputs: list[ScoreInput], truncate: Truncate | None, priority: Priority,
                     deadline: float | None, cache_mode: CacheMode, item_errors: bool,
                     ticket: Ticket, keep: int | None, alone: bool,
                     adapter: str | None, token_rewards: bool) -> list[RewardOutput | ItemError]:
        started = time.perf_counter()
        encoded = await asyncio.to_thread(self.encode_all, inputs, truncate, item_errors, keep, adapter)
        self._measure_chars_per_token(inputs, encoded)
        results: list[RewardOutput | ItemError | None] = [e if isinstance(e, ItemError) else None for e in encoded]
        todo = [i for i, result in enumerate(results) if result is None]
        self.observer.tokenized([encoded[i] for i in todo], time.perf_counter() - started)
        keys = {}
        if self.cache is not None and cache_mode != CacheMode.bypass:
            scorer = None if adapter is None else (adapter, self.model.info.adapters[adapter])
            keys = {i: cache_key(self.name, self.model.revision, encoded[i], alone, scorer, token_rewards)
                    for i in todo}
            if cache_mode == CacheMode.use:
                dimensions = self.model.info.dimensions
                for index, (blob, _) in zip(
                    todo, await self.cache.get_many(list(keys.values()), self.config.cache_ttl_s)
                ):
                    results[index] = decode_output(blob, dimensions) if blob is not None else None
        misses = [i for i in todo if results[i] is None]
        if len(misses) < len(todo):
            self.observer.cache_hits(len(todo) - len(misses), time.perf_counter() - started)
        timeout_s = None if deadline is None else deadline - time.monotonic()
        outputs = (
            await self.scheduler.submit([encoded[i] for i in misses], priority, timeout_s, ticket, alone)
            if misses else []
        )
        self.observer.scheduled(outputs)
        returned = time.perf_counter()
        for index, output in zip(misses, outputs):
            if isinstance(output, BaseException):
                output = ItemError(index, output)
                if not item_errors:
                    raise output
            elif output.token_rewards is not None and not token_rewards:
                output = replace(output, token_rewards=None)
            results[index] = output
        if keys:
            self.cache.put_many([(keys[i], encode_output(results[i])) for i in misses
                                 if not isinstance(results[i], ItemError)], self.config.cache_ttl_s)
        self.observer.scored([r for r in results if not isinstance(r, ItemError)], time.perf_counter() - returned)
        return results

    async def run_forward(self, forward: Callable[[], T], items: int, tokens: int, priority: Priority) -> T:
        """`forward()`, a forward the scheduler does not batch (a request to the served
        graph), run on the model's forward thread between the scheduler's batches, so it
        never runs beside another forward of the same model. It is admitted like a
        request of `items` items of `tokens` tokens (or QueueFull), and its room is held
        until it has run, so the queue's bounds count it."""
        with self._serving():
            try:
                ticket = self.scheduler.admission.admit(items, tokens, priority)
            except QueueFull:
                self.observer.rejected(items)
                raise
            try:
                return await asyncio.get_running_loop().run_in_executor(self._forward_thread, forward)
            finally:
                self.scheduler.admission.release(ticket)

    @contextlib.contextmanager
    def _serving(self):
        """Counts a call in flight from its first (synchronous) step: a caller that looked this
        runner up and called it before the registry replaced it is waited for by `drained`."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        """Waits until no call is in flight (at most `timeout_s`); whether none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.scheduler.close()
        for thread in (self._prepare_thread, self._forward_thread):
            thread.shutdown(wait=False, cancel_futures=True)
