"""The device agent on the MicroPython unix port (both builds, board-sized heap): task
drift counts round samples too."""

from __future__ import annotations

import json
from pathlib import Path

from tinyfleet import fleet


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
