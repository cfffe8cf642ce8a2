"""Binary frames for federated rounds and the MQTT topic layout (CPython and MicroPython).

Frame (all little-endian)::

    off  size  field
    0    2     magic b"TF"
    2    1     protocol version (1)
    3    1     type: 1 round start, 2 global weights, 3 device update, 4 status
    4    2     flags: bit 0 HMAC present, bit 1 update is a delta (phi - theta)
    6    2     model id (u16)
    8    4     model version / round (u32)
    12   4     parameter count (u32; 0 if the message has no weights)
    16   4     total payload length of the whole message (all chunks)
    20   2     chunk index (0-based)
    22   2     chunk count
    24   2     chunk size: payload bytes of every chunk but the last
    26   2     payload length of this frame
    28   1     Q format of the weights (12, 24; 0 = none)
    29   1     reserved (0)
    30   n     payload (this chunk)
    ..   32    HMAC-SHA256(fleet key, header + payload), only if flag bit 0
    ..   4     CRC32 of everything before it

Chunk i carries bytes [i * chunk size, ...) of the message payload; the layout is fully
determined by (total, chunk size), so the receiver can reassemble out of order into a
buffer it allocated once, after checking the declared total against its capacity.
Every defect (truncation, bit flip, wrong key, oversize, unknown type) is a ValueError.
Replay protection is the receiver's: check_fresh(version, last_accepted).
"""

import json
import struct

from . import hmac, weights

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAGIC = b"TF"
VERSION = const(1)
T_ROUND = const(1)
T_GLOBAL = const(2)
T_UPDATE = const(3)
T_STATUS = const(4)
TYPES = (T_ROUND, T_GLOBAL, T_UPDATE, T_STATUS)
FLAG_MAC = const(1)
FLAG_DELTA = const(2)
_FLAGS_KNOWN = const(3)
HEADER = "<2sBBHHIIIHHHHBB"
HEADER_LEN = const(30)
MAC_LEN = const(32)
CRC_LEN = const(4)
CHUNK_SIZE = const(4096)  # default payload bytes per frame (ESP32 MQTT/TLS trouble ~16 KB)
MAX_TOTAL = const(65536)  # default receiver capacity for one message
_ROUND = "<HBBIH"  # k, lr shift, selection (0 listed, 1 all), deadline ms, device count
_ROUND_LEN = const(10)
_UPDATE = "<IiB"  # samples, loss (Q12), device id length
_UPDATE_LEN = const(9)


class Frame:
    """A decoded frame or a reassembled message; payload is a memoryview."""

    def __init__(self, fields, payload):
        (_, _, self.type, self.flags, self.model_id, self.version, self.param_count,
         self.total, self.index, self.count, self.chunk_size, _, self.q, _) = fields
        self.payload = payload

    def same_message(self, other):
        return (self.type == other.type and self.flags == other.flags
                and self.model_id == other.model_id and self.version == other.version
                and self.param_count == other.param_count and self.total == other.total
                and self.count == other.count and self.chunk_size == other.chunk_size
                and self.q == other.q)


def _key(key):
    if key is None or isinstance(key, hmac.Key):
        return key
    return hmac.Key(key)


def _layout(total, chunk_size):
    if not 1 <= chunk_size <= 0xFFFF:
        raise ValueError("wire: chunk size %d out of 1..65535" % chunk_size)
    count = (total + chunk_size - 1) // chunk_size if total else 1
    if count > 0xFFFF:
        raise ValueError("wire: %d chunks (max 65535)" % count)
    return count


def iter_frames(mtype, payload, model_id=0, version=0, param_count=0, q=0, flags=0,
                key=None, chunk_size=CHUNK_SIZE):
    """Yield the frames (bytearray) of one message; chunked when payload > chunk_size."""
    if mtype not in TYPES:
        raise ValueError("wire: unknown message type %r" % (mtype,))
    if flags & ~(_FLAGS_KNOWN & ~FLAG_MAC):
        raise ValueError("wire: unknown flags 0x%x" % flags)
    if q not in (0, 12, 24):
        raise ValueError("wire: Q format %r (0, 12 or 24)" % (q,))
    if not 0 <= model_id <= 0xFFFF or not 0 <= version <= 0xFFFFFFFF:
        raise ValueError("wire: model id or version out of range")
    key = _key(key)
    if key is not None:
        flags |= FLAG_MAC
    total = len(payload)
    count = _layout(total, chunk_size)
    mv = memoryview(payload)
    maclen = MAC_LEN if key is not None else 0
    for i in range(count):
        a = i * chunk_size
        n = min(chunk_size, total - a)
        buf = bytearray(HEADER_LEN + n + maclen + CRC_LEN)
        struct.pack_into(HEADER, buf, 0, MAGIC, VERSION, mtype, flags, model_id, version,
                         param_count, total, i, count, chunk_size, n, q, 0)
        buf[HEADER_LEN:HEADER_LEN + n] = mv[a:a + n]
        end = HEADER_LEN + n
        if key is not None:
            buf[end:end + MAC_LEN] = key.digest(memoryview(buf)[:end])
            end += MAC_LEN
        struct.pack_into("<I", buf, end, weights.crc32(memoryview(buf)[:end]))
        yield buf  # a bytearray: no second copy on a board


def encode(mtype, payload, model_id=0, version=0, param_count=0, q=0, flags=0, key=None,
           chunk_size=CHUNK_SIZE):
    """The frames of one message as a list of bytearrays (see iter_frames)."""
    return list(iter_frames(mtype, payload, model_id, version, param_count, q, flags, key,
                            chunk_size))


def decode(frame, key=None, max_total=MAX_TOTAL):
    """Validate one frame; return a Frame (payload = this chunk, a memoryview of frame).

    With a key, the frame must carry a valid HMAC; without one, a MAC is not checked.
    """
    n = len(frame)
    if n < HEADER_LEN + CRC_LEN:
        raise ValueError("wire: truncated frame (%d bytes)" % n)
    fields = struct.unpack_from(HEADER, frame, 0)
    magic, ver, mtype, flags = fields[0], fields[1], fields[2], fields[3]
    total, index, count, csize, plen = fields[7], fields[8], fields[9], fields[10], fields[11]
    if magic != MAGIC:
        raise ValueError("wire: bad magic %r" % (bytes(magic),))
    if ver != VERSION:
        raise ValueError("wire: unsupported protocol version %d" % ver)
    maclen = MAC_LEN if flags & FLAG_MAC else 0
    want = HEADER_LEN + plen + maclen + CRC_LEN
    if n < want:
        raise ValueError("wire: truncated frame (%d of %d bytes)" % (n, want))
    if n > want:
        raise ValueError("wire: %d bytes after the frame" % (n - want))
    end = want - CRC_LEN
    mv = memoryview(frame)
    if weights.crc32(mv[:end]) != struct.unpack_from("<I", frame, end)[0]:
        raise ValueError("wire: CRC mismatch")
    if key is not None:
        if not maclen:
            raise ValueError("wire: unsigned frame (a fleet key is configured)")
        if not _key(key).verify(mv[end - MAC_LEN:end], mv[:end - MAC_LEN]):
            raise ValueError("wire: bad HMAC (wrong key or tampered frame)")
    if mtype not in TYPES:
        raise ValueError("wire: unknown message type %d" % mtype)
    if flags & ~_FLAGS_KNOWN or fields[13]:
        raise ValueError("wire: unknown flags 0x%x" % flags)
    if fields[12] not in (0, 12, 24):
        raise ValueError("wire: Q format %d (0, 12 or 24)" % fields[12])
    if total > max_total:
        raise ValueError("wire: oversize message, %d bytes declared (limit %d)" % (
            total, max_total))
    if csize < 1 or count != (((total + csize - 1) // csize) if total else 1):
        raise ValueError("wire: %d chunks of %d for %d bytes" % (count, csize, total))
    if index >= count:
        raise ValueError("wire: chunk %d of %d" % (index, count))
    if plen != (csize if index < count - 1 else total - (count - 1) * csize):
        raise ValueError("wire: chunk %d has %d bytes, layout says otherwise" % (index, plen))
    return Frame(fields, mv[HEADER_LEN:HEADER_LEN + plen])


class Reassembler:
    """Collects the chunks of one message at a time into a buffer allocated once.

    Use one per topic (or sender). feed(frame) returns the complete message (a Frame whose
    payload is a view of the buffer, valid until the next feed) or None while chunks are
    missing. Duplicates are ignored, order does not matter; a chunk of another message
    with an older version is rejected, one with the same or newer version starts over.
    """

    def __init__(self, capacity=MAX_TOTAL, max_chunks=64, key=None):
        self.capacity = capacity
        self.max_chunks = max_chunks
        self.key = _key(key)
        self.buf = bytearray(capacity)
        self._seen = bytearray((max_chunks + 7) // 8)
        self._cur = None
        self._have = 0

    def reset(self):
        self._cur = None
        self._have = 0
        for i in range(len(self._seen)):
            self._seen[i] = 0

    def feed(self, frame):
        f = decode(frame, self.key, self.capacity)
        if f.count > self.max_chunks:
            raise ValueError("wire: %d chunks (limit %d)" % (f.count, self.max_chunks))
        if f.count == 1:  # nothing to reassemble: no copy
            return f
        cur = self._cur
        if cur is None or not cur.same_message(f):
            if cur is not None and f.version < cur.version:
                raise ValueError("wire: stale chunk (version %d < %d)" % (f.version,
                                                                            cur.version))
            self.reset()
            self._cur = cur = f
        bit = 1 << (f.index & 7)
        if self._seen[f.index >> 3] & bit:
            return None  # duplicate
        a = f.index * f.chunk_size
        self.buf[a:a + len(f.payload)] = f.payload
        self._seen[f.index >> 3] |= bit
        self._have += 1
        if self._have < f.count:
            return None
        cur.payload = memoryview(self.buf)[:f.total]
        cur.index = 0
        self._cur = None
        self._have = 0
        for i in range(len(self._seen)):
            self._seen[i] = 0
        return cur


def is_fresh(version, last_accepted):
    """Replay check: only a version newer than the last accepted one is fresh."""
    return last_accepted is None or version > last_accepted


def check_fresh(version, last_accepted):
    """Raise ValueError unless version > last_accepted (None: nothing accepted yet)."""
    if not is_fresh(version, last_accepted):
        raise ValueError("wire: replayed or stale version %d (last accepted %d)" % (
            version, last_accepted))


# Message payloads ---------------------------------------------------------------------


class RoundStart:
    """Round start: k local steps, learning-rate shift, deadline and the chosen devices."""

    def __init__(self, round_, model_id, k, lr_shift, deadline_ms, devices):
        self.round = round_
        self.model_id = model_id
        self.k = k
        self.lr_shift = lr_shift
        self.deadline_ms = deadline_ms  # reply within this many ms of receiving it
        self.devices = devices  # tuple of device ids, or None for every device

    def selects(self, device_id):
        return self.devices is None or device_id in self.devices


def _id_bytes(device_id):
    b = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    if not 1 <= len(b) <= 255:
        raise ValueError("wire: device id of %d bytes (1..255)" % len(b))
    return b


def round_start_payload(k, lr_shift, deadline_ms, devices=None):
    """Payload: <HBBIH k, lr shift, 1 if all devices else 0, deadline ms, n; then n ids
    as (u8 length, UTF-8)."""
    if not 1 <= k <= 0xFFFF or not 1 <= lr_shift <= 30 or not 0 <= deadline_ms <= 0xFFFFFFFF:
        raise ValueError("wire: round start k / lr shift / deadline out of range")
    ids = [] if devices is None else [_id_bytes(d) for d in devices]
    out = bytearray(struct.pack(_ROUND, k, lr_shift, 1 if devices is None else 0,
                                deadline_ms, len(ids)))
    for b in ids:
        out.append(len(b))
        out.extend(b)
    return bytes(out)


def encode_round_start(model_id, round_, k, lr_shift, deadline_ms, devices=None, key=None):
    """Frames of a round start (devices=None: every device takes part)."""
    return encode(T_ROUND, round_start_payload(k, lr_shift, deadline_ms, devices), model_id,
                  round_, key=key)


def parse_round_start(msg):
    """RoundStart from a decoded / reassembled round-start message."""
    _expect(msg, T_ROUND)
    p = msg.payload
    if len(p) < _ROUND_LEN:
        raise ValueError("wire: round start payload of %d bytes" % len(p))
    k, lr_shift, sel, deadline, n = struct.unpack_from(_ROUND, p, 0)
    if sel > 1 or (sel and n) or k < 1 or not 1 <= lr_shift <= 30:
        raise ValueError("wire: malformed round start")
    ids = []
    off = _ROUND_LEN
    for _ in range(n):
        if off >= len(p) or off + 1 + p[off] > len(p) or not p[off]:
            raise ValueError("wire: round start device list truncated")
        ids.append(_utf8(p[off + 1:off + 1 + p[off]]))
        off += 1 + p[off]
    if off != len(p):
        raise ValueError("wire: %d stray bytes in round start" % (len(p) - off))
    return RoundStart(msg.version, msg.model_id, k, lr_shift, deadline,
                      None if sel else tuple(ids))


def _blob_fields(blob):
    info = weights.parse_header(blob)
    return info.n_params, 12 if info.dtype == weights.DTYPE_Q12 else 24


def encode_global(model_id, version, blob, key=None, chunk_size=CHUNK_SIZE):
    """Frames of the global weights; blob = weights.encode(..., DTYPE_Q12, version)."""
    n, q = _blob_fields(blob)
    return encode(T_GLOBAL, blob, model_id, version, n, q, key=key, chunk_size=chunk_size)


def _check_blob(msg, blob, expected_sizes):
    info = weights.validate(blob, expected_sizes)
    if info.n_params != msg.param_count or (12 if info.dtype == weights.DTYPE_Q12 else 24) != msg.q:
        raise ValueError("wire: weights blob disagrees with the frame header")
    return info


def global_into(msg, out, expected_sizes=None):
    """Validate a global-weights message and decode it as Q24 into out (e.g. the model's
    weights); out is untouched on error. Returns the blob's weights.Info."""
    _expect(msg, T_GLOBAL)
    info = _check_blob(msg, msg.payload, expected_sizes)
    if info.model_version != msg.version:
        raise ValueError("wire: blob version %d in a frame of version %d" % (
            info.model_version, msg.version))
    return weights.decode_into(msg.payload, out, expected_sizes)


class Update:
    """A device's reply to a round: adapted weights (or delta) + sample count + loss."""

    def __init__(self, device_id, round_, samples, loss_q12, delta, blob, info):
        self.device_id = device_id
        self.round = round_
        self.samples = samples
        self.loss_q12 = loss_q12
        self.delta = delta  # True: blob holds phi - theta; False: adapted weights phi
        self.blob = blob  # memoryview of the weights blob (weights.decode / decode_into)
        self.info = info


def update_payload(device_id, samples, loss_q12, blob):
    """Payload: <IiB samples, loss Q12, id length; id (UTF-8); weights blob."""
    b = _id_bytes(device_id)
    if not 0 <= samples <= 0xFFFFFFFF or not -2**31 <= loss_q12 < 2**31:
        raise ValueError("wire: samples or loss out of range")
    n = _UPDATE_LEN + len(b)
    out = bytearray(n + len(blob))  # one allocation: the blob can be most of the heap
    struct.pack_into(_UPDATE, out, 0, samples, loss_q12, len(b))
    out[_UPDATE_LEN:n] = b
    out[n:] = blob
    return out


def encode_update(model_id, round_, device_id, samples, loss_q12, blob, delta=False,
                  key=None, chunk_size=CHUNK_SIZE):
    """Frames of a device update for round_ (blob: weights blob, Q12 or Q24)."""
    n, q = _blob_fields(blob)
    return encode(T_UPDATE, update_payload(device_id, samples, loss_q12, blob), model_id,
                  round_, n, q, FLAG_DELTA if delta else 0, key, chunk_size)


def parse_update(msg, expected_sizes=None):
    """Update from a decoded / reassembled update message (blob fully validated)."""
    _expect(msg, T_UPDATE)
    p = msg.payload
    if len(p) < _UPDATE_LEN:
        raise ValueError("wire: update payload of %d bytes" % len(p))
    samples, loss, n = struct.unpack_from(_UPDATE, p, 0)
    if not n or _UPDATE_LEN + n > len(p):
        raise ValueError("wire: update device id truncated")
    dev = _utf8(p[_UPDATE_LEN:_UPDATE_LEN + n])
    blob = p[_UPDATE_LEN + n:]
    info = _check_blob(msg, blob, expected_sizes)
    return Update(dev, msg.version, samples, loss, bool(msg.flags & FLAG_DELTA), blob, info)


def encode_status(model_id, version, obj, key=None):
    """Frames of a small JSON status (dict) message."""
    return encode(T_STATUS, json.dumps(obj).encode(), model_id, version, key=key)


def parse_status(msg):
    """The JSON object of a status message (ValueError if not valid JSON)."""
    _expect(msg, T_STATUS)
    try:
        return json.loads(_utf8(msg.payload))
    except ValueError:
        raise ValueError("wire: status payload is not JSON") from None


def _utf8(b):
    try:
        return str(bytes(b), "utf-8")
    except ValueError:  # UnicodeError
        raise ValueError("wire: text field is not UTF-8") from None


def _expect(msg, mtype):
    if msg.type != mtype:
        raise ValueError("wire: message type %d, expected %d" % (msg.type, mtype))


def model_id(name):
    """A default u16 model id derived from the model's name (CRC32 of the name)."""
    return weights.crc32(name.encode()) & 0xFFFF


model_id_of = model_id  # the same, for code whose own attribute is called model_id


# MQTT topics ---------------------------------------------------------------------------


def _seg(s):
    if not s or "/" in s or "+" in s or "#" in s:
        raise ValueError("wire: bad topic segment %r" % (s,))
    return s


def topic_global(fleet, model):
    """Retained latest signed global weights."""
    return "tf/%s/model/%s/global" % (_seg(fleet), _seg(model))


def topic_round(fleet, model):
    """Round start: version, k, lr, deadline, chosen devices."""
    return "tf/%s/round/%s" % (_seg(fleet), _seg(model))


def topic_update(fleet, device):
    return "tf/%s/dev/%s/update" % (_seg(fleet), _seg(device))


def topic_status(fleet, device):
    """Retained status; the last will marks the device offline."""
    return "tf/%s/dev/%s/status" % (_seg(fleet), _seg(device))


def topic_td(fleet, device):
    """Retained W3C WoT Thing Description (JSON)."""
    return "tf/%s/dev/%s/td" % (_seg(fleet), _seg(device))


def parse_topic(topic):
    """(kind, fleet, name) for a TinyFleet topic: kind is 'global' or 'round' (name is
    the model) or 'update' / 'status' / 'td' (name is the device id); ValueError else."""
    p = topic.split("/")
    if len(p) >= 4 and p[0] == "tf" and all(p):
        if len(p) == 5 and p[2] == "model" and p[4] == "global":
            return "global", p[1], p[3]
        if len(p) == 4 and p[2] == "round":
            return "round", p[1], p[3]
        if len(p) == 5 and p[2] == "dev" and p[4] in ("update", "status", "td"):
            return p[4], p[1], p[3]
    raise ValueError("wire: not a TinyFleet topic: %r" % (topic,))
