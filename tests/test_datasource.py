"""device/datasource.py: the integer sine task. Accuracy against math.sin (CPython), the
same sample stream on CPython and both MicroPython builds, and zero allocation per read
under heap_lock (the 32-bit build has 31-bit small ints, so a long int would allocate)."""

from __future__ import annotations

import math
import sys
from array import array

import pytest
from tinyfleet.heldout import datasource

# device/datasource.py itself, loaded from its file: no device/ on sys.path, where its
# modules would shadow others (device code is imported on the host only this way).
D = datasource()


def test_integer_sine_accuracy() -> None:
    # Execute: every Q12 angle over more than two turns, both signs
    worst = max(abs(D.sin_q15(t) / 32768 - math.sin(t / 4096)) for t in range(-60000, 60000))
    # Assert
    assert worst < 2e-4, f"sin_q15 max error {worst:.2e}"
    assert D.sin_q15(0) == 0 and D.sin_q15(6434) == 32768  # sin(pi/2 in Q12)


def test_targets_match_float_sine() -> None:
    src = D.SineTask(seed=7)
    x, y = array("i", [0]), array("i", [0])
    worst = 0.0
    for _ in range(40):
        src.drift()
        amp, phase = src.amp / 4096, src.phase / 4096
        for _ in range(500):
            assert src.read(x, y) is True
            want = amp * math.sin(5 * x[0] / 4096 + phase)
            worst = max(worst, abs(y[0] / 4096 - want))
    assert worst < 1e-3, f"target error {worst:.2e}"


def test_task_and_input_ranges() -> None:
    src = D.SineTask(seed=11)
    amps, phases = [], []
    for _ in range(3000):
        src.drift()
        amps.append(src.amp)
        phases.append(src.phase)
    assert 410 <= min(amps) < 600 and 20300 < max(amps) <= 20480
    assert 0 <= min(phases) < 100 and 12700 < max(phases) <= 12868
    x, y = array("i", [0]), array("i", [0])
    xs = []
    for _ in range(20000):
        src.read(x, y)
        xs.append(x[0])
    assert min(xs) == -4096 and max(xs) == 4096
    assert abs(sum(xs) / len(xs)) < 60, "x/5 should be uniform around 0"
    assert all(0 <= src.rand30() < 2**30 for _ in range(10000))


def test_set_task_validates() -> None:
    src = D.SineTask(seed=1, amp=4096, phase=0)
    assert (src.amp, src.phase) == (4096, 0)
    with pytest.raises(ValueError, match="amplitude 409"):
        src.set_task(409, 0)
    with pytest.raises(ValueError, match="phase 12869"):
        src.set_task(4096, 12869)
    assert (src.amp, src.phase) == (4096, 0)
    with pytest.raises(NotImplementedError):
        D.DataSource().read(array("i", [0]), array("i", [0]))


STREAM = """
import json
from array import array
from datasource import SineTask
src = SineTask(seed=12345)
x = array('i', [0]); y = array('i', [0])
out = [[src.amp, src.phase]]
for i in range(300):
    src.read(x, y)
    out.append([x[0], y[0]])
    if i % 100 == 99:
        src.drift()
        out.append([src.amp, src.phase])
src.set_task(20480, 12868)
src.read(x, y)
out.append([x[0], y[0]])
print(json.dumps(out))
"""


def test_same_stream_on_micropython_as_cpython(upy_runner, build: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the host runs the very same module (importable by name for this test only)
    monkeypatch.setitem(sys.modules, "datasource", D)
    want = []
    ns: dict = {}
    exec(STREAM.replace("print(json.dumps(out))", ""), ns)
    want = ns["out"]
    # Execute
    got = upy_runner.run_json(STREAM, build=build)
    # Assert
    assert got == want


HEAPLOCK = """
import micropython
from array import array
from datasource import SineTask
src = SineTask(seed=99)
x = array('i', [0]); y = array('i', [0])
src.read(x, y)
src.drift()
def run(src, x, y):  # locals only: a new global would grow the module dict
    micropython.heap_lock()
    try:
        for i in range(5000):
            src.read(x, y)
            if i % 500 == 0:
                src.drift()
                src.set_task(src.amp, src.phase)
    finally:
        micropython.heap_unlock()
run(src, x, y)
print('{"ok": true, "last": [%d, %d]}' % (x[0], y[0]))
"""


def test_read_allocates_nothing(upy_runner, build: str) -> None:
    # heap_lock makes any allocation raise MemoryError, which fails the run.
    out = upy_runner.run_json(HEAPLOCK, build=build)
    assert out["ok"] is True
