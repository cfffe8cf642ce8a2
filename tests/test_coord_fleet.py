"""The coordinator with real MicroPython devices (32-bit unix port, board-sized heap) on a
real Mosquitto: what it aggregates is exactly what the devices sent, recomputed here from
the update frames captured on the broker."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from tfshared import weights, wire
from tinyfleet.broker import EmbeddedBroker
from tinyfleet.checkpoint import Checkpoint
from tinyfleet.coordinator import Config, Coordinator
from tinyfleet.fleet import Fleet, Watcher

SIZES = (1, 8, 1)
FLEET, MODEL = "e2e", "sine"
KEY = "e2e-fleet-key"


def test_fedavg_rounds_with_micropython_devices(mosquitto: EmbeddedBroker, tmp_path: Path):
    # Prepare: 3 signed devices on their own sine tasks, a watcher on every update topic
    watch = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/dev/+/update"],
                    client_id="e2e-watch")
    fleet = Fleet(tmp_path / "boards", build="32")
    for i in range(3):
        fleet.add({"id": f"d{i}", "fleet": FLEET, "model": MODEL, "broker": mosquitto.host,
                   "port": mosquitto.port, "fleet_key": KEY, "keepalive": 10,
                   "sizes": list(SIZES), "lr_shift": 5, "seed": i + 1, "rate": 200})
    ck = Checkpoint(tmp_path / "c.db")
    cfg = Config(fleet=FLEET, model=MODEL, sizes=SIZES, strategy="fedavg", rounds=2, k=16,
                 deadline=20.0, min_replies=3, online_wait=30.0, settle=0.5,
                 key=KEY.encode())
    coord = Coordinator(cfg, mosquitto.host, mosquitto.port, ck)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            coord.run()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    # Execute
    with fleet:
        fleet.start()
        th = threading.Thread(target=work, daemon=True)
        th.start()
        th.join(120)
        logs = "\n".join(d.log_tail(10) for d in fleet.devices)
    alive = th.is_alive()
    ck.close()
    watch.close()
    # Assert
    assert not alive and not errors, f"{errors} {logs}"
    with Checkpoint(tmp_path / "c.db") as ck2:
        hist = ck2.history()
    assert [(h.round, h.status, h.replied) for h in hist[1:]] == \
        [(r, "done", ["d0", "d1", "d2"]) for r in (1, 2)], logs
    for h in hist[1:]:
        # the updates for this round as they crossed the broker (signed, one frame each)
        phis, counts = {}, {}
        for _topic, payload, _ in watch.messages:
            upd = wire.parse_update(wire.decode(payload, KEY.encode()), SIZES)
            if upd.round == h.round:
                _, q24 = weights.decode(upd.blob, SIZES)
                phis[upd.device_id] = np.array(q24, dtype=np.float64)
                counts[upd.device_id] = upd.samples
        assert sorted(phis) == ["d0", "d1", "d2"] and set(counts.values()) == {16}
        expected = np.rint(sum(counts[d] * phis[d] for d in phis) / sum(counts.values()))
        np.testing.assert_array_equal(h.weights, expected, err_msg=f"round {h.round}")
        assert not np.array_equal(h.weights, hist[h.round - 1].weights)  # it moved
