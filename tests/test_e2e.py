"""End to end: a real Mosquitto, the coordinator and 4 MicroPython device processes
(32-bit build, 128 KB heap each) run federated Reptile rounds on their own sine tasks;
the global model gets better at being adapted to held-out tasks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tinyfleet.broker import EmbeddedBroker
from tinyfleet.simulate import SimConfig, run


def test_fleet_meta_learns(tmp_path: Path, mosquitto: EmbeddedBroker):  # noqa: F811
    # Prepare
    cfg = SimConfig(devices=4, rounds=30, out=tmp_path / "run", broker=mosquitto.address,
                    seed=1, eval_tasks=60, eval_points=2, deadline=20)
    log = io.StringIO()
    # Execute
    res = run(cfg, stream=log)
    # Assert: every round done by every device, every global pushed was adopted
    assert len(res.rounds) == 30, log.getvalue()
    assert all(r.status == "done" and len(r.replied) == 4 for r in res.rounds), res.rounds
    assert res.coordinator_ignored == 0
    assert sorted(res.devices) == ["dev00", "dev01", "dev02", "dev03"], res.devices
    for dev, st in res.devices.items():
        assert st["rejected"] == 0 and st["rounds"] == 30, (dev, st)
        assert st["kernel"] == "viper", st
    # ...and held-out MSE after 32 adaptation steps is lower than from the initial weights
    first, last = res.initial, res.rounds[-1]
    assert last.heldout_after < 0.9 * first.heldout_after, (first, last)
    # Report files
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    assert len(report["rounds"]) == 30 and report["initial"]["heldout_after"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Held-out MSE" in (out / "report.md").read_text()
