"""shared/weights.py: byte-exact blobs, round trips and every rejection, on CPython and on
both MicroPython builds (the same script runs on all three)."""

from __future__ import annotations

import binascii
import struct

import pytest

M_MAX = 2**27 - 1
SIZES = (1, 2, 1)  # 7 params: layer 1: 2 rows of (w, b); layer 2: 1 row of (w0, w1, b)
W_Q24 = [M_MAX, -M_MAX, 2048, -2049, 4096 * 1000, -(4096 * 7) - 2047, 0]


def expected_blob(sizes, values, dtype, model_version, flags) -> bytes:
    """The blob built by hand from the documented layout."""
    n = sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(sizes) - 1))
    head = b"TFWB" + struct.pack("<BBHIIB", 1, dtype, flags, model_version, n, len(sizes))
    head += struct.pack(f"<{len(sizes)}H", *sizes)
    body = struct.pack(f"<{n}{'h' if dtype == 1 else 'i'}", *values)
    return head + body + struct.pack("<I", binascii.crc32(head + body))


def q12(m: int) -> int:
    return max(-32768, min(32767, (m + 2048) >> 12))


ENCODE = """
import json
from tfshared import weights as W
w = %r
print(json.dumps([W.encode(w, %r, W.DTYPE_Q24, 77, 5).hex(),
                  W.encode(w, %r, W.DTYPE_Q12, 0xFFFFFFFF, 0).hex()]))
"""


def test_encode_is_byte_exact(run_json) -> None:
    # Prepare
    want24 = expected_blob(SIZES, W_Q24, 2, 77, 5)
    want12 = expected_blob(SIZES, [q12(m) for m in W_Q24], 1, 0xFFFFFFFF, 0)
    # Execute
    got24, got12 = run_json(ENCODE % (W_Q24, SIZES, SIZES))
    # Assert
    assert got24 == want24.hex(), f"Q24 blob {got24} != {want24.hex()}"
    assert got12 == want12.hex(), f"Q12 blob {got12} != {want12.hex()}"
    assert len(want24) == 17 + 6 + 7 * 4 + 4


DECODE = """
import json
from array import array
from tfshared import weights as W
out = array('i', [0] * 7)
b24 = bytes.fromhex(%r)
b12 = bytes.fromhex(%r)
i24 = W.decode_into(b24, out, (1, 2, 1), W.DTYPE_Q24)
r24 = list(out)
i12, a12 = W.decode(b12)
print(json.dumps([r24, i24.model_version, i24.flags, list(i24.sizes), list(a12),
                  i12.model_version, i12.dtype, i12.total_len]))
"""


def test_decode_round_trip(run_json) -> None:
    b24 = expected_blob(SIZES, W_Q24, 2, 77, 5)
    b12 = expected_blob(SIZES, [q12(m) for m in W_Q24], 1, 9, 0)
    r24, mver, flags, sizes, a12, v12, dt12, tot = run_json(DECODE % (b24.hex(), b12.hex()))
    assert r24 == W_Q24
    assert (mver, flags, sizes) == (77, 5, list(SIZES))
    # back to Q24 is q << 12, clamped to +-M_MAX (q = -32768 would give -2**27)
    assert a12 == [max(-M_MAX, min(M_MAX, q12(m) << 12)) for m in W_Q24]
    assert (v12, dt12, tot) == (9, 1, len(b12))


def _bad_blobs() -> list[tuple[str, bytes, str]]:
    good = expected_blob(SIZES, W_Q24, 2, 1, 0)
    flip = bytearray(good)
    flip[30] ^= 0x10  # a payload bit
    big = expected_blob(SIZES, W_Q24[:6] + [M_MAX + 1], 2, 1, 0)
    huge = b"TFWB" + struct.pack("<BBHIIB", 1, 2, 0, 1, 2**31, 2) + struct.pack("<2H", 1, 1)
    wrong_n = b"TFWB" + struct.pack("<BBHIIB", 1, 2, 0, 1, 8, 3) + struct.pack("<3H", *SIZES)
    return [
        ("truncated", good[:-1], "truncated blob"),
        ("header only", good[:12], "truncated header"),
        ("empty", b"", "truncated header"),
        ("crc", bytes(flip), "CRC mismatch"),
        ("magic", b"TFWX" + good[4:], "bad magic"),
        ("version", good[:4] + b"\x02" + good[5:], "unsupported format version 2"),
        ("dtype", good[:5] + b"\x03" + good[6:], "unknown dtype 3"),
        ("wrong dtype", expected_blob(SIZES, [1] * 7, 1, 1, 0), "dtype 1, expected 2"),
        ("shape", expected_blob((1, 3, 1), [0] * 10, 2, 1, 0), "expected (1, 2, 1)"),
        ("oversize", huge, "limit"),
        ("count", wrong_n, "8 params declared"),
        ("range", big, "beyond +-M_MAX"),
        ("trailing", good + b"\x00", "trailing"),
    ]


REJECT = """
import json
from array import array
from tfshared import weights as W
res = []
for name, hx in %r:
    out = array('i', [123] * 7)
    try:
        W.decode_into(bytes.fromhex(hx), out, (1, 2, 1), W.DTYPE_Q24)
        res.append([name, None, list(out) == [123] * 7])
    except ValueError as e:
        res.append([name, str(e), list(out) == [123] * 7])
print(json.dumps(res))
"""


def test_every_rejection_leaves_target_untouched(run_json) -> None:
    cases = _bad_blobs()
    res = run_json(REJECT % ([(n, b.hex()) for n, b, _ in cases],))
    for (name, _, want), (rname, msg, untouched) in zip(cases, res, strict=True):
        assert rname == name
        assert msg is not None, f"{name}: no ValueError"
        assert want in msg, f"{name}: {msg!r} lacks {want!r}"
        assert "\n" not in msg and msg.startswith("weights: ")
        assert untouched, f"{name}: target array was modified"


CONVERT = """
import json
from array import array
from tfshared import weights as W
src = [W.M_MAX, -W.M_MAX, 2047, 2048, -2048, -2049, 0]
q = array('h', [0] * 7)
W.q24_to_q12(src, q)
back = array('i', [0] * 7)
W.q12_to_q24(array('h', [32767, -32768, 1, -1, 0, 5, -5]), back)
err = None
try:
    W.q24_to_q12(src, array('h', [0]))
except ValueError as e:
    err = str(e)
print(json.dumps([list(q), list(back), err, W.to_q12(-2**27 - 4096)]))
"""


def test_q12_q24_conversion(run_json) -> None:
    q, back, err, low = run_json(CONVERT)
    assert q == [32767, -32768, 0, 1, 0, -1, 0]
    assert back == [32767 << 12, -M_MAX, 4096, -4096, 0, 5 << 12, -5 << 12]
    assert err and "length" in err
    assert low == -32768


def test_encode_rejects_bad_input() -> None:
    from tfshared import weights as W

    with pytest.raises(ValueError, match="7 values for sizes"):
        W.encode([0] * 7, (1, 3, 1))
    with pytest.raises(ValueError, match="beyond"):
        W.encode([M_MAX + 1] + [0] * 6, SIZES)
    with pytest.raises(ValueError, match="dtype"):
        W.encode([0] * 7, SIZES, dtype=9)
    assert W.encoded_size((1, 40, 40, 1), W.DTYPE_Q12) == 17 + 8 + 1761 * 2 + 4
