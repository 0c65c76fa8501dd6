"""Shadow scoring: a share of a live model's scored items mirrored to a candidate model off
the hot path. The live answer is computed first and never waits: `offer` only puts the
picked items on a bounded queue (dropping, and counting, what does not fit), and a
background task per live model scores them through the candidate's own runner at bulk
priority and hands each (live, candidate) pair to the observer that compares them
(service.monitoring.shadow)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from models.heads import RewardOutput
from models.inputs import Chat, RenderedText, ScoreInput, StepsInput, TextPair, TokenIds
from service.config import Settings
from service.config.model import ShadowConfig
from service.engine.admission import QueueFull
from service.engine.registry import ModelNotFound, ModelNotReady, ModelRegistry
from service.engine.runner import ItemError
from service.protocol.enums import CacheMode, Priority

log = logging.getLogger("rewardserve")
BATCH_ITEMS = 64  # mirrored items scored by the candidate in one runner call, at most
HASH_SPAN = 2.0 ** 64


@dataclass(frozen=True)
class Mirrored:
    """One live item waiting for the candidate: its input, the prompt it answers (for
    comparing the order of items of the same prompt; None when unknown) and its live output."""

    input: ScoreInput
    prompt: object
    live: RewardOutput


class ShadowObserver:
    """What the candidate's scores go to. This base does nothing; service.monitoring.shadow
    installs one that keeps the agreement statistics. Runs on the event loop; must not raise."""

    def paired(self, live: str, candidate: str, items: Sequence[Mirrored], outputs: Sequence[RewardOutput]) -> None:
        """`items` of model `live` scored by `candidate` as `outputs`, in order."""


def mirrored_share(item: ScoreInput) -> float:
    """Where `item` falls in [0, 1): a hash of its content (text or token ids), the same in
    every process, so an item is mirrored under a share > this or never."""
    digest = hashlib.blake2b(repr(item).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SPAN


def prompt_of(item: ScoreInput) -> object:
    """What an item answers: its prompt, the conversation before its last message, or its
    prompt's token ids; None when the item does not say."""
    if isinstance(item, (TextPair, StepsInput, RenderedText)):
        return item.prompt
    if isinstance(item, Chat):
        return item.messages[:-1]
    if isinstance(item, TokenIds) and item.prompt_length is not None:
        return item.input_ids[:item.prompt_length]
    return None


class ShadowLane:
    """One live model's mirror to its candidate: the bounded queue, the task that drains it,
    and the item counts (mirrored: scored by the candidate; dropped: the queue was full;
    failed: the candidate could not score them)."""

    def __init__(self, live: str, config: ShadowConfig, registry: ModelRegistry, observer: ShadowObserver):
        self.live, self.candidate, self.share, self.window = live, config.model, config.share, config.window
        self.registry = registry
        self.observer = observer
        self.queue: asyncio.Queue[Mirrored] = asyncio.Queue(maxsize=config.queue_items)
        self.mirrored = self.dropped = self.failed = 0

    def offer(self, inputs: Sequence[ScoreInput], outputs: Sequence[RewardOutput | ItemError]) -> None:
        """The picked items of a live answer queued for the candidate, at once."""
        for item, out in zip(inputs, outputs):
            if isinstance(out, ItemError) or mirrored_share(item) >= self.share:
                continue
            try:
                self.queue.put_nowait(Mirrored(item, prompt_of(item), out))
            except asyncio.QueueFull:
                self.dropped += 1

    async def drain(self) -> None:
        """Until cancelled: the queued items, up to BATCH_ITEMS at a time, scored by the candidate."""
        while True:
            items = [await self.queue.get()]
            while len(items) < BATCH_ITEMS and not self.queue.empty():
                items.append(self.queue.get_nowait())
            await self.score(items)

    async def score(self, items: list[Mirrored]) -> None:
        try:
            runner = self.registry.get(self.candidate)
            results = await runner.score([m.input for m in items], None, Priority.bulk, None, CacheMode.use,
                                         item_errors=True)
        except (ModelNotFound, ModelNotReady, QueueFull, ItemError) as err:  # the live side never sees it
            log.debug("shadow %s -> %s: %d items not scored: %s", self.live, self.candidate, len(items), err)
            self.failed += len(items)
            return
        paired = [(m, out) for m, out in zip(items, results) if not isinstance(out, ItemError)]
        self.failed += len(items) - len(paired)
        self.mirrored += len(paired)
        if paired:
            self.observer.paired(self.live, self.candidate, [m for m, _ in paired], [out for _, out in paired])


class Shadows:
    """Every configured live model's lane, and their drain tasks."""

    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.lanes = {m.name: ShadowLane(m.name, m.shadow, registry, ShadowObserver())
                      for m in settings.models if m.shadow is not None}
        self._tasks: list[asyncio.Task] = []

    def observe(self, observer: ShadowObserver) -> None:
        for lane in self.lanes.values():
            lane.observer = observer

    def offer(self, live: str, inputs: Sequence[ScoreInput], outputs: Sequence[RewardOutput | ItemError]) -> None:
        """A live answer of model `live`: its picked items queued for its candidate, if it has one."""
        lane = self.lanes.get(live)
        if lane is not None:
            lane.offer(inputs, outputs)

    def start(self) -> None:
        """The drain tasks, on the running event loop (outside any request's context)."""
        self._tasks = [asyncio.create_task(lane.drain(), name=f"shadow-{name}") for name, lane in self.lanes.items()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
