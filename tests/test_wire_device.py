"""The codec as a board uses it, under a board-sized heap: signed chunked global weights
for 1-40-40-1 reassembled into a buffer allocated once, decoded into the model's
preallocated array, persisted atomically, reloaded, and sent back as a device update
that the host decodes. Both MicroPython builds, -X heapsize well below an ESP32's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tfshared import weights as W
from tfshared import wire
from tinyfleet import upy

KEY = b"device-flow-key"
SIZES = (1, 40, 40, 1)
HEAP = {"32": "64k", "64": "80k"}  # ESP32 MicroPython: ~100-150 KB free; 64-bit objects
# are bigger. The codec modules themselves take ~23 KB (32-bit) when loaded from .mpy.

SCRIPT = """
import gc, json
from array import array
from tfshared import weights, wire
from store import Store
from datasource import SineTask
SIZES = (1, 40, 40, 1)
KEY = %r
def run():
    n = weights.param_count(SIZES)
    model = weights.zeros(n)  # stands in for MLP.weights
    rx = wire.Reassembler(weights.encoded_size(SIZES, weights.DTYPE_Q12), max_chunks=4,
                          key=KEY)
    last = None
    msg = None
    for i in range(%d):
        f = open('g%%d.bin' %% i, 'rb'); frame = f.read(); f.close()
        m = rx.feed(frame)
        frame = None
        if m is not None:
            msg = m
    wire.check_fresh(msg.version, last)
    info = wire.global_into(msg, model, SIZES)
    st = Store('weights.bin')
    st.save(model, SIZES, info.model_version)
    before = weights.crc32(model)
    for i in range(n):
        model[i] = 0
    got = st.load(model, SIZES)  # back into the same array: no second copy
    same = weights.crc32(model) == before
    src = SineTask(seed=3)
    x = array('i', [0]); y = array('i', [0])
    for _ in range(32):
        src.read(x, y)
    for i in range(n):  # a pretend SGD result: nudge every weight
        model[i] += 4096 if i & 1 else -4096
    blob = weights.encode(model, SIZES, weights.DTYPE_Q12, info.model_version)
    frames = wire.encode_update(msg.model_id, msg.version, 'dev-7', 32, 77, blob, key=KEY,
                                chunk_size=2048)
    blob = None
    for i in range(len(frames)):
        f = open('u%%d.bin' %% i, 'wb'); f.write(frames[i]); f.close()
    gc.collect()
    return [len(frames), got.model_version, same, gc.mem_free()]
print(json.dumps(run()))
"""


def test_board_round_trip_in_a_small_heap(upy_runner, build: str, board_root: Path) -> None:
    # Prepare: a board runs compiled .mpy (compiling .py needs more RAM than running it)
    for src in [board_root / "store.py", board_root / "datasource.py",
                *sorted((board_root / "lib" / "tfshared").glob("*.py"))]:
        subprocess.run([str(upy.mpy_cross()), src.name], cwd=src.parent, check=True)
        src.unlink()
    # the coordinator's side, signed and chunked
    n = W.param_count(SIZES)
    master = [((i * 7919) % 40001 - 20000) * 2000 for i in range(n)]
    blob = W.encode(master, SIZES, W.DTYPE_Q12, 12)
    frames = wire.encode_global(wire.model_id("sine"), 12, blob, key=KEY, chunk_size=1024)
    assert len(frames) == 4
    for i, f in enumerate(reversed(frames)):  # out of order on purpose
        (board_root / f"g{i}.bin").write_bytes(f)
    # Execute
    count, version, same, free = upy_runner.run_json(SCRIPT % (KEY, len(frames)),
                                                     build=build, heapsize=HEAP[build])
    # Assert: the board got exactly the Q12 of the master weights, persisted them, and
    # its update decodes on the host to those weights nudged by +-1.0
    assert (version, same) == (12, True)
    assert free > 0, json.dumps(free)
    rx = wire.Reassembler(65536, key=KEY)
    got = [rx.feed((board_root / f"u{i}.bin").read_bytes()) for i in range(count)]
    upd = wire.parse_update(got[-1], SIZES)
    assert (upd.device_id, upd.round, upd.samples, upd.loss_q12) == ("dev-7", 12, 32, 77)
    _, q24 = W.decode(upd.blob, SIZES)
    want = [W.to_q24(W.to_q12(W.to_q24(W.to_q12(m)) + (4096 if i & 1 else -4096)))
            for i, m in enumerate(master)]
    assert list(q24) == want
