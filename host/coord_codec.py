"""The coordinator's view of the wire format (tfshared.wire, tfshared.weights).

Adapts the shared codec to numpy and to the coordinator's round protocol: global
weights go out as int16 Q12 in one frame (retained messages keep only the last MQTT
message per topic, so a chunked global would reach a late subscriber as one chunk);
device updates are reassembled per device, HMAC-checked when a fleet key is set, and
returned as Q24 float64 arrays. A round starts from the global version that is its wire
round number (initial weights are v1 + the coordinator's version epoch), so the round
number is also the version a device must hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from tfshared import weights, wire

# One frame for the retained global up to this payload size (wire's u16 chunk size).
_MAX_SINGLE_FRAME = 0xFFFF


@dataclass(frozen=True)
class Update:
    """A decoded device update."""

    device: str
    round: int
    weights: np.ndarray  # Q24 master weights as float64 (φ; a delta is already added)
    samples: int
    loss: float          # as reported (Q12 -> real); NaN if the device sent none


def model_id(name: str) -> int:
    """The u16 model id the wire carries for a model name (as devices derive it)."""
    fn = getattr(wire, "model_id_of", None) or wire.model_id  # the name changed once
    return int(fn(name))


def parse_key(text: str | bytes | None) -> bytes | None:
    """A fleet key from its text form: 'hex:...' or plain text (UTF-8); None/'' -> None."""
    if not text:
        return None
    if isinstance(text, bytes):
        return text
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise ValueError("fleet key: bad hex after 'hex:'") from None
    return text.encode()


class Codec:
    """Encoding and decoding for one (fleet, model); `theta` for delta updates."""

    def __init__(self, fleet: str, model: str, sizes: tuple[int, ...],
                 key: bytes | None = None) -> None:
        self.fleet, self.model, self.sizes = fleet, model, tuple(sizes)
        self.model_id = model_id(model)
        self.n_params = weights.param_count(self.sizes)
        self.key = key
        self._hkey = wire.hmac.Key(key) if key else None
        self._reasm: dict[str, wire.Reassembler] = {}
        self.theta: np.ndarray | None = None  # base for delta updates (set per round)

    # -- topics --------------------------------------------------------------------------
    def topic_global(self) -> str:
        return wire.topic_global(self.fleet, self.model)

    def topic_round(self) -> str:
        return wire.topic_round(self.fleet, self.model)

    def topic_update(self, device: str) -> str:
        return wire.topic_update(self.fleet, device)

    def topic_status(self, device: str) -> str:
        return wire.topic_status(self.fleet, device)

    def subscriptions(self) -> list[str]:
        """Wildcard topics the coordinator listens on: every device's status and update."""
        # wire's topic helpers refuse '+', so build the topic and then put the wildcard in.
        return [f(self.fleet, "\x00").replace("\x00", "+")
                for f in (wire.topic_status, wire.topic_update)]

    def topic_coordinator(self) -> str:
        """Retained coordinator status (JSON; last will: offline)."""
        return f"tf/{self.fleet}/coord/{self.model}/status"

    def parse_topic(self, topic: str) -> tuple[str, str]:
        """(kind, device) for a device topic of this fleet, ('', '') for anything else."""
        try:
            kind, fleet, name = wire.parse_topic(topic)
        except ValueError:
            return "", ""
        if fleet != self.fleet:
            return "", ""
        return kind, name

    # -- outgoing ------------------------------------------------------------------------
    def encode_global(self, master: np.ndarray, version: int) -> list[bytes]:
        """Frames of the global weights (Q24 ints in, Q12 on the wire), normally one."""
        blob = weights.encode([int(v) for v in master], self.sizes, weights.DTYPE_Q12,
                              version)
        chunk = min(max(len(blob), 1), _MAX_SINGLE_FRAME)
        return wire.encode_global(self.model_id, version, blob, self._hkey, chunk_size=chunk)

    def encode_round(self, round_no: int, k: int, lr_shift: int, deadline_s: float,
                     devices: list[str] | None) -> list[bytes]:
        """Frames of a round start (devices None: every device)."""
        return wire.encode_round_start(self.model_id, round_no, k, lr_shift,
                                       int(deadline_s * 1000), devices, self._hkey)

    # -- incoming ------------------------------------------------------------------------
    def decode_update(self, device: str, frame: bytes) -> Update | None:
        """Feed one update frame from `device`'s topic; the Update once complete, else None.

        Raises:
            ValueError: the frame is damaged, unsigned/forged, for another model, or its
                weights have the wrong shape.
        """
        r = self._reasm.get(device)
        if r is None:
            r = self._reasm[device] = wire.Reassembler(capacity=wire.MAX_TOTAL * 4,
                                                       max_chunks=256, key=self._hkey)
        msg = r.feed(frame)
        if msg is None:
            return None
        if msg.type != wire.T_UPDATE:
            raise ValueError(f"message type {msg.type} on an update topic")
        if msg.model_id != self.model_id:
            raise ValueError(f"update for model id {msg.model_id}, this is {self.model_id}")
        upd = wire.parse_update(msg, self.sizes)
        _, q24 = weights.decode(upd.blob, self.sizes)
        w = np.asarray(q24, dtype=np.int64).astype(np.float64)
        if upd.delta:
            if self.theta is None:
                raise ValueError("delta update but no base weights")
            w = self.theta + w
        return Update(upd.device_id, upd.round, w, upd.samples, upd.loss_q12 / 4096.0)

    def decode_status(self, payload: bytes) -> dict[str, Any]:
        """A status: a wire T_STATUS frame or plain JSON (what device/main.py sends).

        Raises:
            ValueError: neither, or not a JSON object with a "state".
        """
        if payload[:2] == wire.MAGIC:
            obj = wire.parse_status(wire.decode(payload, self._hkey))
        else:
            obj = json.loads(payload)
        if not isinstance(obj, dict) or "state" not in obj:
            raise ValueError("status without a state")
        return obj
