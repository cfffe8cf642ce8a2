"""Round benchmark: a short real fleet (embedded Mosquitto, the coordinator, N MicroPython
devices) timed round by round, and the bytes each device's round costs on the wire.

Latency: the coordinator's round duration (round start to aggregation), and its parts as
a subscriber on the broker sees them: round start -> first and last device update (the
devices' k local steps, encoding and sending), last update -> next global published
(decoding, aggregation, checkpoint, publication).

Bytes: every MQTT PUBLISH packet the broker passes is counted by a subscriber to the
fleet's topics (fixed header, remaining length, topic, packet id and payload; acks and
pings are not counted). Per device and round that is one global-weights message down and
one update up. The float32 JSON alternative is computed: json.dumps of the same weights
as float32 values (shortest repr, as a board would print them) under the same topics.
A model the simulated devices cannot run (their data is a 1-input sine) is costed from
the codec's frames instead of measured; the row says so.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import reference
from .errors import TinyFleetError

FLEET = "bench"
# model name (topic segment) -> layer sizes; the first is the one the devices run.
MODELS: dict[str, tuple[int, ...]] = {"sine": (1, 40, 40, 1), "digits": (64, 32, 10)}
KEY = "bench-fleet-key"  # frames are signed, as in a real fleet (32 B of HMAC each)


def mqtt_publish_size(topic: str, payload_len: int, qos: int) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH packet carrying `payload_len` bytes on `topic`."""
    rem = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    n = 1
    while rem >= 128 ** n:
        n += 1
    return 1 + n + rem


def json_weights(q24: Any) -> bytes:
    """Q24 master weights as a JSON list of float32 values (shortest float32 repr)."""
    f32 = (np.asarray(q24, dtype=np.float64) / (1 << 24)).astype(np.float32)
    return json.dumps([float(str(v)) for v in f32]).encode()


@dataclass
class WireRow:
    """Bytes on the wire per device per round for one model."""

    model: str
    sizes: list[int]
    params: int
    measured: bool          # counted on the broker (True) or computed from the codec
    down_bytes: int         # the global weights, int16 Q12 frame in an MQTT PUBLISH
    up_bytes: int           # the device's update, likewise
    round_start_bytes: int  # the round start (same in both encodings)
    json_down_bytes: int    # the same weights as float32 JSON in an MQTT PUBLISH
    json_up_bytes: int
    json_over_binary: float  # (json down + up) / (binary down + up)


@dataclass
class Latency:
    """Seconds per round: median and 90th percentile."""

    round_median: float
    round_p90: float
    first_update_median: float
    last_update_median: float
    last_update_p90: float
    publish_median: float


@dataclass
class Report:
    devices: int
    rounds: int
    k: int
    build: str
    heapsize: str
    latency: Latency | None
    wire: list[WireRow]
    per_round: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Tap:
    """A subscriber to every topic of the fleet: (time, topic, payload, qos, retain)."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.msgs: list[tuple[float, str, bytes, int, bool]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tf-bench-tap")
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"tf/{FLEET}/#", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect(host, port)
        self.c.loop_start()
        if not ready.wait(10):
            self.close()
            raise TinyFleetError(f"could not subscribe to the broker at {host}:{port}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.msgs.append((time.monotonic(), msg.topic, bytes(msg.payload), msg.qos,
                              bool(msg.retain)))

    def snapshot(self) -> list[tuple[float, str, bytes, int, bool]]:
        with self.lock:
            return list(self.msgs)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def computed_row(model: str, sizes: tuple[int, ...], seed: int = 0) -> WireRow:
    """Bytes per device per round from the codec's frames (initial weights as θ and φ)."""
    from tfshared import weights, wire

    from .coord_codec import Codec

    codec = Codec(FLEET, model, sizes, KEY.encode())
    master = reference.init_weights(sizes, seed)
    glob = codec.encode_global(master, 2)
    blob = weights.encode([int(v) for v in master], sizes, weights.DTYPE_Q12, 2)
    upd = wire.encode_update(codec.model_id, 2, "dev00", 32, 0, blob, key=KEY.encode())
    rs = codec.encode_round(2, 32, 6, 20.0, None)
    t_up = codec.topic_update("dev00")
    down = sum(mqtt_publish_size(codec.topic_global(), len(f), 1) for f in glob)
    up = sum(mqtt_publish_size(t_up, len(f), 1) for f in upd)
    js = json_weights(weights.decode(blob, sizes)[1])
    jdown = mqtt_publish_size(codec.topic_global(), len(js), 1)
    jup = mqtt_publish_size(t_up, len(js), 1)
    return WireRow(model, list(sizes), codec.n_params, False, down, up,
                   sum(mqtt_publish_size(codec.topic_round(), len(f), 1) for f in rs),
                   jdown, jup, (jdown + jup) / (down + up))


def run(devices: int = 4, rounds: int = 10, k: int = 32, build: str = "32",
        heapsize: str | None = None, deadline: float = 20.0, workdir: Path | None = None,
        seed: int = 0) -> Report:
    """Run the fleet for `rounds` rounds and measure.

    Raises:
        TinyFleetError: Mosquitto, MicroPython or a device cannot start, or a round
            does not complete.
    """
    import tempfile

    from tfshared import weights, wire

    from .broker import EmbeddedBroker
    from .checkpoint import Checkpoint
    from .coordinator import Config, Coordinator
    from .fleet import HEAPSIZE, Fleet, umqtt_source
    from .simulate import SimConfig, device_configs

    if devices < 1 or rounds < 1 or k < 1:
        raise TinyFleetError("--devices, --rounds and --k must be >= 1")
    umqtt_source(install=False)
    model = "sine"
    sizes = MODELS[model]
    tmp = tempfile.TemporaryDirectory(prefix="tf-bench-rounds-") if workdir is None else None
    work = Path(tmp.name if tmp else workdir)  # type: ignore[arg-type]
    broker = EmbeddedBroker(workdir=(work / "broker").resolve())
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker.start()
    tap: _Tap | None = None
    done: list[tuple[float, Any]] = []
    stop = threading.Event()
    try:
        tap = _Tap(broker.host, broker.port)
        sim = SimConfig(devices=devices, k=k, seed=seed, rate=50)
        with Fleet(work / "boards", build=build, heapsize=heapsize) as fleet:
            for dc in device_configs(sim, FLEET, broker.host, broker.port, KEY):
                fleet.add(dc)
            fleet.start()
            with Checkpoint(work / "coordinator.sqlite") as ck:
                cfg = Config(fleet=FLEET, model=model, sizes=sizes, rounds=rounds, k=k,
                             deadline=deadline, min_replies=devices, attempts=1,
                             online_wait=60.0, seed=seed, key=KEY.encode())
                coord = Coordinator(cfg, broker.host, broker.port, ck,
                                    client_id="tf-bench-coord")
                coord.on_round = lambda res: done.append((time.monotonic(), res))
                errors: list[BaseException] = []

                def work_() -> None:
                    try:
                        coord.run(stop)
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        errors.append(exc)

                th = threading.Thread(target=work_, daemon=True)
                th.start()
                th.join(60 + rounds * (deadline + 5))
                stop.set()
                th.join(10)
                if errors:
                    raise errors[0]
            dead = fleet.dead()
            if dead:
                raise TinyFleetError(f"device {dead[0].id} exited:\n{dead[0].log_tail(8)}")
        time.sleep(0.2)  # the last global reaches the tap
        msgs = tap.snapshot()
    finally:
        stop.set()
        if tap is not None:
            tap.close()
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
    if len(done) < rounds or any(r.status != "done" or len(r.replies) < devices
                                 for _, r in done):
        raise TinyFleetError(f"only {sum(r.status == 'done' for _, r in done)} of {rounds} "
                             f"rounds completed with every device")

    # -- take the tap's record apart: round starts, updates, globals by version ---------
    t_round = wire.topic_round(FLEET, model)
    t_glob = wire.topic_global(FLEET, model)
    starts: dict[int, float] = {}
    updates: dict[int, list[tuple[float, int, bytes]]] = {}
    globs: dict[int, tuple[float, int, bytes]] = {}
    rs_bytes: list[int] = []
    for t, topic, payload, qos, retain in msgs:
        size = mqtt_publish_size(topic, len(payload), qos)
        if not payload:
            continue
        if topic == t_round:
            starts.setdefault(wire.decode(payload).version, t)
            rs_bytes.append(size)
        elif topic == t_glob and not retain:
            globs.setdefault(wire.decode(payload).version, (t, size, payload))
        elif topic.endswith("/update"):
            updates.setdefault(wire.decode(payload).version, []).append((t, size, payload))
    per_round: list[dict[str, Any]] = []
    for _, res in done:
        v = res.version - 1  # the wire round: the version it started from
        ups = sorted(updates.get(v, []))
        row: dict[str, Any] = {"round": res.round, "duration": res.duration,
                               "replies": len(res.replies)}
        if v in starts and len(ups) >= devices:
            row["first_update"] = ups[0][0] - starts[v]
            row["last_update"] = ups[devices - 1][0] - starts[v]
            g = globs.get(res.version)
            if g is not None:
                row["publish"] = g[0] - ups[devices - 1][0]
        per_round.append(row)

    def col(name: str) -> list[float]:
        return [r[name] for r in per_round if name in r]

    lat = Latency(statistics.median(col("duration")), _pct(col("duration"), 0.9),
                  statistics.median(col("first_update") or [float("nan")]),
                  statistics.median(col("last_update") or [float("nan")]),
                  _pct(col("last_update") or [float("nan")], 0.9),
                  statistics.median(col("publish") or [float("nan")]))
    # Bytes: medians over what was counted; JSON from the same weights.
    ups_all = [u for v in updates.values() for u in v]
    down = int(statistics.median(s for _, s, _ in globs.values()))
    up = int(statistics.median(s for _, s, _ in ups_all))
    last_up = wire.parse_update(wire.decode(ups_all[-1][2]), sizes)
    js_up = json_weights(weights.decode(last_up.blob, sizes)[1])
    gmsg = wire.decode(max(globs.values())[2])
    js_down = json_weights(weights.decode(gmsg.payload, sizes)[1])
    jdown = mqtt_publish_size(t_glob, len(js_down), 1)
    jup = mqtt_publish_size(wire.topic_update(FLEET, "dev00"), len(js_up), 1)
    rows = [WireRow(model, list(sizes), weights.param_count(sizes), True, down, up,
                    int(statistics.median(rs_bytes)), jdown, jup, (jdown + jup) / (down + up))]
    rows += [computed_row(m, s, seed) for m, s in MODELS.items() if m != model]
    return Report(devices, rounds, k, build, heapsize or HEAPSIZE[build], lat, rows,
                  per_round)


def to_json(report: Report) -> str:
    """The report as JSON (what `--json` prints)."""
    return json.dumps(asdict(report), indent=2)


def _ms(v: float) -> str:
    return "-" if v != v else f"{v * 1000:.0f} ms"


def format_table(report: Report) -> str:
    """The report as text: latency lines and a bytes table."""
    lat = report.latency
    lines = [f"{report.devices} MicroPython {report.build}-bit devices (heap "
             f"{report.heapsize}), {report.rounds} rounds of k = {report.k} local steps, "
             "embedded Mosquitto on loopback, signed frames"]
    if lat is not None:
        lines += [f"round (start -> aggregation): median {_ms(lat.round_median)}, "
                  f"p90 {_ms(lat.round_p90)}",
                  f"  start -> first update {_ms(lat.first_update_median)}, -> last update "
                  f"{_ms(lat.last_update_median)} (p90 {_ms(lat.last_update_p90)}); "
                  f"last update -> next global published {_ms(lat.publish_median)}"]
    lines += ["bytes per device per round (MQTT PUBLISH packets: header + topic + payload):",
              f"{'model':<8} {'sizes':<10} {'params':>6} {'int16 down':>10} {'up':>6} "
              f"{'f32 JSON down':>13} {'up':>6} {'JSON/int16':>10}  source"]
    for r in report.wire:
        lines.append(f"{r.model:<8} {'-'.join(map(str, r.sizes)):<10} {r.params:>6} "
                     f"{r.down_bytes:>10,} {r.up_bytes:>6,} {r.json_down_bytes:>13,} "
                     f"{r.json_up_bytes:>6,} {r.json_over_binary:>9.2f}x  "
                     + ("measured on the broker" if r.measured else "computed from the codec"))
    rs = report.wire[0].round_start_bytes
    lines.append(f"plus a round start of {rs} B per round (both encodings)")
    lines += report.notes
    return "\n".join(lines)
