"""The coordinator daemon: federated rounds over MQTT (paho-mqtt 2.x, callback API v2).

Round r: pick devices among those whose retained status says they are online, publish
the round start (round, global version, k steps, lr shift, deadline, devices), collect at
most one update per selected device until every one replied or the deadline passed,
aggregate with a pure strategy (tinyfleet.strategies), checkpoint the round in SQLite,
and publish the new global weights retained with version base + r + 1. A round with fewer than
`min_replies` updates is retried, then skipped. Updates for another round, from devices
that were not selected, duplicates and undecodable frames are logged and ignored.
The paho network thread only queues messages; all state lives in the main thread.

Version epoch: devices refuse a global whose version is not above the last one they
accepted (replay protection), so a coordinator on a fresh checkpoint, which would restart
at v1, must continue above whatever the fleet holds. Before publishing, it looks at the
versions the devices report in their retained statuses and at the retained global, and if
any is above (or equal with other weights than) what it would publish, it moves its
version base ("epoch_base" in the checkpoint) just past it. On the wire, round r is
numbered base + r: the version of the global it starts from, as devices expect.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tfshared import wire

from . import strategies
from .checkpoint import Checkpoint, DeviceMetric
from .errors import TinyFleetError
from .strategies import Reply

log = logging.getLogger("tinyfleet.coordinator")

M_MAX = 2**27 - 1  # master weights are clamped to ±M_MAX (SPEC)
OFFLINE_STATES = ("offline", "stopped")
_CONNECTED = "\x00connected"  # inbox marker: (re)connected to the broker

# Known models: name -> layer sizes (the name is also the MQTT topic segment).
MODELS: dict[str, tuple[int, ...]] = {
    "sine": (1, 40, 40, 1),
    "digits": (64, 32, 10),
}


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1-40-40-1' or '1,40,40,1' -> (1, 40, 40, 1).

    Raises:
        TinyFleetError: not at least two positive integers.
    """
    parts = text.replace(",", "-").split("-")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise TinyFleetError(f"bad layer sizes {text!r} (e.g. 1-40-40-1)") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise TinyFleetError(f"bad layer sizes {text!r} (e.g. 1-40-40-1)")
    return sizes


@dataclass
class Config:
    """Everything a coordinator run is parameterised by."""

    fleet: str = "demo"
    model: str = "sine"
    sizes: tuple[int, ...] = (1, 40, 40, 1)
    strategy: str = "reptile"
    rounds: int = 10
    per_round: int = 0          # devices per round (0: all online; tinyreptile: 1)
    k: int = 32                 # local SGD steps per round on each device
    lr_shift: int = 6           # learning rate 2**-lr_shift for the round's local steps
    epsilon: float = 1.0        # outer step size at the first round
    epsilon_end: float = 0.0
    schedule: str = "linear"    # constant | linear | cosine
    deadline: float = 30.0      # seconds a round waits for updates
    min_replies: int = 1
    attempts: int = 3           # tries per round before it is skipped
    online_wait: float | None = None  # seconds between "waiting for devices" log lines
    seed: int = 0
    key: bytes | None = None    # fleet HMAC key (None: unsigned frames)
    settle: float = 0.5         # seconds to take in retained statuses before round 1
    # Semantic registry (tinyfleet.semantic_hook): record the boards' self-descriptions,
    # select only boards that can run the model, write a model card per global model.
    registry: str | None = None

    def check(self) -> None:
        """Raises: TinyFleetError on an inconsistent configuration."""
        if self.strategy not in strategies.STRATEGIES:
            raise TinyFleetError(f"unknown strategy {self.strategy!r} "
                                 f"(choose {', '.join(strategies.STRATEGIES)})")
        if self.schedule not in strategies.SCHEDULES:
            raise TinyFleetError(f"unknown epsilon schedule {self.schedule!r}")
        for name in ("fleet", "model"):
            v = getattr(self, name)
            if not v or any(c in v for c in "/+#"):
                raise TinyFleetError(f"bad {name} name {v!r} (no '/', '+' or '#')")
        if self.rounds < 1 or self.k < 1 or self.min_replies < 1 or self.attempts < 1:
            raise TinyFleetError("--rounds, --k, --min-replies and attempts must be >= 1")
        if self.deadline <= 0:
            raise TinyFleetError("--deadline must be > 0 seconds")
        if self.strategy == "tinyreptile" and self.min_replies != 1:
            raise TinyFleetError("tinyreptile takes one device per round: --min-replies 1")
        if self.per_round and self.min_replies > self.per_round:
            raise TinyFleetError("--min-replies is larger than devices per round")


@dataclass
class RoundResult:
    """What one finished round did (also what the checkpoint stores)."""

    round: int
    status: str  # 'done' | 'skipped'
    epsilon: float
    selected: list[str]
    replies: list[Reply]
    duration: float
    version: int


@dataclass
class _Open:
    """The round currently collecting updates."""

    round: int  # as numbered on the wire: base + checkpoint round
    version: int
    selected: set[str]
    everyone: bool = False  # the round start said "every device": late joiners count too
    replies: dict[str, Reply] = field(default_factory=dict)


def to_master(theta: np.ndarray) -> np.ndarray:
    """Global weights as Q24 master integers: rounded, clamped to ±M_MAX."""
    return np.clip(np.rint(theta), -M_MAX, M_MAX).astype(np.int64)


class Coordinator:
    """Runs rounds against a broker; `run()` returns when done or when `stop` is set.

    The checkpoint is owned by the caller (opened before, closed after).
    """

    def __init__(self, cfg: Config, host: str, port: int, checkpoint: Checkpoint,
                 codec: Any = None, client_id: str | None = None) -> None:
        cfg.check()
        from .coord_codec import Codec

        self.cfg = cfg
        self.host, self.port = host, port
        self.ck = checkpoint
        self.codec = codec or Codec(cfg.fleet, cfg.model, cfg.sizes, cfg.key)
        self.client_id = client_id or f"tf-coord-{cfg.fleet}-{cfg.model}"
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.online: dict[str, dict[str, Any]] = {}  # device id -> last status
        self.open: _Open | None = None
        self.ignored = 0  # messages ignored (late, duplicate, garbage, unselected)
        self.connected = threading.Event()
        self.client: Any = None
        self.theta: np.ndarray = np.zeros(0)
        self.last_round = -1
        self.version = 0  # of the global weights last published
        self.base = 0  # version epoch: global after checkpoint round L is v(base + L + 1)
        self.held: dict[str, tuple[int, int | None]] = {}  # device -> (version, crc) held
        self.retained: tuple[int, bytes] | None = None  # retained global seen (version, frame)
        self.connects = 0
        self.on_round: Callable[[RoundResult], None] | None = None  # hook for callers
        self.semantic: Any = None  # SemanticHook while running with cfg.registry

    # -- MQTT plumbing (paho's thread only queues) ----------------------------------------
    def _connect(self) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        c.max_queued_messages_set(0)
        c.will_set(self.codec.topic_coordinator(), json.dumps({"state": "offline"}), qos=1,
                   retain=True)
        c.on_connect = self._on_connect
        c.on_message = lambda cl, ud, msg: self.inbox.put((msg.topic, bytes(msg.payload)))
        c.on_subscribe = lambda *a: self.connected.set()
        c.on_disconnect = self._on_disconnect
        c.reconnect_delay_set(0.2, 5)
        try:
            c.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise TinyFleetError(f"cannot connect to the broker at {self.host}:{self.port}: "
                                 f"{exc}") from None
        c.loop_start()
        self.client = c
        if not self.connected.wait(10):
            self._disconnect()
            raise TinyFleetError(f"no CONNACK from the broker at {self.host}:{self.port}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection: %s", rc)
            return
        td = [(wire.topic_td(self.cfg.fleet, "\x00").replace("\x00", "+"), 1)]
        client.subscribe((td if self.cfg.registry else [])
                         + [(t, 1) for t in self.codec.subscriptions()]
                         + [(self.codec.topic_global(), 1)])  # for the version epoch
        self.inbox.put((_CONNECTED, b""))  # the main thread republishes the global
        client.publish(self.codec.topic_coordinator(), json.dumps({"state": "online"}), qos=1,
                       retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        if self.connected.is_set():
            log.warning("lost the broker (%s); reconnecting", rc)
        self.connected.clear()

    def _disconnect(self) -> None:
        if self.client is None:
            return
        self.connected.clear()  # from here on a disconnection is ours, not news
        try:
            self.client.publish(self.codec.topic_coordinator(),
                                json.dumps({"state": "offline"}), qos=1,
                                retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None

    def _publish(self, topic: str, frames: list[bytes], retain: bool = False) -> None:
        """QoS 1 publish; while the broker is away paho keeps the frames and sends them
        after it reconnects, so a broker restart costs a log line, not the daemon."""
        infos = [self.client.publish(topic, f, qos=1, retain=retain) for f in frames]
        try:
            for info in infos:
                info.wait_for_publish(10)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish on %s not confirmed (%s); queued for the reconnect",
                        topic, exc)

    # -- message handling (main thread) ---------------------------------------------------
    def _drain(self, until: float, stop: threading.Event,
               done: Callable[[], bool] = lambda: False) -> None:
        """Handle incoming messages until `until` (monotonic), `done()` or stop."""
        while not stop.is_set() and not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                topic, payload = self.inbox.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic == _CONNECTED:
            self.connects += 1
            if self.connects > 1 and self.version:
                # A restarted broker without persistence has lost the retained global.
                log.info("reconnected: republishing global v%d", self.version)
                self._publish_global()
            return
        kind, dev = self.codec.parse_topic(topic)
        if kind == "status":
            self._on_status(dev, payload)
        elif kind == "update":
            self._on_update(dev, payload)
        elif kind == "td" and self.semantic is not None:
            self.semantic.on_td(dev, payload)  # sanitized; refused ones logged, never raised
        elif kind == "global" and dev == self.cfg.model:
            self._on_global(payload)

    def _on_global(self, payload: bytes) -> None:
        """Note the retained global's version (ours, or a previous coordinator's)."""
        from tfshared import wire

        if not payload:
            self.retained = None
            return
        try:
            frame = wire.decode(payload, self.codec.key)
        except ValueError as exc:  # unsigned/forged: no device would have taken it either
            log.debug("retained global ignored: %s", exc)
            return
        self.retained = (int(frame.version), payload)

    def _on_status(self, dev: str, payload: bytes) -> None:
        if not payload:  # a cleared retained status: the device is gone
            self.online.pop(dev, None)
            self.held.pop(dev, None)
            return
        try:
            st = self.codec.decode_status(payload)
            state = str(st["state"])
        except (ValueError, KeyError, TypeError) as exc:
            self._ignore(f"garbage status from {dev!r} ({len(payload)} bytes): {exc}")
            return
        ver = st.get("version")
        if isinstance(ver, int) and not isinstance(ver, bool) and ver > 0:
            crc = st.get("crc")
            self.held[dev] = (ver, crc if isinstance(crc, int) else None)
        if state in OFFLINE_STATES:
            if self.online.pop(dev, None) is not None:
                log.info("device %s is %s", dev, state)
        else:
            if dev not in self.online:
                log.info("device %s is online", dev)
            self.online[dev] = st

    def _on_update(self, dev: str, payload: bytes) -> None:
        try:
            upd = self.codec.decode_update(dev, payload)
        except (ValueError, UnicodeError) as exc:
            self._ignore(f"garbage update from {dev!r} ({len(payload)} bytes): {exc}")
            return
        if upd is None:
            return  # more chunks to come
        rnd = self.open
        if upd.device != dev:
            self._ignore(f"update on {dev!r}'s topic claims to be from {upd.device!r}")
        elif rnd is None or upd.round != rnd.round:
            self._ignore(f"late update from {dev} for round {upd.round} "
                         f"(open: {rnd.round if rnd else 'none'})")
        elif dev not in rnd.selected and not rnd.everyone:
            self._ignore(f"update from {dev}, not selected for round {rnd.round}")
        elif dev in rnd.replies:
            self._ignore(f"duplicate update from {dev} for round {rnd.round}")
        else:
            rnd.replies[dev] = Reply(dev, upd.weights, upd.samples, upd.loss)
            log.debug("round %d: update from %s (%d samples, loss %.4f)", rnd.round, dev,
                      upd.samples, upd.loss)

    def _ignore(self, why: str) -> None:
        self.ignored += 1
        log.warning("ignored: %s", why)

    # -- rounds ---------------------------------------------------------------------------
    def _resume(self) -> None:
        from . import reference

        ck = self.ck
        ck.ensure_meta(fleet=self.cfg.fleet, model=self.cfg.model,
                       sizes="-".join(map(str, self.cfg.sizes)))
        got = ck.resume()
        if got is None:
            theta = reference.init_weights(self.cfg.sizes, self.cfg.seed).astype(np.float64)
            ck.save_round(0, theta, strategy=self.cfg.strategy, status="init",
                          finished=time.time())
            got = (0, theta)
            log.info("new checkpoint %s: initial weights (seed %d)", ck.path, self.cfg.seed)
        else:
            log.info("resuming from %s: round %d completed", ck.path, got[0])
        self.last_round, self.theta = got
        self.base = int(ck.get_meta("epoch_base") or 0)
        if self.theta.shape != (self.codec.n_params,):
            raise TinyFleetError(f"checkpoint weights have {self.theta.size} params, model "
                                 f"{self.cfg.sizes} needs {self.codec.n_params}")

    def _next_version(self) -> int:
        """Version of the global weights after the last completed round."""
        return self.base + self.last_round + 1

    def _fleet_conflict(self) -> int:
        """The highest version held in the fleet that our next global would not beat:
        above it, or equal to it with other weights (a device ignores a version it has).
        0 when there is none."""
        from tfshared import weights

        version = self._next_version()
        master = to_master(self.theta)
        frames = self.codec.encode_global(master, version)
        # A device reports crc32 of the Q24 weights it decoded from our Q12 frame.
        blob = weights.encode([int(v) for v in master], self.cfg.sizes, weights.DTYPE_Q12,
                              version)
        crc = zlib.crc32(np.asarray(weights.decode(blob, self.cfg.sizes)[1],
                                    dtype="<i4").tobytes()) & 0xFFFFFFFF
        worst = 0
        for ver, dcrc in self.held.values():
            if ver > version or (ver == version and dcrc is not None and dcrc != crc):
                worst = max(worst, ver)
        if self.retained is not None:
            ver, frame = self.retained
            if ver > version or (ver == version and [frame] != frames):
                worst = max(worst, ver)
        return worst

    def _check_epoch(self) -> bool:
        """Move the version base above the fleet's versions if needed; True if moved."""
        worst = self._fleet_conflict()
        if not worst:
            return False
        old = self._next_version()
        self.base = worst - self.last_round  # next version: worst + 1
        self.ck.set_meta("epoch_base", str(self.base))
        holders = sorted(d for d, (v, _) in self.held.items() if v == worst)
        log.warning("version epoch: the fleet holds global v%d (%s), this checkpoint would "
                    "publish v%d; continuing from v%d (epoch base %d)", worst,
                    " ".join(holders) or "retained global", old, self._next_version(),
                    self.base)
        return True

    def _publish_global(self) -> int:
        version = self._next_version()
        frame = self.codec.encode_global(to_master(self.theta), version)
        self._publish(self.codec.topic_global(), frame, retain=True)
        self.version = version
        return version

    def _candidates(self) -> list[str]:
        """Online devices a round may select: with a registry, those that can run the model."""
        if self.semantic is None:
            return list(self.online)
        return [d for d in self.online if self.semantic.eligible(d)]

    def _wait_online(self, need: int, stop: threading.Event) -> bool:
        wait = self.cfg.online_wait if self.cfg.online_wait is not None else self.cfg.deadline
        self._drain(time.monotonic() + wait, stop, lambda: len(self._candidates()) >= need)
        return len(self._candidates()) >= need

    def _run_round(self, r: int, version: int, stop: threading.Event) -> RoundResult | None:
        """One round with retries; None when stopped before it finished.

        On the wire the round is numbered `version` (of the global it starts from)."""
        cfg = self.cfg
        eps = strategies.epsilon_at(cfg.schedule, r - 1, cfg.rounds, cfg.epsilon,
                                    cfg.epsilon_end)
        t0 = time.monotonic()
        selected: list[str] = []
        replies: dict[str, Reply] = {}
        for attempt in range(1, cfg.attempts + 1):
            # Waiting for the fleet does not use up attempts: a daemon started before its
            # devices just waits for them.
            while not self._wait_online(cfg.min_replies, stop):
                if stop.is_set():
                    return None
                log.warning("round %d: waiting for devices: %d online, %d can run the model, "
                            "need %d", r, len(self.online), len(self._candidates()),
                            cfg.min_replies)
            selected = strategies.select_devices(cfg.strategy, self._candidates(),
                                                 cfg.per_round, r + attempt - 1, cfg.seed)
            # With every online device taking part, the round start says "every device"
            # instead of listing them: its size then does not grow with the fleet (a board
            # takes round starts into a small fixed buffer).
            # With a registry the round start lists the boards: "every device" would let an
            # incompatible board join.
            everyone = (cfg.per_round == 0 and cfg.strategy != "tinyreptile"
                        and self.semantic is None)
            self.open = _Open(version, version, set(selected), everyone)
            self.codec.theta = self.theta  # the base of delta updates
            self._publish(self.codec.topic_round(),
                          self.codec.encode_round(version, cfg.k, cfg.lr_shift, cfg.deadline,
                                                  None if everyone else selected))
            log.info("round %d/%d: started (attempt %d), %d device(s): %s, eps %.4f", r,
                     cfg.rounds, attempt, len(selected), " ".join(selected), eps)
            rnd = self.open
            # Done when every selected device replied or went offline (its last will).
            self._drain(time.monotonic() + cfg.deadline, stop,
                        lambda rnd=rnd: all(d in rnd.replies or d not in self.online
                                            for d in rnd.selected))
            replies = dict(rnd.replies)
            selected = sorted(rnd.selected | set(replies))  # with late joiners
            if stop.is_set():
                self.open = None
                return None
            if len(replies) >= cfg.min_replies:
                break
            missing = sorted(rnd.selected - set(replies))
            log.warning("round %d: %d of %d replies by the deadline (need %d); no reply "
                        "from %s (attempt %d/%d)", r, len(replies), len(selected),
                        cfg.min_replies, " ".join(missing), attempt, cfg.attempts)
        self.open = None
        got = [replies[d] for d in sorted(replies)]
        if len(got) >= cfg.min_replies:
            theta = strategies.aggregate(cfg.strategy, self.theta, got, eps)
            status = "done"
        else:
            theta = self.theta
            status = "skipped"
            log.warning("round %d: skipped after %d attempts, global weights unchanged", r,
                        cfg.attempts)
        self.theta = to_master(theta).astype(np.float64)
        return RoundResult(r, status, eps, selected, got, time.monotonic() - t0, version + 1)

    def run(self, stop: threading.Event | None = None) -> int:
        """Run until `cfg.rounds` rounds are complete or `stop` is set.

        Returns the number of rounds completed in this run.

        Raises:
            TinyFleetError: the broker cannot be reached, or the checkpoint does not fit.
        """
        stop = stop or threading.Event()
        self._resume()
        if self.cfg.registry:
            from .semantic_hook import SemanticHook

            self.semantic = SemanticHook(self.cfg.registry, self.cfg.fleet, self.cfg.model,
                                         self.cfg.sizes, f"{self.host}:{self.port}",
                                         self.cfg.strategy)
            self.semantic.start(self.ck.history())
        try:
            self._connect()
        except BaseException:
            self._close_semantic()
            raise
        done = 0
        try:
            # Retained statuses (and the retained global) arrive right after the SUBACK;
            # take them all in first so the first round selects from the whole fleet and
            # the first global we publish is above every version the fleet holds.
            self._drain(time.monotonic() + self.cfg.settle, stop)
            self._check_epoch()
            version = self._publish_global()
            log.info("published global v%d", version)
            self._model_card(version, None)
            log.info("%d device(s) online: %s", len(self.online), " ".join(sorted(self.online)))
            while self.last_round < self.cfg.rounds and not stop.is_set():
                if self._check_epoch():  # a device came back holding a newer version
                    version = self._publish_global()
                r = self.last_round + 1
                res = self._run_round(r, version, stop)
                if res is None:
                    break
                self.ck.save_round(
                    r, self.theta, strategy=self.cfg.strategy, epsilon=res.epsilon,
                    selected=res.selected, replied=[x.device for x in res.replies],
                    duration=res.duration, status=res.status, finished=time.time(),
                    metrics=[DeviceMetric(x.device, x.loss, x.samples) for x in res.replies])
                self.last_round = r
                version = self._publish_global()
                self._model_card(version, res)
                done += 1
                losses = [x.loss for x in res.replies if x.loss == x.loss]
                log.info("round %d/%d: %s, %d replies in %.2f s, mean loss %s -> global v%d",
                         r, self.cfg.rounds, res.status, len(res.replies), res.duration,
                         f"{np.mean(losses):.4f}" if losses else "n/a", version)
                if self.on_round:
                    self.on_round(res)
            if stop.is_set():
                log.info("stopping: %d round(s) completed, last completed round %d", done,
                         self.last_round)
        finally:
            self._disconnect()
            self._close_semantic()
        return done

    def _model_card(self, version: int, res: RoundResult | None) -> None:
        """With a registry: the card of the global just published (a failure is logged)."""
        if self.semantic is None:
            return
        try:
            self.semantic.on_global(version, self.theta, self.last_round, res)
        except (TinyFleetError, sqlite3.Error, ValueError, OSError) as exc:
            log.warning("model card for global v%d not written: %s", version, exc)

    def _close_semantic(self) -> None:
        if self.semantic is not None:
            self.semantic.close()
            self.semantic = None
