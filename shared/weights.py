"""Versioned weights blob: header + little-endian payload + CRC32 (CPython and MicroPython).

Layout (all little-endian)::

    off  size  field
    0    4     magic b"TFWB"
    4    1     format version (1)
    5    1     dtype: 1 = int16 Q12 (wire), 2 = int32 Q24 (board persistence)
    6    2     flags (u16, free for the caller; 0 by default)
    8    4     model version (u32)
    12   4     parameter count (u32)
    16   1     layer-size count L (2..16)
    17   2*L   layer sizes (u16 each)
    ..   n*s   payload: n params of s = 2 or 4 bytes
    ..   4     CRC32 of everything before it

Decoding validates everything (length, magic, version, dtype, shape, CRC, value range)
before it writes a single element of the caller's array.
"""

import binascii
import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MAGIC = b"TFWB"
FORMAT_VERSION = const(1)
DTYPE_Q12 = const(1)  # int16, real = q / 2**12 (compact, for the wire)
DTYPE_Q24 = const(2)  # int32, real = m / 2**24 (exact master weights, for persistence)
M_MAX = const(134217727)  # 2**27 - 1: master weights are clamped to +-M_MAX (SPEC)
MAX_LAYERS = const(16)
MAX_SIZE = const(4096)  # a layer wider than this is not a TinyFleet model
MAX_PARAMS = const(1048576)  # declared counts above this are rejected outright

_FIXED = "<4sBBHIIB"  # magic, version, dtype, flags, model version, n params, n sizes
_FIXED_LEN = const(17)
_CRC_LEN = const(4)
_ITEM = {DTYPE_Q12: 2, DTYPE_Q24: 4}


class Info:
    """What a blob header declares (filled by parse_header)."""

    def __init__(self, dtype, flags, model_version, n_params, sizes):
        self.dtype = dtype
        self.flags = flags
        self.model_version = model_version
        self.n_params = n_params
        self.sizes = sizes  # tuple of layer sizes, e.g. (1, 40, 40, 1)
        self.header_len = _FIXED_LEN + 2 * len(sizes)
        self.payload_len = n_params * _ITEM[dtype]
        self.total_len = self.header_len + self.payload_len + _CRC_LEN

    def __repr__(self):
        return "Info(dtype=%d, flags=%d, model_version=%d, n_params=%d, sizes=%r)" % (
            self.dtype, self.flags, self.model_version, self.n_params, self.sizes)


def zeros(n):
    """A new array('i') of n zeros, allocated once (no temporary list or bytes)."""
    a = array("i", range(n))  # the length is known up front: one allocation of 4n bytes
    for i in range(n):
        a[i] = 0
    return a


def header_size(n_sizes):
    """Bytes of the header for n_sizes layer sizes."""
    return _FIXED_LEN + 2 * n_sizes


def crc32(data, crc=0):
    """binascii.crc32 as an unsigned int (chainable: crc32(b, crc32(a)))."""
    return binascii.crc32(data, crc) & 0xFFFFFFFF


def param_count(sizes):
    """Parameters of an MLP with these layer sizes (weights + biases, SPEC layout)."""
    n = 0
    for i in range(len(sizes) - 1):
        n += (sizes[i] + 1) * sizes[i + 1]
    return n


def _check_sizes(sizes):
    if len(sizes) < 2 or len(sizes) > MAX_LAYERS:
        raise ValueError("weights: %d layer sizes (need 2..%d)" % (len(sizes), MAX_LAYERS))
    for s in sizes:
        if s < 1 or s > MAX_SIZE:
            raise ValueError("weights: layer size %d out of range 1..%d" % (s, MAX_SIZE))


def encoded_size(sizes, dtype=DTYPE_Q24):
    """Bytes of the blob for this shape and dtype."""
    if dtype not in _ITEM:
        raise ValueError("weights: unknown dtype %r" % (dtype,))
    return _FIXED_LEN + 2 * len(sizes) + param_count(sizes) * _ITEM[dtype] + _CRC_LEN


def to_q12(m):
    """Q24 master weight -> Q12 int16: (m + 2048) >> 12, clamped to int16."""
    q = (m + 2048) >> 12
    if q > 32767:
        return 32767
    if q < -32768:
        return -32768
    return q


def to_q24(q):
    """Q12 -> Q24 master weight: q << 12, clamped to +-M_MAX."""
    m = q << 12
    if m > M_MAX:
        return M_MAX
    if m < -M_MAX:
        return -M_MAX
    return m


def q24_to_q12(src, dst):
    """Convert a Q24 sequence into a preallocated Q12 array (same length)."""
    if len(src) != len(dst):
        raise ValueError("weights: length %d != %d" % (len(src), len(dst)))
    for i in range(len(src)):
        dst[i] = to_q12(src[i])
    return dst


def q12_to_q24(src, dst):
    """Convert a Q12 sequence into a preallocated Q24 array (same length)."""
    if len(src) != len(dst):
        raise ValueError("weights: length %d != %d" % (len(src), len(dst)))
    for i in range(len(src)):
        dst[i] = to_q24(src[i])
    return dst


def encode_header_into(buf, sizes, dtype, model_version=0, flags=0):
    """Write the header into buf (len >= header length); return the header length."""
    _check_sizes(sizes)
    if dtype not in _ITEM:
        raise ValueError("weights: unknown dtype %r" % (dtype,))
    if not 0 <= model_version <= 0xFFFFFFFF or not 0 <= flags <= 0xFFFF:
        raise ValueError("weights: model version or flags out of range")
    n = param_count(sizes)
    struct.pack_into(_FIXED, buf, 0, MAGIC, FORMAT_VERSION, dtype, flags, model_version, n,
                     len(sizes))
    off = _FIXED_LEN
    for s in sizes:
        struct.pack_into("<H", buf, off, s)
        off += 2
    return off


def encode(weights, sizes, dtype=DTYPE_Q24, model_version=0, flags=0):
    """Encode Q24 master weights (any int sequence in SPEC layout) as a blob (bytearray).

    With dtype=DTYPE_Q12 each weight is sent as to_q12(m). Raises ValueError on a length
    mismatch or (Q24) a weight beyond +-M_MAX.
    """
    n = param_count(sizes) if len(sizes) >= 2 else -1
    if len(weights) != n:
        raise ValueError("weights: %d values for sizes %r (need %d)" % (len(weights),
                                                                        tuple(sizes), n))
    buf = bytearray(encoded_size(sizes, dtype))
    off = encode_header_into(buf, sizes, dtype, model_version, flags)
    if dtype == DTYPE_Q12:
        for i in range(n):
            struct.pack_into("<h", buf, off, to_q12(weights[i]))
            off += 2
    else:
        for i in range(n):
            m = weights[i]
            if m > M_MAX or m < -M_MAX:
                raise ValueError("weights: weight %d = %d beyond +-M_MAX" % (i, m))
            struct.pack_into("<i", buf, off, m)
            off += 4
    struct.pack_into("<I", buf, off, binascii.crc32(memoryview(buf)[:off]) & 0xFFFFFFFF)
    return buf  # bytes-like (a bytearray): no second copy of the blob on a board


def parse_header(buf, expected_sizes=None, dtype=None):
    """Validate the header at the start of buf; return an Info. Does not check the CRC.

    buf may be just the first bytes of a blob (at least header length) or the whole blob.
    Raises ValueError (one line) on anything wrong.
    """
    if len(buf) < _FIXED_LEN:
        raise ValueError("weights: truncated header (%d bytes)" % len(buf))
    magic, ver, dt, flags, mver, n, nsz = struct.unpack_from(_FIXED, buf, 0)
    if magic != MAGIC:
        raise ValueError("weights: bad magic %r" % (bytes(magic),))
    if ver != FORMAT_VERSION:
        raise ValueError("weights: unsupported format version %d" % ver)
    if dt not in _ITEM:
        raise ValueError("weights: unknown dtype %d" % dt)
    if dtype is not None and dt != dtype:
        raise ValueError("weights: dtype %d, expected %d" % (dt, dtype))
    if nsz < 2 or nsz > MAX_LAYERS:
        raise ValueError("weights: %d layer sizes (need 2..%d)" % (nsz, MAX_LAYERS))
    if n > MAX_PARAMS:
        raise ValueError("weights: declared %d params, limit %d" % (n, MAX_PARAMS))
    if len(buf) < _FIXED_LEN + 2 * nsz:
        raise ValueError("weights: truncated header (%d bytes)" % len(buf))
    sizes = struct.unpack_from("<%dH" % nsz, buf, _FIXED_LEN)
    _check_sizes(sizes)
    if param_count(sizes) != n:
        raise ValueError("weights: %d params declared, sizes %r need %d" % (
            n, sizes, param_count(sizes)))
    if expected_sizes is not None and tuple(expected_sizes) != sizes:
        raise ValueError("weights: shape %r, expected %r" % (sizes, tuple(expected_sizes)))
    return Info(dt, flags, mver, n, sizes)


def check_range_q24(buf, off, count):
    """Raise ValueError if any of count int32 LE values at buf[off:] exceeds +-M_MAX.

    Works byte-wise so that no long int is ever built on 31-bit-small-int ports.
    """
    for k in range(count):
        p = off + 4 * k
        hi = buf[p + 3]
        if hi > 127:
            hi -= 256
        # |m| <= 2**27 - 1 needs the top byte in -8..7; also excludes -2**27 exactly.
        if hi < -8 or hi > 7 or (hi == -8 and buf[p] == 0 and buf[p + 1] == 0
                                 and buf[p + 2] == 0):
            raise ValueError("weights: weight %d beyond +-M_MAX" % k)


def check_range_array(w):
    """Raise ValueError if any Q24 master weight in the sequence w exceeds +-M_MAX."""
    for i in range(len(w)):
        m = w[i]
        if m > M_MAX or m < -M_MAX:
            raise ValueError("weights: weight %d = %d beyond +-M_MAX" % (i, m))


def _crc_ok(blob, info):
    end = info.total_len - _CRC_LEN
    mv = memoryview(blob)
    got = binascii.crc32(mv[:end]) & 0xFFFFFFFF
    want = struct.unpack_from("<I", blob, end)[0]
    return got == want


def validate(blob, expected_sizes=None, dtype=None):
    """Fully validate a blob (header, exact length, CRC, range); return its Info."""
    info = parse_header(blob, expected_sizes, dtype)
    if len(blob) < info.total_len:
        raise ValueError("weights: truncated blob (%d of %d bytes)" % (len(blob),
                                                                        info.total_len))
    if len(blob) > info.total_len:
        raise ValueError("weights: %d trailing bytes after blob" % (len(blob) - info.total_len))
    if not _crc_ok(blob, info):
        raise ValueError("weights: CRC mismatch")
    if info.dtype == DTYPE_Q24:
        check_range_q24(blob, info.header_len, info.n_params)
    return info


def decode_into(blob, out, expected_sizes=None, dtype=None):
    """Validate blob, then write its weights as Q24 into out (preallocated, e.g. the model's
    array('i')); return the Info. On any error out is left untouched (ValueError)."""
    info = validate(blob, expected_sizes, dtype)
    if len(out) != info.n_params:
        raise ValueError("weights: blob has %d params, target array %d" % (info.n_params,
                                                                            len(out)))
    _fill(blob, info, out)
    return info


def _fill(blob, info, out):
    off = info.header_len
    if info.dtype == DTYPE_Q12:
        for i in range(info.n_params):
            v = blob[off] | (blob[off + 1] << 8)
            if v > 32767:
                v -= 65536
            out[i] = to_q24(v)
            off += 2
    else:
        for i in range(info.n_params):
            hi = blob[off + 3]
            if hi > 127:
                hi -= 256
            out[i] = (hi << 24) | (blob[off + 2] << 16) | (blob[off + 1] << 8) | blob[off]
            off += 4


def decode(blob, expected_sizes=None, dtype=None):
    """Validate blob; return (Info, new array('i') of Q24 weights)."""
    info = validate(blob, expected_sizes, dtype)
    out = zeros(info.n_params)
    _fill(blob, info, out)
    return info, out
