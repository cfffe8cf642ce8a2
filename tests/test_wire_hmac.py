"""shared/hmac.py: HMAC-SHA256 against RFC 4231 and Python's hmac module, constant-time
compare; on CPython and both MicroPython builds."""

from __future__ import annotations

import hashlib
import hmac as py_hmac

import pytest
from tfshared import hmac as tf_hmac

# RFC 4231 test cases 1, 2, 3, 4, 6, 7 (key, data); 5 is a truncated-output case.
RFC4231 = [
    (b"\x0b" * 20, b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa" * 20, b"\xdd" * 50),
    (bytes(range(1, 26)), b"\xcd" * 50),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than "
                    b"block-size data. The key needs to be hashed before being used by the "
                    b"HMAC algorithm."),
]
# Published values of test cases 1, 2 and 6, independent of any implementation.
RFC_HEX = {
    0: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    1: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    4: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
}
EXTRA = [(b"k" * 64, b""), (b"k" * 65, b"x" * 1000), (b"fleet-key", b"\x00" * 63)]


def test_rfc4231_and_python_hmac_on_cpython() -> None:
    for i, (key, data) in enumerate(RFC4231 + EXTRA):
        want = py_hmac.new(key, data, hashlib.sha256).digest()
        assert tf_hmac.digest(key, data) == want, f"case {i}"
        assert tf_hmac.Key(key).digest(data[:7], data[7:]) == want, f"case {i} in parts"
        if i in RFC_HEX:
            assert want.hex() == RFC_HEX[i]


SCRIPT = """
import json
from tfshared import hmac
cases = %r
out = [hmac.digest(bytes.fromhex(k), bytes.fromhex(d)).hex() for k, d in cases]
k = hmac.Key(b'fleet')
mac = k.digest(b'abc', b'def')
bad = bytearray(mac); bad[31] ^= 1
out.append([k.verify(mac, b'abcdef'), k.verify(bytes(bad), b'abc', b'def'),
            k.verify(mac[:31], b'abc', b'def'), hmac.compare_digest(b'', b''),
            hmac.compare_digest(b'ab', b'ac')])
try:
    hmac.Key(b'')
    out.append(None)
except ValueError as e:
    out.append(str(e))
print(json.dumps(out))
"""


def test_rfc4231_on_micropython(upy_runner, build: str) -> None:
    cases = [(k.hex(), d.hex()) for k, d in RFC4231 + EXTRA]
    out = upy_runner.run_json(SCRIPT % (cases,), build=build)
    for i, (key, data) in enumerate(RFC4231 + EXTRA):
        want = py_hmac.new(key, data, hashlib.sha256).hexdigest()
        assert out[i] == want, f"case {i}: {out[i]} != {want}"
    assert out[-2] == [True, False, False, True, False]
    assert out[-1] and "empty key" in out[-1]


def test_compare_digest_cpython() -> None:
    assert tf_hmac.compare_digest(b"\x01" * 32, bytearray(b"\x01" * 32))
    assert not tf_hmac.compare_digest(b"\x01" * 32, b"\x01" * 31 + b"\x00")
    assert not tf_hmac.compare_digest(b"a", b"ab")
    with pytest.raises(ValueError):
        tf_hmac.Key(b"")
    assert tf_hmac.DIGEST_SIZE == 32
