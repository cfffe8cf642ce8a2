"""HMAC-SHA256 (RFC 2104) from hashlib.sha256, and a constant-time compare.

For MicroPython, whose micropython-lib hmac defaults to MD5 and has no compare_digest;
the same code runs on CPython. sha256 objects have no copy() on MicroPython, so the
padded keys are kept and two fresh hashes are made per digest.
"""

import hashlib

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_BLOCK = const(64)
DIGEST_SIZE = const(32)


class Key:
    """A fleet key prepared once; digest(*parts) = HMAC-SHA256(key, b"".join(parts))."""

    def __init__(self, key):
        key = bytes(key)
        if not key:
            raise ValueError("hmac: empty key")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key + bytes(_BLOCK - len(key))
        self._ipad = bytes(b ^ 0x36 for b in key)
        self._opad = bytes(b ^ 0x5C for b in key)

    def digest(self, *parts):
        inner = hashlib.sha256(self._ipad)
        for p in parts:
            inner.update(p)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, mac, *parts):
        """True if mac is the HMAC of the parts (compared in constant time)."""
        return compare_digest(self.digest(*parts), mac)


def digest(key, msg):
    """HMAC-SHA256(key, msg) as 32 bytes."""
    return Key(key).digest(msg)


def compare_digest(a, b):
    """Constant-time equality of two byte strings (time depends only on the length)."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
