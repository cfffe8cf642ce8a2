"""The device's learning loop allocates nothing: Device.learn() (read a sample, predict,
track the error, one SGD step, task drift) under micropython.heap_lock(), on both unix
builds (the 32-bit one has a board's 31-bit small ints) with a board-sized heap."""

from __future__ import annotations

import json
from pathlib import Path

from tinyfleet import fleet


def test_learn_step_allocates_nothing(tmp_path: Path, build: str):
    # Prepare: a staged board (precompiled modules, umqtt, config) -- no broker needed
    root = fleet.stage_device(tmp_path / "board", {"id": "a1", "seed": 5, "drift": 50,
                                                   "port": 1}, build)
    (root / "alloc.py").write_text("""
import gc, json, micropython
import config, agent
d = agent.Device(config.load())


def locked(d, n):
    # In a function: module-level loop variables would be new globals (a dict insert).
    gc.collect()
    micropython.heap_lock()
    try:
        for _ in range(n):
            d.learn()
        return True
    except MemoryError:
        return False
    finally:
        micropython.heap_unlock()


d.learn()  # warm up: first-call caches
ok = locked(d, 300)
print(json.dumps({"ok": ok, "samples": d.samples, "loss": d.err_ema / 65536,
                  "amp": d.data.amp, "kernel": d.net.kernel}))
""")
    # Execute
    proc = fleet.upy.run(root, "alloc.py", build=build, heapsize=fleet.HEAPSIZE[build])
    # Assert
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert res["ok"], "an online learning step allocated"
    assert res["samples"] == 301 and res["kernel"] == "viper", res
    assert 0 < res["loss"] < 256, res
