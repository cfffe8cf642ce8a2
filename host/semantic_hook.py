"""What a coordinator does with the semantic registry (DESIGN §5), behind three calls.

- `on_td(device, payload)`: a board's retained self-description arrived: sanitize it,
  expand its TD, store both (a rejected one is logged and counted, never stored, never
  raised: a hostile board cannot stop the coordinator).
- `eligible(device)`: may this board be selected? Only boards whose description says they
  can run the model (tinyfleet.registry.check against the model's card); a board that
  has not described itself is not selected.
- `on_global(version, theta, result)`: a global model was published: write its model card
  (measured RAM/flash, MACs, held-out quality, lineage from the round history).

Everything runs in the coordinator's main thread; the registry is its own SQLite file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import modelcard
from .errors import TinyFleetError
from .registry import Registry, Verdict, check
from .td import DescriptionError

log = logging.getLogger("tinyfleet.semantic")

QUALITY_TASKS = 50  # held-out tasks per card (~0.3 s for the sine model)
SEEN_EVERY = 10.0   # seconds between last-seen writes for one board


def _sine_shaped(sizes: Sequence[int]) -> bool:
    """The held-out sine tasks fit models with one input and one output."""
    return sizes[0] == 1 and sizes[-1] == 1


class SemanticHook:
    """The coordinator's registry side; `close()` when done.

    Raises (constructor):
        TinyFleetError: the registry cannot be opened.
    """

    def __init__(self, path: str, fleet: str, model: str, sizes: Sequence[int],
                 broker: str = "", strategy: str = "",
                 quality_tasks: int = QUALITY_TASKS) -> None:
        self.reg = Registry(path)
        self.fleet, self.model, self.sizes = fleet, model, tuple(sizes)
        self.broker, self.strategy = broker, strategy
        self.quality_tasks = quality_tasks
        self.rejected = 0
        self._verdicts: dict[str, Verdict] = {}
        self._rounds: list[Any] = []  # checkpoint RoundRecord-like: lineage of the model
        self._held: Any = None
        self._parent: str | None = None  # id of the card written before
        self._seen: dict[str, float] = {}  # device -> monotonic time last_seen was written
        try:
            memory = modelcard.measure_all(self.sizes)
        except TinyFleetError as exc:
            # No MicroPython here: the card says so and RAM is not checked, rather than
            # refusing every board.
            log.warning("model card: memory not measured (%s)", exc)
            memory = {}
        self.memory = memory
        self.card = modelcard.build_card(model, self.sizes, 0, fleet=fleet, memory=memory)
        for rec in self.reg.devices(fleet):  # boards known from before: judged again now
            self._verdicts[rec.description.id] = check(self.card, rec.description)

    # -- boards ---------------------------------------------------------------------------
    def on_td(self, device: str, payload: bytes) -> None:
        """Record a board's self-description (an empty payload: a cleared retained one)."""
        if not payload:
            return
        try:
            d = self.reg.record_description(self.fleet, device, payload, self.broker or None)
        except DescriptionError as exc:
            self.rejected += 1
            self._verdicts.pop(device, None)
            log.warning("ignored: self-description from %r refused: %s", device[:64], exc)
            return
        except sqlite3.Error as exc:  # registry busy or broken: the rounds go on
            log.warning("registry: description of %r not stored: %s", device[:64], exc)
            return
        v = check(self.card, d)
        old = self._verdicts.get(device)
        self._verdicts[device] = v
        if old is None or old.ok != v.ok or old.reasons != v.reasons:
            if v.ok:
                log.info("device %s can run %s (kernel %s)", device, self.model, v.kernel)
            else:
                log.warning("device %s cannot run %s: %s; not selected", device, self.model,
                            "; ".join(v.reasons))

    def on_status(self, device: str) -> None:
        """A status from a board: it is alive (written at most every SEEN_EVERY s)."""
        now = time.monotonic()
        if now - self._seen.get(device, -SEEN_EVERY) < SEEN_EVERY:
            return
        self._seen[device] = now
        try:
            self.reg.seen(self.fleet, device)
        except sqlite3.Error as exc:
            log.debug("registry: last seen of %r not stored: %s", device[:64], exc)

    def eligible(self, device: str) -> bool:
        v = self._verdicts.get(device)
        return v is not None and v.ok

    def verdict(self, device: str) -> Verdict | None:
        return self._verdicts.get(device)

    # -- models ---------------------------------------------------------------------------
    def start(self, history: Sequence[Any]) -> None:
        """The checkpoint's rounds so far (a resumed coordinator's lineage)."""
        self._rounds = [r for r in history if r.status != "init"]

    def on_global(self, version: int, theta: np.ndarray, last_round: int,
                  result: Any = None) -> dict[str, Any]:
        """Write the card of global model `version` (θ, Q24 units), the weights after
        checkpoint round `last_round`; result: the round that produced it
        (tinyfleet.coordinator.RoundResult), None for the initial or resumed weights."""
        if result is not None:
            self._rounds.append(_Round(result.round, result.status, result.epsilon,
                                       [r.device for r in result.replies], self.strategy))
        quality: dict[str, Any] = {}
        if _sine_shaped(self.sizes):
            from . import metaeval

            if self._held is None:
                self._held = metaeval.HeldOutSet.make(self.quality_tasks)
            quality = modelcard.quality(theta, self.sizes, tasks=self.quality_tasks,
                                        held=self._held)
        lin = modelcard.lineage(self._rounds, last_round)
        lin["parent"] = self._parent
        self._parent = f"{self.fleet}/{self.model}/v{version}"
        card = modelcard.build_card(self.model, self.sizes, version, fleet=self.fleet,
                                    memory=self.memory, quality=quality, lineage=lin,
                                    created=time.time())
        self.reg.add_card(card)
        return card

    def close(self) -> None:
        self.reg.close()


class _Round:
    """The part of a checkpoint RoundRecord the lineage needs."""

    def __init__(self, round_no: int, status: str, epsilon: float, replied: list[str],
                 strategy: str) -> None:
        self.round, self.status, self.epsilon, self.replied = round_no, status, epsilon, replied
        self.strategy = strategy
