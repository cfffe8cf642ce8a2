"""The device agent on the MicroPython unix port (both builds, board-sized heap): task
drift counts round samples too, a board without any network learns alone and writes
status.json for `tinyfleet inspect`, and its compact self-description (device/describe.py),
published retained on tf/<fleet>/dev/<id>/td of a real Mosquitto.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_client import global_frame
from tfshared import wire
from tinyfleet import fleet
from tinyfleet.broker import EmbeddedBroker

DESC_KEYS = {"id", "fleet", "board", "mcu", "port", "clock", "ram", "ram_free", "flash",
             "flash_free", "sensors", "runtime", "mpy", "kernels", "kernel", "tinyfleet",
             "model", "security", "broker"}


def run_script(root: Path, name: str, code: str, build: str) -> list[str]:
    """Run `code` as root/name on the unix port with a board's heap; its stdout lines."""
    (root / name).write_text(code)
    proc = fleet.upy.run(root, name, build=build, heapsize=fleet.HEAPSIZE[build], timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    return out.splitlines()


DRIFT = """
import json, config, agent, datasource
from tfshared import wire
cfg = config.load()
d = agent.Device(cfg)


class Rec:
    # Records every target the device reads, in learning and in rounds alike.
    def __init__(self, src):
        self.src = src
        self.ys = []

    def read(self, x, y):
        self.src.read(x, y)
        self.ys.append(y[0])

    def drift(self):
        self.src.drift()

    def __getattr__(self, name):
        return getattr(self.src, name)


d.data = Rec(d.data)
for k, learn in ((16, 40), (60, 44), (3, 0), (40, 37)):
    for _ in range(learn):
        d.learn()
    d.pending = wire.RoundStart(0, d.model_id, k, 6, 10000, None)
    d.run_round()
ref = datasource.SineTask(seed=cfg["seed"])
x, y = d.x, d.y
want = []
for i in range(len(d.data.ys)):
    ref.read(x, y)
    want.append(y[0])
    if (i + 1) % cfg["drift"] == 0:
        ref.drift()
print(json.dumps({"samples": d.samples, "rounds": d.rounds, "n": len(want),
                  "same": want == d.data.ys}))
"""


def test_drift_every_drift_samples_counting_rounds(tmp_path: Path, build: str) -> None:
    # Prepare: no broker (port 1); rounds of k = 16, 60, 3, 40 between online samples,
    # crossing drift points (every 50 samples) inside rounds: at 50, 150 and 250.
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "seed": 5, "drift": 50,
                                               "port": 1}, build)
    # Execute
    res = json.loads(run_script(root, "drift.py", DRIFT, build)[-1])
    # Assert: the device read exactly the stream of a task that drifts every 50 samples
    assert res == {"samples": 240, "rounds": 4, "n": 240, "same": True}, res


def test_offline_board_learns_and_writes_status(tmp_path: Path, build: str) -> None:
    # Prepare: a board without a network stack (no client, no umqtt, as on a port
    # without sockets), status.json saved every second
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "seed": 5, "rate": 100,
                                               "max_samples": 350, "status_save": 1,
                                               "password": "pw", "fleet_key": "k"}, build)
    (root / "client.mpy").unlink()
    (root / "lib" / "umqtt" / "simple.mpy").unlink()
    # Execute
    lines = run_script(root, "boot.py", "import main\nmain.main()\n", build)
    # Assert: it learned all its samples, saving its status on the way (not per step)
    saved = [json.loads(line[len("status: "):]) for line in lines if line.startswith("status: ")]
    samples = [s["samples"] for s in saved]
    assert 4 <= len(saved) <= 6 and samples == sorted(samples) and samples[-1] == 350, lines
    assert "link: offline, learning alone (no network stack:" in "\n".join(lines)
    st = json.loads((root / "status.json").read_text())
    assert st == saved[-1] and st["state"] == "stopped" and st["kernel"] == "viper", st
    assert st["net"].startswith("down: no network stack: ") and 0 < st["loss"] < 64, st
    assert not (root / "status.json.tmp").exists()
    # ...and inspect reads it (secrets masked)
    r = json.loads(run_script(root, "insp.py", "import tfinspect\ntfinspect.main()\n", build)[-1])
    assert (r["samples"], r["kernel"], r["model_version"], r["state"], r["last_round"]) == (
        350, "viper", 0, "stopped", 0), r
    assert r["model"] == {"sizes": [1, 40, 40, 1], "version": 0, "params": 1761,
                          "file": None}, r
    assert r["mem_free"] == st["mem_free"] and r["loss"] == st["loss"]
    assert r["config"]["password"] == "***" and r["config"]["fleet_key"] == "***", r


STALE_ROUND = """
import json, config, agent
from tfshared import wire
d = agent.Device(config.load())
d.gver = 5  # as if it had accepted global v5
before = list(d.net.weights)
d.pending = wire.RoundStart(3, d.model_id, 16, 6, 10000, None)
d.run_round()
print(json.dumps({"rounds": d.rounds, "rejected": d.rejected, "reason": d.reason,
                  "pending": d.pending is None, "same": list(d.net.weights) == before}))
"""


def test_round_from_an_older_global_is_skipped(tmp_path: Path, build: str) -> None:
    # Prepare: a board holding global v5 (no broker: port 1) is picked for round 3, whose
    # start is v3 (a coordinator behind the fleet)
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "seed": 5, "port": 1}, build)
    # Execute
    res = json.loads(run_script(root, "stale.py", STALE_ROUND, build)[-1])
    # Assert: no round run, no update from the wrong weights, and the reason is reported
    assert res == {"rounds": 0, "rejected": 1, "pending": True, "same": True,
                   "reason": "round 3 skipped: it starts from v3, this board holds v5"}, res


DESCRIBE = """
import json, config, agent
d = agent.Device(config.load())
text = json.dumps(d.describe())
print(len(text))
print(text)
"""


def test_description_compact_and_complete(tmp_path: Path, build: str) -> None:
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "fleet": "lab", "port": 1,
                                               "sensors": ["temperature"], "user": "u",
                                               "tinyfleet_version": "0.1.0"}, build)
    n, text = run_script(root, "desc.py", DESCRIBE, build)[-2:]
    d = json.loads(text)
    assert int(n) < 700 and set(d) == DESC_KEYS, (n, d)
    assert (d["id"], d["fleet"], d["port"], d["board"]) == ("a1", "lab", "linux", "linux")
    assert d["sensors"] == ["temperature"] and d["tinyfleet"] == "0.1.0"
    assert d["runtime"] == "MicroPython 1.25.0" and d["kernel"] == "viper"
    assert d["kernels"] == ["viper", "bytecode"], d  # no ulab in these builds
    assert d["model"] == {"name": "sine", "sizes": [1, 40, 40, 1], "params": 1761,
                          "version": 0}
    heap = {"32": 128 * 1024, "64": 256 * 1024}[build]
    assert heap * 0.95 <= d["ram"] <= heap and 10_000 < d["ram_free"] < d["ram"], d
    assert 0 < d["flash_free"] <= d["flash"] and d["clock"] is None  # unix: no freq()
    assert (d["security"], d["broker"]) == ("basic", "127.0.0.1:1")


def test_description_retained_on_broker(tmp_path: Path, mosquitto: EmbeddedBroker) -> None:
    # Prepare: one device (32-bit build, 128 KB heap) on a real broker
    topic = wire.topic_td("t", "dev1")
    w = fleet.Watcher(mosquitto.host, mosquitto.port, ["tf/t/#"], client_id="w1")
    f = fleet.Fleet(tmp_path, build="32")
    dev = f.add({"id": "dev1", "fleet": "t", "model": "sine", "broker": mosquitto.host,
                 "port": mosquitto.port, "fleet_key": "s3cret-fleet-key", "seed": 7})
    try:
        # Execute
        f.start()
        assert w.wait_for(lambda t, p: t == topic, 15) is not None, dev.log_tail()
        late = fleet.Watcher(mosquitto.host, mosquitto.port, [topic], client_id="w2")
        try:
            m = late.wait_for(lambda t, p: True, 5)
        finally:
            late.close()
        # Assert: a subscriber that comes later still gets it: retained
        assert m is not None and m[2] is True, m
        d = json.loads(m[1])
        assert set(d) == DESC_KEYS and d["id"] == "dev1" and d["model"]["version"] == 0, d
        assert len(m[1]) < 700 and d["security"] == "nosec", len(m[1])
        # A new global model: the description names the version it now runs
        frame, _ = global_frame(3, seed=11)
        mark = w.mark()
        w.publish(wire.topic_global("t", "sine"), frame, retain=True)
        m = w.wait_for(lambda t, p: t == topic and json.loads(p)["model"]["version"] == 3,
                       15, mark)
        assert m is not None, dev.log_tail()
        time.sleep(0.2)
        assert dev.running, dev.log_tail()
    finally:
        f.stop()
        w.close()


@pytest.mark.parametrize("cfg", [{"status_file": None}, {"status_save": 0}])
def test_status_file_off_or_rounds_only(tmp_path: Path, cfg: dict) -> None:
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "port": 1, "rate": 0,
                                               "max_samples": 500, **cfg}, "32")
    lines = run_script(root, "boot.py", "import main\nmain.main()\n", "32")
    saves = [line for line in lines if line.startswith("status: ")]
    if cfg.get("status_file", "x") is None:
        assert saves == [] and not (root / "status.json").exists()
    else:  # at start and at the end only
        assert len(saves) == 2 and json.loads(saves[-1][8:])["samples"] == 500, lines


CRASH = """
import config, agent
d = agent.Device(config.load())
learn = d.learn


def failing():
    if d.samples == 123:
        raise OSError(5)  # e.g. a sensor read failing
    learn()


d.learn = failing
try:
    d.run()
except OSError:
    print("raised")
"""


def test_crash_leaves_its_reason_in_status(tmp_path: Path) -> None:
    root = fleet.stage_device(tmp_path / "b", {"id": "a1", "port": 1, "rate": 0}, "32")
    lines = run_script(root, "crash.py", CRASH, "32")
    st = json.loads((root / "status.json").read_text())
    assert lines[-1] == "raised" and st["state"] == "crashed", lines
    assert (st["samples"], st["reason"]) == (123, "crashed: OSError(5,)"), st
