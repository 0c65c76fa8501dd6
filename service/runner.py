"""One served model: its load and warm-up, and the thread its forwards run on.

Tokenization runs in the shared thread pool and forwards on the model's own thread, so the
event loop stays responsive and tokenizing one request never waits behind another's
forward. Items are length-sorted and cut into batches under an item and a padded-token
budget; results come back in request order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from models.errors import InputError
from models.heads import RewardOutput
from models.inputs import Encoded, ScoreInput, StepsInput, TextPair, Truncate
from models.reward_model import ModelInfo, RewardModel
from models.spec import ModelKind
from service.config import ModelConfig

log = logging.getLogger("rewardserve")


class ItemInputError(Exception):
    """An InputError tagged with the index of the item that caused it."""

    def __init__(self, index: int, error: InputError):
        super().__init__(error.message)
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
    def __init__(self, config: ModelConfig, max_batch_size: int, max_batch_tokens: int):
        self.config = config
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.status = "loading"
        self.error: str | None = None
        self.model: RewardModel | None = None
        self._forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{config.name}")

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
            model = RewardModel.load(self.name, self.config.resolved_path(), self.config.spec,
                                     device=self.config.resolved_device(), dtype=self.config.resolved_dtype())
            warmup = StepsInput("1 + 1 = ?", ("2",)) if model.spec.kind == ModelKind.process else TextPair("Hi", "Hello!")
            model.score([warmup], truncate="right")
        except Exception as err:  # a model that fails to load must not take the others down
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.name, self.error)
            return
        self.model, self.status = model, "ready"
        log.info("model %s ready in %.1fs (%s)", self.name, time.perf_counter() - started, model.revision[:19])

    def encode_all(self, inputs: list[ScoreInput], truncate: Truncate | None) -> list[Encoded]:
        encoded = []
        for index, item in enumerate(inputs):
            try:
                encoded.append(self.model.encode(item, truncate))
            except InputError as err:
                raise ItemInputError(index, err) from err
        return encoded

    def forward_all(self, encoded: list[Encoded]) -> list[RewardOutput]:
        """Blocking: every item, in batches, on the calling thread."""
        outputs: list[RewardOutput | None] = [None] * len(encoded)
        for batch in plan_batches([e.num_tokens for e in encoded], self.max_batch_size, self.max_batch_tokens):
            for index, output in zip(batch, self.model.forward([encoded[i] for i in batch])):
                outputs[index] = output
        return outputs

    async def score(self, inputs: list[ScoreInput], truncate: Truncate | None) -> list[RewardOutput]:
        encoded = await asyncio.to_thread(self.encode_all, inputs, truncate)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._forward_thread, self.forward_all, encoded)

    def close(self) -> None:
        self._forward_thread.shutdown(wait=False, cancel_futures=True)
