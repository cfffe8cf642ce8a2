"""device/store.py: atomic saves and crash recovery, on CPython and both MicroPython builds.

Crashes are simulated by leaving the files a power cut would leave: a truncated tmp file
(cut during the write), a truncated or bit-flipped main file, and on a simulated FAT
(rename onto an existing file fails) a cut between remove() and rename().
"""

from __future__ import annotations

import binascii
import struct
from pathlib import Path

PRELUDE = """
import json, os
from array import array
from store import Store
from tfshared import weights as W
SIZES = (1, 3, 1)
N = W.param_count(SIZES)
def wv(v):  # a recognisable weight vector for model version v
    return array('i', [v * 1000 + i for i in range(N)])
def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
def truncate(p, n):
    f = open(p, 'rb'); d = f.read(); f.close()
    f = open(p, 'wb'); f.write(d[:n]); f.close()
def flip(p, at):
    f = open(p, 'rb'); d = bytearray(f.read()); f.close()
    d[at] ^= 1
    f = open(p, 'wb'); f.write(d); f.close()
def copy(a, b):
    f = open(a, 'rb'); d = f.read(); f.close()
    f = open(b, 'wb'); f.write(d); f.close()
def loaded(st, into=None, sizes=SIZES):
    info = st.load(into, sizes)
    if info is None:
        return None
    return [info.model_version, list(info.weights) == list(wv(info.model_version)),
            info.path]
res = {}
"""


def expected_file(values: list[int], model_version: int, sizes=(1, 3, 1)) -> bytes:
    head = b"TFWB" + struct.pack("<BBHIIB", 1, 2, 0, model_version, len(values), len(sizes))
    head += struct.pack(f"<{len(sizes)}H", *sizes)
    body = struct.pack(f"<{len(values)}i", *values)
    return head + body + struct.pack("<I", binascii.crc32(head + body))


def test_save_writes_the_documented_blob(run_json, board_root: Path) -> None:
    out = run_json(PRELUDE + """
st = Store('w.bin')
st.save(wv(3), SIZES, 3)
print(json.dumps([exists('w.bin'), exists('w.bin.tmp')]))
""")
    n = 10  # (1+1)*3 + (3+1)*1
    assert out == [True, False], "save must leave only the main file"
    want = expected_file([3000 + i for i in range(n)], 3)
    got = (board_root / "w.bin").read_bytes()
    assert got == want, f"{got.hex()} != {want.hex()}"


def test_save_load_round_trip_into_preallocated(run_json) -> None:
    out = run_json(PRELUDE + """
st = Store('w.bin')
res['empty'] = loaded(st)
st.save(wv(1), SIZES, 1)
buf = array('i', [0] * N)
res['v1'] = loaded(st, buf)
res['same_buffer'] = st.load(buf, SIZES).weights is buf
st.save(wv(2), SIZES, 2)
res['v2'] = loaded(st)
res['other_shape'] = st.load(None, (1, 4, 1)) is None
res['wrong_len_into'] = st.load(array('i', [0] * 3), SIZES) is None
bad = None
try:
    st.save(array('i', [0] * 3), SIZES, 9)
except ValueError as e:
    bad = str(e)
res['bad_len'] = bad
print(json.dumps(res))
""")
    assert out["empty"] is None
    assert out["v1"] == [1, True, "w.bin"]
    assert out["same_buffer"] is True
    assert out["v2"] == [2, True, "w.bin"]
    assert out["other_shape"] and out["wrong_len_into"]
    assert out["bad_len"] and "3 weights" in out["bad_len"]


def test_crash_mid_save_keeps_old_weights(run_json) -> None:
    out = run_json(PRELUDE + """
st = Store('w.bin')
st.save(wv(1), SIZES, 1)
# A power cut while writing the tmp file of version 2: a truncated tmp is left behind.
copy('w.bin', 'v1')
st.save(wv(2), SIZES, 2)
copy('w.bin', 'v2')
copy('v1', 'w.bin')
for cut in (0, 5, 20, 40, 60):
    copy('v2', 'w.bin.tmp')
    truncate('w.bin.tmp', cut)
    res['tmp_cut_%d' % cut] = loaded(st)
copy('v2', 'w.bin.tmp')
# A bit flipped in the tmp payload: CRC catches it.
flip('w.bin.tmp', 30)
res['tmp_flipped'] = loaded(st)
# Main truncated (flash damage) and no tmp: nothing valid, buffer untouched.
os.remove('w.bin.tmp')
truncate('w.bin', 40)
into = array('i', [7] * N)
res['main_cut'] = st.load(into, SIZES) is None and list(into) == [7] * N
# A new save over the broken main works.
st.save(wv(4), SIZES, 4)
res['after'] = loaded(st)
print(json.dumps(res))
""")
    for cut in (0, 5, 20, 40, 60):
        assert out[f"tmp_cut_{cut}"] == [1, True, "w.bin"], f"cut at {cut}: {out}"
    assert out["tmp_flipped"] == [1, True, "w.bin"]
    assert out["main_cut"] is True
    assert out["after"] == [4, True, "w.bin"]


def test_newest_valid_of_main_and_tmp_wins(run_json) -> None:
    out = run_json(PRELUDE + """
st = Store('w.bin')
st.save(wv(5), SIZES, 5)
copy('w.bin', 'v5')
st.save(wv(6), SIZES, 6)
# Cut between writing tmp (v6) and the rename (littlefs): both valid, newest wins.
copy('w.bin', 'w.bin.tmp')
copy('v5', 'w.bin')
res['both'] = loaded(st)
# Main corrupt, tmp valid: the tmp file is used.
copy('v5', 'w.bin.tmp')
flip('w.bin', 25)
res['main_bad'] = loaded(st)
# Main missing (FAT: removed, rename not done yet): the tmp file is used.
os.remove('w.bin')
res['main_missing'] = loaded(st)
# The next save first promotes the good tmp file, then replaces it.
st.save(wv(7), SIZES, 7)
res['after'] = [loaded(st), exists('w.bin.tmp')]
print(json.dumps(res))
""")
    assert out["both"] == [6, True, "w.bin.tmp"]
    assert out["main_bad"] == [5, True, "w.bin.tmp"]
    assert out["main_missing"] == [5, True, "w.bin.tmp"]
    assert out["after"] == [[7, True, "w.bin"], False]


def test_fat_semantics_and_cut_between_remove_and_rename(run_json) -> None:
    """A fake `os` whose rename onto an existing file fails, as on FAT."""
    out = run_json(PRELUDE + """
import store as store_mod
class FatOs:
    cut = False
    renames = 0
    def rename(self, a, b):
        if exists(b):
            raise OSError(17)
        if self.cut:
            raise KeyboardInterrupt  # the power goes after remove(), before rename()
        self.renames += 1
        os.rename(a, b)
    def remove(self, p):
        os.remove(p)
fat = FatOs()
store_mod.os = fat
st = Store('w.bin')
st.save(wv(1), SIZES, 1)
st.save(wv(2), SIZES, 2)
res['fat_save'] = [loaded(st), exists('w.bin.tmp'), fat.renames]
fat.cut = True
try:
    st.save(wv(3), SIZES, 3)
except KeyboardInterrupt:
    pass
res['cut'] = [exists('w.bin'), loaded(st)]
fat.cut = False
# Another power cut, now in the middle of writing the next tmp file: the only good copy
# (the tmp file of version 3) must have been promoted first.
class CutFile:
    def __init__(self, f):
        self.f = f
        self.n = 0
    def write(self, b):
        self.n += 1
        if self.n == 2:
            raise KeyboardInterrupt
        return self.f.write(b)
    def close(self):
        self.f.close()
store_mod.open = lambda p, m: CutFile(open(p, m)) if 'w' in m else open(p, m)
try:
    st.save(wv(4), SIZES, 4)
except KeyboardInterrupt:
    pass
del store_mod.open
res['cut2'] = loaded(st)
st.save(wv(4), SIZES, 4)
res['after'] = [loaded(st), exists('w.bin.tmp')]
print(json.dumps(res))
""")
    assert out["fat_save"] == [[2, True, "w.bin"], False, 2]
    assert out["cut"] == [False, [3, True, "w.bin.tmp"]]
    assert out["cut2"] == [3, True, "w.bin"]
    assert out["after"] == [[4, True, "w.bin"], False]
