"""One served model: its load and warm-up, its scheduler, and the thread its forwards run on.

Tokenization runs in the shared thread pool and forwards on the model's own thread, so the
event loop stays responsive and tokenizing one request never waits behind another's
forward. The scheduler batches items across requests; offline scoring (`forward_all`),
which holds every item up front, cuts length-sorted batches directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from models.errors import InputError
from models.heads import RewardOutput
from models.inputs import Encoded, ScoreInput, Truncate
from models.reward_model import ModelInfo, RewardModel, warmup_inputs
from service.config import ModelConfig, Settings
from service.engine.cache import (
    CacheMode,
    ResultCache,
    cache_key,
    decode_output,
    encode_output,
)
from service.engine.observer import RunnerObserver
from service.engine.scheduler import Priority, QueueFull, Scheduler

log = logging.getLogger("rewardserve")


class ItemError(Exception):
    """Why one item of a request could not be scored, tagged with its index: an
    InputError from encoding, or the scheduler's ItemTimeout / ItemFailed."""

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
        self.max_batch_size = settings.max_batch_size
        self.max_batch_tokens = settings.max_batch_tokens
        self.status = "loading"
        self.error: str | None = None
        self.model: RewardModel | None = None
        self.load_seconds: float | None = None
        self.observer = RunnerObserver()  # service.monitoring installs the real one
        self._forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{config.name}")
        self.scheduler = Scheduler(
            lambda batch: self.model.forward(batch),
            self._forward_thread,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            bulk_max_delay_ms=settings.bulk_max_delay_ms,
            max_queue_items=settings.max_queue_items,
            max_queue_tokens=settings.max_queue_tokens,
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
            model = RewardModel.load(self.name, config.resolved_path(), config.spec, device=config.resolved_device(),
                                     dtype=config.resolved_dtype(), backend=config.backend, onnx_file=config.onnx_file,
                                     triton=config.triton_target())
            model.score(warmup_inputs(model.spec.kind), truncate="right")
        except Exception as err:  # a model that fails to load must not take the others down
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.name, self.error)
            return
        self.load_seconds = time.perf_counter() - started
        self.model, self.status = model, "ready"
        log.info("model %s ready in %.1fs (%s)", self.name, time.perf_counter() - started, model.revision[:19])

    def encode_all(self, inputs: list[ScoreInput], truncate: Truncate | None) -> list[Encoded]:
        encoded = []
        for index, item in enumerate(inputs):
            try:
                encoded.append(self.model.encode(item, truncate))
            except InputError as err:
                raise ItemError(index, err) from err
        return encoded

    def forward_all(self, encoded: list[Encoded]) -> list[RewardOutput]:
        """Blocking: every item, in batches, on the calling thread."""
        outputs: list[RewardOutput | None] = [None] * len(encoded)
        for batch in plan_batches([e.num_tokens for e in encoded], self.max_batch_size, self.max_batch_tokens):
            for index, output in zip(batch, self.model.forward([encoded[i] for i in batch])):
                outputs[index] = output
        return outputs

    async def score(self, inputs: list[ScoreInput], truncate: Truncate | None,
                    priority: Priority = Priority.interactive, deadline: float | None = None,
                    cache_mode: CacheMode = CacheMode.use) -> list[RewardOutput]:
        """Every item scored, in request order: cache hits answered at once, the rest
        through the scheduler. `deadline` is a time.monotonic() instant; raises ItemError
        for the first item that failed."""
        self.observer.request()
        try:
            self.scheduler.refuse_if_full()  # before tokenizing: an overloaded server answers 429 at once
        except QueueFull:
            self.observer.rejected(len(inputs))
            raise
        started = time.perf_counter()
        encoded = await asyncio.to_thread(self.encode_all, inputs, truncate)
        self.observer.tokenized(encoded, time.perf_counter() - started)
        outputs: list[RewardOutput | None] = [None] * len(encoded)
        keys = None
        if self.cache is not None and cache_mode != CacheMode.bypass:
            keys = [cache_key(self.name, self.model.revision, enc) for enc in encoded]
            if cache_mode == CacheMode.use:
                dimensions = self.model.info.dimensions
                for index, (blob, _) in enumerate(await self.cache.get_many(keys, self.config.cache_ttl_s)):
                    outputs[index] = decode_output(blob, dimensions) if blob is not None else None
        misses = [i for i, out in enumerate(outputs) if out is None]
        if len(misses) < len(encoded):
            self.observer.cache_hits(len(encoded) - len(misses), time.perf_counter() - started)
        timeout_s = None if deadline is None else deadline - time.monotonic()
        try:
            results = await self.scheduler.submit([encoded[i] for i in misses], priority, timeout_s) if misses else []
        except QueueFull:
            self.observer.rejected(len(misses))
            raise
        self.observer.scheduled(results)
        returned = time.perf_counter()
        for index, result in zip(misses, results):
            if isinstance(result, BaseException):
                raise ItemError(index, result)
            outputs[index] = result
        if keys is not None:
            self.cache.put_many([(keys[i], encode_output(outputs[i])) for i in misses], self.config.cache_ttl_s)
        self.observer.scored(outputs, time.perf_counter() - returned)
        return outputs

    def close(self) -> None:
        self.scheduler.close()
        self._forward_thread.shutdown(wait=False, cancel_futures=True)
