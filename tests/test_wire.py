"""shared/wire.py: byte-exact frames, round trips, chunk reassembly and every rejection,
on CPython and both MicroPython builds. Expected frames are built here by hand from the
documented layout (struct + binascii.crc32 + Python's hmac)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import random
import struct

import pytest
from tfshared import weights as W
from tfshared import wire

KEY = b"fleet-key-0123456789"
HDR = "<2sBBHHIIIHHHHBB"
SIZES = (1, 2, 1)
W_Q24 = [4096 * 100, -4096 * 200, 4096 * 300, 0, 4096 * 5, -4096 * 6, 4096 * 7]


def frame(mtype: int, payload: bytes, *, flags: int = 0, model_id: int = 7, version: int = 42,
          param_count: int = 0, q: int = 0, total: int | None = None, index: int = 0,
          count: int = 1, chunk_size: int = 4096, plen: int | None = None,
          key: bytes | None = None, magic: bytes = b"TF", ver: int = 1,
          reserved: int = 0) -> bytes:
    """One frame built by hand from the layout in shared/wire.py's docstring."""
    if key is not None:
        flags |= 1
    head = struct.pack(HDR, magic, ver, mtype, flags, model_id, version, param_count,
                       len(payload) if total is None else total, index, count, chunk_size,
                       len(payload) if plen is None else plen, q, reserved)
    body = head + payload
    if key is not None:
        body += hmac.new(key, body, hashlib.sha256).digest()
    return body + struct.pack("<I", binascii.crc32(body))


def blob_q12(version: int = 42) -> bytes:
    n = len(W_Q24)
    head = b"TFWB" + struct.pack("<BBHIIB", 1, 1, 0, version, n, 3) + struct.pack("<3H", *SIZES)
    body = struct.pack(f"<{n}h", *[(m + 2048) >> 12 for m in W_Q24])
    return head + body + struct.pack("<I", binascii.crc32(head + body))


def round_payload(k: int, lr: int, dl: int, devices: list[bytes] | None) -> bytes:
    if devices is None:
        return struct.pack("<HBBIH", k, lr, 1, dl, 0)
    return struct.pack("<HBBIH", k, lr, 0, dl, len(devices)) + b"".join(
        bytes([len(d)]) + d for d in devices)


def update_payload(dev: bytes, samples: int, loss: int, blob: bytes) -> bytes:
    return struct.pack("<IiB", samples, loss, len(dev)) + dev + blob


def expected_frames() -> dict[str, list[str]]:
    blob = blob_q12()
    g = [frame(2, blob[i:i + 16], param_count=7, q=12, total=len(blob), index=i // 16,
               count=(len(blob) + 15) // 16, chunk_size=16, key=KEY)
         for i in range(0, len(blob), 16)]
    return {
        "round": [frame(1, round_payload(32, 6, 30000, [b"dev-1", b"b"]), key=KEY).hex()],
        "round_all": [frame(1, round_payload(8, 5, 0, None), version=43).hex()],
        "global": [f.hex() for f in g],
        "update": [frame(3, update_payload(b"dev-1", 32, -1234, blob), flags=2, param_count=7,
                         q=12).hex()],
        "status": [frame(4, b'{"state": "idle"}', version=0).hex()],
    }


ENCODE = """
import json
from tfshared import wire, weights as W
KEY = %r
blob = W.encode(%r, %r, W.DTYPE_Q12, 42)
out = {
    'round': wire.encode_round_start(7, 42, 32, 6, 30000, ['dev-1', 'b'], key=KEY),
    'round_all': wire.encode_round_start(7, 43, 8, 5, 0),
    'global': wire.encode_global(7, 42, blob, key=wire.hmac.Key(KEY), chunk_size=16),
    'update': wire.encode_update(7, 42, 'dev-1', 32, -1234, blob, delta=True),
    'status': wire.encode_status(7, 0, {'state': 'idle'}),
}
print(json.dumps(dict((k, [f.hex() for f in v]) for k, v in out.items())))
"""


def test_frames_are_byte_exact(run_json) -> None:
    # Prepare
    want = expected_frames()
    # Execute
    got = run_json(ENCODE % (KEY, W_Q24, SIZES))
    # Assert
    assert len(want["global"]) == 3  # 44-byte blob in chunks of 16: 16 + 16 + 12
    for name in want:
        assert got[name] == want[name], f"{name}: {got[name]} != {want[name]}"


DECODE = """
import json
from array import array
from tfshared import wire
KEY = %r
F = %r
res = {}
m = wire.decode(bytes.fromhex(F['round'][0]), KEY)
r = wire.parse_round_start(m)
res['round'] = [r.round, r.model_id, r.k, r.lr_shift, r.deadline_ms, list(r.devices),
                r.selects('dev-1'), r.selects('dev-2')]
r = wire.parse_round_start(wire.decode(bytes.fromhex(F['round_all'][0])))
res['round_all'] = [r.round, r.devices is None, r.selects('anyone')]
# chunks out of order, with duplicates: reassembled into the preallocated buffer
ra = wire.Reassembler(capacity=256, max_chunks=8, key=KEY)
buf = ra.buf
order = [2, 0, 2, 1, 0]
got = []
for i in order:
    m = ra.feed(bytes.fromhex(F['global'][i]))
    got.append(m is not None)
    if m is not None:
        msg = m
out = array('i', [0] * 7)
info = wire.global_into(msg, out, (1, 2, 1))
res['global'] = [got, list(out), info.model_version, msg.version, msg.total, ra.buf is buf]
u = wire.parse_update(wire.decode(bytes.fromhex(F['update'][0])), (1, 2, 1))
res['update'] = [u.device_id, u.round, u.samples, u.loss_q12, u.delta, u.info.n_params,
                 len(u.blob)]
res['status'] = wire.parse_status(wire.decode(bytes.fromhex(F['status'][0])))
print(json.dumps(res))
"""


def test_round_trips(run_json) -> None:
    frames = expected_frames()
    res = run_json(DECODE % (KEY, frames))
    assert res["round"] == [42, 7, 32, 6, 30000, ["dev-1", "b"], True, False]
    assert res["round_all"] == [43, True, True]
    # complete exactly when the last missing chunk arrives; duplicates change nothing
    assert res["global"][0] == [False, False, False, True, False]
    assert res["global"][1] == [((m + 2048) >> 12) << 12 for m in W_Q24]
    assert res["global"][2:] == [42, 42, len(blob_q12()), True]
    assert res["update"] == ["dev-1", 42, 32, -1234, True, 7, len(blob_q12())]
    assert res["status"] == {"state": "idle"}


def _bad_frames() -> list[tuple[str, str, list[str], str]]:
    """(name, how to feed, frames (hex), expected message part)."""
    good = frame(1, round_payload(32, 6, 30000, [b"d"]), key=KEY)
    flipped = bytearray(good)
    flipped[33] ^= 0x04  # a payload bit, CRC left as is
    forged = bytearray(good[:-4])
    forged[33] ^= 0x04  # a payload bit, CRC recomputed: only the HMAC catches it
    forged = bytes(forged) + struct.pack("<I", binascii.crc32(bytes(forged)))
    blob = blob_q12()
    big = frame(2, blob[:16], total=100000, count=(100000 + 15) // 16, chunk_size=16)
    many = frame(2, blob[:4], total=40, count=10, chunk_size=4)
    stale_a = frame(2, blob[:16], version=9, total=len(blob), count=3, chunk_size=16)
    stale_b = frame(2, blob[:16], version=8, total=len(blob), count=3, chunk_size=16)
    c = [
        ("truncated", "decode", [good[:-1].hex()], "truncated frame"),
        ("truncated header", "decode", [good[:20].hex()], "truncated frame"),
        ("trailing", "decode", [(good + b"\x00").hex()], "after the frame"),
        ("bit flip", "decode", [bytes(flipped).hex()], "CRC mismatch"),
        ("forged", "decode", [forged.hex()], "bad HMAC"),
        ("wrong key", "decode_other_key", [good.hex()], "bad HMAC"),
        ("unsigned", "decode", [frame(1, round_payload(1, 1, 0, None)).hex()], "unsigned"),
        ("magic", "decode_nokey", [frame(1, b"", magic=b"XX").hex()], "bad magic"),
        ("version", "decode_nokey", [frame(1, b"", ver=2).hex()], "protocol version 2"),
        ("type", "decode", [frame(9, b"", key=KEY).hex()], "unknown message type 9"),
        ("flags", "decode_nokey", [frame(1, b"", flags=8).hex()], "unknown flags"),
        ("reserved", "decode_nokey", [frame(1, b"", reserved=1).hex()], "unknown flags"),
        ("q", "decode_nokey", [frame(2, b"", q=16).hex()], "Q format 16"),
        ("oversize", "reassemble", [big.hex()], "oversize"),
        ("too many chunks", "reassemble", [many.hex()], "limit 8"),
        ("layout", "decode_nokey", [frame(2, blob[:16], total=44, count=2,
                                          chunk_size=16).hex()], "chunks of 16"),
        ("index", "decode_nokey", [frame(2, blob[:12], total=44, index=3, count=3,
                                         chunk_size=16).hex()], "chunk 3 of 3"),
        ("short chunk", "decode_nokey", [frame(2, blob[:10], total=44, count=3,
                                               chunk_size=16).hex()], "layout"),
        ("stale chunk", "reassemble", [stale_a.hex(), stale_b.hex()], "stale chunk"),
        ("round short", "round", [frame(1, b"\x01\x00").hex()], "round start payload"),
        ("round ids", "round", [frame(1, round_payload(1, 1, 0, [b"abc"])[:-1]).hex()],
         "truncated"),
        ("round stray", "round", [frame(1, round_payload(1, 1, 0, None) + b"x").hex()],
         "stray"),
        ("round lr", "round", [frame(1, round_payload(1, 0, 0, None)).hex()], "malformed"),
        ("utf8", "update", [frame(3, update_payload(b"\xff\xfe", 1, 0, blob), param_count=7,
                                  q=12).hex()], "UTF-8"),
        ("update short", "update", [frame(3, b"\x00" * 5, param_count=7, q=12).hex()],
         "update payload"),
        ("update count", "update", [frame(3, update_payload(b"d", 1, 0, blob), param_count=8,
                                          q=12).hex()], "disagrees"),
        ("update blob", "update", [frame(3, update_payload(b"d", 1, 0, blob[:-1]),
                                         param_count=7, q=12).hex()], "truncated blob"),
        ("update shape", "update", [frame(3, update_payload(b"d", 1, 0, blob), param_count=7,
                                          q=12).hex()], "expected (1, 3, 1)"),
        ("global version", "global", [frame(2, blob, version=41, param_count=7,
                                            q=12).hex()], "blob version 42"),
        ("global type", "global", [frame(3, blob, param_count=7, q=12).hex()],
         "type 3, expected 2"),
        ("status json", "status", [frame(4, b"{nope").hex()], "not JSON"),
        ("replay", "fresh", ["42", "42"], "replayed or stale version 42"),
    ]
    return c


REJECT = """
import json
from array import array
from tfshared import wire
KEY = %r
CASES = %r
def run(how, frames):
    fs = [bytes.fromhex(f) for f in frames]
    if how == 'decode':
        return wire.decode(fs[0], KEY)
    if how == 'decode_nokey':
        return wire.decode(fs[0])
    if how == 'decode_other_key':
        return wire.decode(fs[0], b'another key')
    if how == 'reassemble':
        ra = wire.Reassembler(capacity=4096, max_chunks=8)
        for f in fs:
            ra.feed(f)
        return
    if how == 'round':
        return wire.parse_round_start(wire.decode(fs[0]))
    if how == 'update':
        return wire.parse_update(wire.decode(fs[0]), (1, 3, 1) if 'shape' in name else None)
    if how == 'global':
        out = array('i', [5] * 7)
        try:
            return wire.global_into(wire.decode(fs[0]), out)
        finally:
            assert list(out) == [5] * 7
    if how == 'status':
        return wire.parse_status(wire.decode(fs[0]))
    if how == 'fresh':
        return wire.check_fresh(int(frames[0]), int(frames[1]))
res = []
for name, how, frames, _ in CASES:
    try:
        run(how, frames)
        res.append([name, None])
    except ValueError as e:
        res.append([name, str(e)])
    except Exception as e:
        res.append([name, 'NOT A ValueError: %%r' %% (e,)])
print(json.dumps(res))
"""


def test_every_rejection_is_a_valueerror(run_json) -> None:
    cases = _bad_frames()
    res = run_json(REJECT % (KEY, cases))
    for (name, _, _, want), (rname, msg) in zip(cases, res, strict=True):
        assert rname == name
        assert msg is not None, f"{name}: accepted"
        assert want in msg, f"{name}: {msg!r} lacks {want!r}"
        assert msg.startswith("wire: ") or msg.startswith("weights: "), msg


def test_replay_check_and_topics() -> None:
    assert wire.is_fresh(1, None) and wire.is_fresh(5, 4) and not wire.is_fresh(4, 4)
    wire.check_fresh(0, None)
    with pytest.raises(ValueError, match="stale version 3"):
        wire.check_fresh(3, 4)
    assert wire.topic_global("f1", "sine") == "tf/f1/model/sine/global"
    assert wire.topic_round("f1", "sine") == "tf/f1/round/sine"
    assert wire.topic_update("f1", "d7") == "tf/f1/dev/d7/update"
    assert wire.topic_status("f1", "d7") == "tf/f1/dev/d7/status"
    assert wire.topic_td("f1", "d7") == "tf/f1/dev/d7/td"
    assert wire.parse_topic("tf/f1/model/sine/global") == ("global", "f1", "sine")
    assert wire.parse_topic("tf/f1/round/sine") == ("round", "f1", "sine")
    for kind in ("update", "status", "td"):
        assert wire.parse_topic(f"tf/f1/dev/d7/{kind}") == (kind, "f1", "d7")
    for bad in ("tf/f1/dev/d7/other", "x/f1/round/m", "tf//round/m", "tf/f1/round"):
        with pytest.raises(ValueError, match="not a TinyFleet topic"):
            wire.parse_topic(bad)
    for bad in ("", "a/b", "+", "#"):
        with pytest.raises(ValueError, match="bad topic segment"):
            wire.topic_update("f", bad)
    assert wire.model_id_of("sine") == binascii.crc32(b"sine") & 0xFFFF


def test_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown message type"):
        wire.encode(9, b"")
    with pytest.raises(ValueError, match="chunk size"):
        wire.encode(4, b"x", chunk_size=0)
    with pytest.raises(ValueError, match="Q format"):
        wire.encode(2, b"x", q=8)
    with pytest.raises(ValueError, match="device id"):
        wire.encode_update(1, 1, "", 1, 0, blob_q12())
    with pytest.raises(ValueError, match="out of range"):
        wire.encode_round_start(1, 1, 0, 6, 100)
    with pytest.raises(ValueError, match="bad magic"):
        wire.encode_global(1, 1, b"junk" * 8)


def test_fuzzed_frames_never_crash() -> None:
    """Every single-bit flip and every truncation of a signed chunk is a ValueError; with
    the CRC fixed up afterwards (a forger), the HMAC still rejects it."""
    good = frame(3, update_payload(b"dev-1", 3, 4, blob_q12()), param_count=7, q=12, key=KEY)
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError):
            wire.decode(bytes(bad), KEY)
        if bit < (len(good) - 4) * 8:  # not in the CRC itself
            body = bytes(bad[:-4])
            with pytest.raises(ValueError):
                wire.decode(body + struct.pack("<I", binascii.crc32(body)), KEY)
    for n in range(len(good)):
        with pytest.raises(ValueError):
            wire.decode(good[:n], KEY)
    # Random garbage with a valid CRC, unsigned: any outcome but a non-ValueError crash.
    rng = random.Random(1)
    for _ in range(3000):
        body = bytearray(good[:-4 - 32])
        for _ in range(rng.randint(1, 6)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        body = bytes(body)
        try:
            msg = wire.decode(body + struct.pack("<I", binascii.crc32(body)))
            wire.parse_update(msg)
        except ValueError:
            pass


def test_large_model_chunks_at_default_size() -> None:
    sizes = (64, 32, 10)
    n = W.param_count(sizes)
    w = [(i * 37 % 2001 - 1000) * 4096 for i in range(n)]
    frames = wire.encode_global(1, 5, W.encode(w, sizes, W.DTYPE_Q12, 5), key=KEY)
    assert [len(f) for f in frames[:-1]] == [30 + 4096 + 32 + 4] * (len(frames) - 1)
    ra = wire.Reassembler(capacity=8192, key=KEY)
    msgs = [ra.feed(f) for f in reversed(frames)]
    assert msgs[:-1] == [None] * (len(frames) - 1)
    from array import array
    out = array("i", [0] * n)
    wire.global_into(msgs[-1], out, sizes)
    assert list(out) == [((m + 2048) >> 12) << 12 for m in w]


def test_reassembler_restarts_on_a_newer_message() -> None:
    # Prepare: two versions of a 3-chunk global
    old = wire.encode_global(7, 5, W.encode(W_Q24, SIZES, W.DTYPE_Q12, 5), chunk_size=16)
    new = wire.encode_global(7, 6, W.encode(W_Q24[::-1], SIZES, W.DTYPE_Q12, 6), chunk_size=16)
    ra = wire.Reassembler(64, max_chunks=4)
    buf = ra.buf
    # Execute: a partial v5, then all of v6 (the partial is dropped), then v5 again
    assert ra.feed(old[0]) is None and ra.feed(old[1]) is None
    assert ra.feed(new[2]) is None and ra.feed(new[0]) is None
    msg = ra.feed(new[1])
    # Assert
    assert msg is not None and msg.version == 6 and ra.buf is buf
    assert bytes(msg.payload) == bytes(W.encode(W_Q24[::-1], SIZES, W.DTYPE_Q12, 6))
    assert ra.feed(old[2]) is None  # after completion an older message may start over
    with pytest.raises(ValueError, match="oversize"):
        wire.Reassembler(16).feed(new[0])
