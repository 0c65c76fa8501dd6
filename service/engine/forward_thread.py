"""What runs on a model's forward thread and its preparation thread: a batch's forward, with
a failure pinned on the items that cause it, and the forward's cost by the model's clock."""

from __future__ import annotations

import logging
from collections.abc import Callable

from models.heads import RewardOutput
from models.inputs import Encoded

log = logging.getLogger("rewardserve")

Prepared = Callable[[], list[RewardOutput]]  # a batch whose inputs are built: runs its forward


class ItemFailed(Exception):
    """The model raised on this item alone (after its batch was split down to it)."""


class IsolatingForward:
    """`forward` runs a batch; `cost_clock` reads the clock its cost is measured by (on the
    forward thread: RewardModel.forward_clock)."""

    def __init__(self, forward: Callable[[list[Encoded]], list[RewardOutput]], cost_clock: Callable[[], float]):
        self._forward = forward
        self._cost_clock = cost_clock

    def __call__(self, batch: list[Encoded], prepared: Prepared | Exception
                 ) -> tuple[list[RewardOutput | Exception], float]:
        """The batch `prepared` (or what preparing it raised) run: its results, and its cost."""
        started = self._cost_clock()
        results = self._isolating(batch, prepared)
        return results, self._cost_clock() - started

    def _isolating(self, batch: list[Encoded], prepared: Prepared | Exception | None = None
                   ) -> list[RewardOutput | Exception]:
        """The batch `prepared`, or built now. A failing batch is halved until the failure is
        pinned on single items; the rest still get their scores."""
        try:
            if isinstance(prepared, Exception):
                raise prepared
            return prepared() if prepared is not None else self._forward(batch)
        except Exception as err:  # noqa: BLE001 - any model failure is isolated, then reported per item
            if len(batch) == 1:
                log.warning("item failed in forward: %s: %s", type(err).__name__, err)
                return [ItemFailed(f"{type(err).__name__}: {err}")]
            _free_device_cache()
            middle = len(batch) // 2
            return self._isolating(batch[:middle]) + self._isolating(batch[middle:])


def attempt(prepare: Callable[[list[Encoded]], Prepared], batch: list[Encoded]) -> Prepared | Exception:
    """`prepare(batch)`, or what it raised, for the forward thread to isolate like a failing forward."""
    try:
        return prepare(batch)
    except Exception as err:  # noqa: BLE001 - isolated on the forward thread
        return err


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
