"""The board side of the self-description contract: device/describe.py, run on the real
MicroPython unix port, produces what host/td.py accepts in full, and its TD validates."""

from __future__ import annotations

import json
from pathlib import Path

from tinyfleet import td

SCHEMA = json.loads((Path(__file__).parent / "data" / "td-schema" /
                     "td-json-schema-validation.json").read_text())

SCRIPT = """
import json
import describe
from mlp import MLP

net = MLP((1, 40, 40, 1), kernel="auto")
cfg = {"id": "dev1", "fleet": "demo", "model": "sine", "broker": "127.0.0.1", "port": 1883,
       "user": "u", "tinyfleet_version": "0.1.0"}
print(json.dumps(describe.build(cfg, (1, 40, 40, 1), net.n_params, 7, net.kernel,
                                describe.kernels(net.kernel))))
"""


def test_device_description_is_accepted_in_full(upy_runner, build: str) -> None:
    raw = upy_runner.run(SCRIPT, build=build, heapsize="256k").strip().splitlines()[-1]
    assert len(raw) < 1024, "a compact description is a few hundred bytes"
    d = td.sanitize(raw.encode(), "dev1")
    assert d.dropped == (), f"keys the host does not know: {d.dropped}"
    assert (d.fleet, d.runtime, d.security, d.broker) == ("demo", "MicroPython", "basic",
                                                         "127.0.0.1:1883")
    assert d.version.startswith("1.") and d.tinyfleet == "0.1.0"
    assert 0 < d.ram_free < d.ram <= 256 * 1024
    assert "bytecode" in d.kernels and d.kernel in d.kernels
    assert d.model == td.ModelInfo("sine", (1, 40, 40, 1), 1761, 7)
    assert [(s.name, s.virtual) for s in d.sensors] == [("sine", True)]
    thing = td.expand(d)
    assert td.validate(thing, SCHEMA) == []
    assert thing["securityDefinitions"] == {"basic_sc": {"scheme": "basic", "in": "auto"}}
