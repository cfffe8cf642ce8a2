"""The coordinator with a semantic registry, against a real Mosquitto and small paho
clients standing in for boards of different kinds: it records their self-descriptions,
refuses hostile ones, never selects a board that cannot run the model (not even one that
answers anyway), and writes a model card for every global model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from tfshared import weights, wire
from tinyfleet import td
from tinyfleet.broker import EmbeddedBroker
from tinyfleet.checkpoint import Checkpoint
from tinyfleet.coord_codec import model_id
from tinyfleet.coordinator import Config, Coordinator
from tinyfleet.registry import Registry

FLEET, MODEL = "sem", "sine"     # the sine model's card needs the 'sine' sensor
SIZES = (1, 4, 1)                # small: quick rounds, quick held-out scoring
N = weights.param_count(SIZES)
MID = model_id(MODEL)
SCHEMA = json.loads((Path(__file__).parent / "data" / "td-schema" /
                     "td-json-schema-validation.json").read_text())

GOOD = {"runtime": "MicroPython 1.25.0", "ram": 128_000, "ram_free": 100_000,
        "flash_free": 500_000, "kernels": ["viper", "bytecode"],
        "sensors": [{"name": "sine", "observes": "sine", "virtual": True}]}
BOARDS: dict[str, Any] = {
    "ok-a": GOOD,
    "ok-b": dict(GOOD, kernels=["bytecode"], ram_free=40_000),
    # (A board running these very layer sizes holds their RAM already: this one runs
    # another model.)
    "low-ram": dict(GOOD, ram_free=600, model={"name": "other", "sizes": [1, 2, 1]}),
    "no-sensor": dict(GOOD, sensors=["temperature"]),
    "old-upy": dict(GOOD, runtime="MicroPython 1.19.1"),
    "silent": None,  # never describes itself
    "hostile": b'{"id": "hostile", "ram_free": NaN, "board": "' + b"A" * 9000 + b'"}',
}
COMPATIBLE = {"ok-a", "ok-b"}


class Board:
    """A paho client: retained status and self-description, answers round starts.

    always: answer every round start, selected or not (a misbehaving board).
    """

    def __init__(self, broker: EmbeddedBroker, dev: str, desc: Any, always: bool) -> None:
        self.dev, self.desc, self.always = dev, desc, always
        self.starts: list[tuple[int, tuple[str, ...] | None]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"board-{dev}")
        self.c.will_set(wire.topic_status(FLEET, dev), json.dumps({"state": "offline"}),
                        qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert self.ready.wait(5), f"board {dev} could not subscribe"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        client.subscribe(wire.topic_round(FLEET, MODEL), qos=1)
        if self.desc is not None:
            payload = self.desc if isinstance(self.desc, bytes) else json.dumps(
                {"id": self.dev, "fleet": FLEET,
                 "model": {"name": MODEL, "sizes": list(SIZES)}, **self.desc})
            client.publish(wire.topic_td(FLEET, self.dev), payload, qos=1, retain=True)
        client.publish(wire.topic_status(FLEET, self.dev),
                       json.dumps({"id": self.dev, "state": "online"}), qos=1, retain=True)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        rs = wire.parse_round_start(wire.decode(msg.payload))
        self.starts.append((rs.round, rs.devices))
        if rs.selects(self.dev) or self.always:
            blob = weights.encode([(1 << 10) << 12] * N, SIZES, weights.DTYPE_Q12, rs.round)
            for f in wire.encode_update(MID, rs.round, self.dev, 4, 0, blob):
                client.publish(wire.topic_update(FLEET, self.dev), f, qos=1)

    def close(self) -> None:
        for t in (wire.topic_status(FLEET, self.dev), wire.topic_td(FLEET, self.dev)):
            self.c.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def boards(mosquitto: EmbeddedBroker) -> Iterator[dict[str, Board]]:
    # Every incompatible board answers every round start: the coordinator must ignore it.
    made = {dev: Board(mosquitto, dev, desc, always=dev not in COMPATIBLE)
            for dev, desc in BOARDS.items()}
    yield made
    for b in made.values():
        b.close()


def run_coordinator(broker: EmbeddedBroker, tmp_path: Path, **kw: Any) -> tuple[Coordinator,
                                                                                   Path, Path]:
    db, reg = tmp_path / "ck.sqlite", tmp_path / "registry.sqlite"
    cfg = Config(fleet=FLEET, model=MODEL, sizes=SIZES, rounds=3, deadline=3.0, attempts=2,
                 settle=1.0, registry=str(reg), **kw)
    with Checkpoint(db) as ck:
        coord = Coordinator(cfg, broker.host, broker.port, ck)
        t = threading.Thread(target=coord.run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "coordinator did not finish its rounds"
    return coord, db, reg


@pytest.mark.parametrize("strategy, per_round", [("reptile", 0), ("reptile", 1),
                                                 ("tinyreptile", 1)])
def test_coordinator_selects_only_compatible_boards(mosquitto: EmbeddedBroker,
                                                    boards: dict[str, Board], tmp_path: Path,
                                                    strategy: str, per_round: int) -> None:
    coord, db, reg_path = run_coordinator(mosquitto, tmp_path, strategy=strategy,
                                          per_round=per_round)
    assert coord.last_round == 3

    # Every round selected compatible boards only, and took replies from them only.
    with Checkpoint(db) as ck:
        hist = [r for r in ck.history() if r.status != "init"]
    assert [r.status for r in hist] == ["done"] * 3
    for r in hist:
        assert r.selected and set(r.selected) <= COMPATIBLE, (r.round, r.selected)
        assert set(r.replied) <= COMPATIBLE, (r.round, r.replied)
    if per_round == 0:
        assert all(set(r.selected) == COMPATIBLE for r in hist)
    # Round starts name their boards (no "every device" that an incompatible one would
    # join), and the incompatible boards' unsolicited updates were ignored.
    starts = boards["ok-a"].starts
    assert len(starts) >= 3 and all(devs is not None and set(devs) <= COMPATIBLE
                                    for _, devs in starts), starts
    assert coord.ignored >= 1

    with Registry(reg_path) as reg:
        # Described boards are registered (sanitized); the hostile and the silent are not.
        recs = {r.description.id: r for r in reg.devices(FLEET)}
        assert set(recs) == set(BOARDS) - {"silent", "hostile"}
        for rec in recs.values():
            assert td.validate(rec.td, SCHEMA) == []
        assert recs["low-ram"].description.ram_free == 600
        verdicts = {v.device: v for v in reg.match(reg.card(MODEL, FLEET), FLEET)}
        assert {d for d, v in verdicts.items() if v.ok} == COMPATIBLE
        assert "RAM free" in verdicts["low-ram"].reasons[0]
        assert verdicts["no-sensor"].reasons == ("missing sensor sine",)
        assert verdicts["old-upy"].reasons == ("MicroPython 1.19.1 < 1.22",)
        # A card per global model: the initial one and one per round, with lineage.
        cards = reg.cards(MODEL, FLEET)
    assert [c["version"] for c in cards] == [1, 2, 3, 4]
    last = cards[-1]
    assert last["lineage"]["rounds"] == [1, 2, 3]
    assert set(last["lineage"]["devices"]) <= COMPATIBLE and last["lineage"]["devices"]
    assert last["lineage"]["parent"] == f"{FLEET}/{MODEL}/v3"
    assert last["lineage"]["strategy"] == strategy
    assert cards[0]["lineage"]["rounds"] == [] and cards[0]["lineage"]["parent"] is None
    mse = last["quality"]["heldout_mse"]
    assert set(mse) == {"0", "8", "32"} and all(v == v and v >= 0 for v in mse.values())
    assert last["memory"]["viper"]["ram"]["step"] == 0
    assert last["requirements"]["sensors"] == ["sine"]


def test_a_board_that_frees_memory_becomes_eligible(mosquitto: EmbeddedBroker,
                                                    tmp_path: Path) -> None:
    # Only "low" is online and it cannot run the model: the coordinator waits; once its
    # new description says it has room, it is selected and the rounds run.
    other = {"name": "other", "sizes": [1, 2, 1]}
    low = Board(mosquitto, "low", dict(GOOD, ram_free=600, model=other), always=False)
    try:
        def later() -> None:
            time.sleep(2.5)
            low.desc = dict(GOOD, ram_free=90_000, model=other)
            low.c.reconnect()  # re-announces: status and the new description

        threading.Thread(target=later, daemon=True).start()
        t0 = time.monotonic()
        coord, db, _ = run_coordinator(mosquitto, tmp_path, online_wait=0.5)
        assert coord.last_round == 3 and time.monotonic() - t0 >= 2.5
        with Checkpoint(db) as ck:
            assert all(r.selected == ["low"] for r in ck.history() if r.status == "done")
    finally:
        low.close()
