"""The coordinator with a registry and real MicroPython devices (32-bit build, 128 KB
heap): their own device/describe.py self-descriptions reach the registry, and a board
that declares no sine sensor is never selected for the sine model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tinyfleet.broker import EmbeddedBroker
from tinyfleet.checkpoint import Checkpoint
from tinyfleet.coordinator import Config, Coordinator
from tinyfleet.fleet import Fleet
from tinyfleet.registry import Registry

SCHEMA = json.loads((Path(__file__).parent / "data" / "td-schema" /
                     "td-json-schema-validation.json").read_text())


def device(i: int, host: str, port: int, **extra: object) -> dict[str, object]:
    return {"id": f"b{i}", "fleet": "sf", "model": "sine", "broker": host, "port": port,
            "keepalive": 10, "sizes": [1, 40, 40, 1], "seed": 50 + i, "rate": 200,
            "status_every": 500, **extra}


def test_real_devices_only_compatible_ones_selected(tmp_path: Path,
                                                    mosquitto: EmbeddedBroker) -> None:
    from tinyfleet import td

    host, port = mosquitto.host, mosquitto.port
    with Fleet(tmp_path / "boards") as fleet:
        fleet.add(device(0, host, port))
        fleet.add(device(1, host, port))
        fleet.add(device(2, host, port, sensors=["temperature"]))  # no sine data source
        fleet.start()
        with Checkpoint(tmp_path / "ck.sqlite") as ck:
            cfg = Config(fleet="sf", model="sine", sizes=(1, 40, 40, 1), rounds=2,
                         deadline=20, min_replies=2, online_wait=60, settle=2.0,
                         registry=str(tmp_path / "reg.sqlite"))
            coord = Coordinator(cfg, host, port, ck, client_id="c-semantic-fleet")
            coord.run(threading.Event())
            hist = [h for h in ck.history() if h.status != "init"]
        assert [(h.status, h.selected, h.replied) for h in hist] == \
            [("done", ["b0", "b1"], ["b0", "b1"])] * 2, (hist, fleet.devices[2].log_tail())
    with Registry(tmp_path / "reg.sqlite") as reg:
        recs = {r.description.id: r for r in reg.devices("sf")}
        assert set(recs) == {"b0", "b1", "b2"}
        for r in recs.values():
            d = r.description
            assert d.runtime == "MicroPython" and 0 < d.ram_free < d.ram <= 128 * 1024
            assert d.model.sizes == (1, 40, 40, 1) and d.dropped == ()
            assert td.validate(r.td, SCHEMA) == []
        verdicts = {v.device: v for v in reg.match(reg.card("sine", "sf"), "sf")}
        assert verdicts["b2"].reasons == ("missing sensor sine",)
        assert verdicts["b0"].ok and verdicts["b1"].ok
        cards = reg.cards("sine", "sf")
        assert len(cards) == 3 and cards[-1]["lineage"]["devices"] == ["b0", "b1"]
