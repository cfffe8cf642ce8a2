"""The device client (device/main.py + device/client.py) as a real MicroPython process
(32-bit build, 128 KB heap like a board) against a real Mosquitto: status and last will,
adopting a pushed global model, refusing tampered / truncated / replayed / oversized /
garbage pushes while keeping its weights, rounds, and reconnecting after a broker restart.
"""

from __future__ import annotations

import binascii
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tfshared import weights, wire
from tinyfleet import reference
from tinyfleet.broker import EmbeddedBroker, find_mosquitto
from tinyfleet.coord_codec import Codec
from tinyfleet.fleet import Device, Fleet, Watcher

SIZES = (1, 40, 40, 1)
FLEET, MODEL, DEV = "t", "sine", "dev1"
KEY = "s3cret-fleet-key"
T_STATUS = wire.topic_status(FLEET, DEV)
T_GLOBAL = wire.topic_global(FLEET, MODEL)
T_ROUND = wire.topic_round(FLEET, MODEL)
T_UPDATE = wire.topic_update(FLEET, DEV)


def global_frame(version: int, seed: int, key: str | None = KEY) -> tuple[bytes, int]:
    """(frame, crc32 of the Q24 weights the device should then hold) for a global push."""
    master = reference.init_weights(SIZES, seed)
    blob = weights.encode([int(v) for v in master], SIZES, weights.DTYPE_Q12, version)
    [frame] = wire.encode_global(wire.model_id(MODEL), version, blob,
                                 key.encode() if key else None, chunk_size=len(blob))
    _, q24 = weights.decode(blob)
    held = np.asarray(q24, dtype="<i4").tobytes()
    return frame, binascii.crc32(held) & 0xFFFFFFFF


def statuses(w: Watcher, start: int = 0) -> list[dict]:
    out = []
    for topic, payload, _ in w.messages[start:]:
        if topic == T_STATUS and payload:
            out.append(json.loads(payload))
    return out


LOGS: list[Device] = []  # devices whose log a failed wait shows


def wait_status(w: Watcher, pred, start: int, timeout: float = 15.0) -> dict:
    m = w.wait_for(lambda t, p: t == T_STATUS and pred(json.loads(p)), timeout, start)
    logs = "\n".join(d.log_tail(30) for d in LOGS)
    assert m is not None, f"no matching status; got {statuses(w, start)[-5:]}\n{logs}"
    return json.loads(m[1])


@pytest.fixture
def device(tmp_path: Path, mosquitto: EmbeddedBroker,  # noqa: F811
           build: str) -> Iterator[tuple[Device, Watcher]]:
    """One device process (keepalive 3 s; 32-bit build with 128 KB heap, or 64-bit with
    256 KB) and a watcher on its fleet's topics."""
    w = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/#"], client_id="test-watch")
    fleet = Fleet(tmp_path, build=build)
    dev = fleet.add({"id": DEV, "fleet": FLEET, "model": MODEL, "broker": mosquitto.host,
                     "port": mosquitto.port, "fleet_key": KEY, "keepalive": 3,
                     "seed": 7, "rate": 100})
    fleet.start()
    LOGS[:] = [dev]
    try:
        yield dev, w
    finally:
        fleet.stop()
        w.close()


def test_client_lifecycle(device: tuple[Device, Watcher], mosquitto: EmbeddedBroker):  # noqa: F811
    dev, w = device
    # -- connects, publishes a retained "online" status ----------------------------
    first = wait_status(w, lambda s: s["state"] == "online", 0)
    t_online = time.monotonic()
    assert first["id"] == DEV and first["version"] == 0 and first["kernel"] in (
        "viper", "bytecode"), first
    td = w.wait_for(lambda t, p: t == wire.topic_td(FLEET, DEV), 10)
    assert td is not None and td[2] is False
    desc = json.loads(td[1])  # the compact self-description (device/describe.py)
    assert desc["id"] == DEV and desc["fleet"] == FLEET and desc["model"][
        "params"] == reference.n_params(SIZES), desc

    # -- adopts an intact, authentic, newer global model (and persists it) ------------
    frame2, crc2 = global_frame(2, seed=11)
    mark = w.mark()
    w.publish(T_GLOBAL, frame2, retain=True)
    st = wait_status(w, lambda s: s["state"] == "accepted", mark)
    assert st["version"] == 2 and st["crc"] == crc2, st
    persisted = weights.validate((dev.root / "model.bin").read_bytes())
    assert persisted.model_version == 2

    # -- refuses bad pushes with a status saying why, keeping v2's weights ------------
    frame3, _ = global_frame(3, seed=12)
    tampered = bytearray(frame3)
    tampered[wire.HEADER_LEN + 40] ^= 0x01  # a weight bit flipped...
    end = len(tampered) - wire.CRC_LEN  # ...and the CRC fixed up: only the HMAC can tell
    tampered[end:] = (binascii.crc32(tampered[:end]) & 0xFFFFFFFF).to_bytes(4, "little")
    unsigned, _ = global_frame(3, seed=12, key=None)
    wrong_key, _ = global_frame(3, seed=12, key="not-the-fleet-key")
    old, _ = global_frame(1, seed=13)
    fat = wire.encode(wire.T_GLOBAL, bytes(6000), wire.model_id(MODEL), 4, key=KEY.encode(),
                      chunk_size=2000)[0]  # a small chunk of a message too big to hold
    # Signed and intact, but for another model, or of another shape under this model's id
    small = weights.encode([0] * weights.param_count((1, 8, 1)), (1, 8, 1),
                           weights.DTYPE_Q12, 3)
    [other_shape] = wire.encode_global(wire.model_id(MODEL), 3, small, KEY.encode(),
                                       chunk_size=len(small))
    [other_model] = wire.encode_global(wire.model_id("digits"), 3, small, KEY.encode(),
                                       chunk_size=len(small))
    cases = [
        (bytes(tampered), "HMAC"),
        (frame3[: len(frame3) // 2], "truncated"),
        (unsigned, "unsigned"),
        (wrong_key, "HMAC"),
        (old, "stale"),
        (fat, "oversize"),
        (b"\x00" * 9000, "oversized"),  # above max_msg: drained before allocation
        (b"garbage \xff\xfe not a frame at all, only noise" * 3, "magic"),
        (other_shape, "shape"),
        (other_model, "model id"),
    ]
    for payload, why in cases:
        mark = w.mark()
        w.publish(T_GLOBAL, payload)
        st = wait_status(w, lambda s: s["state"] == "rejected", mark)
        assert why in st["reason"], (why, st["reason"])
        assert st["version"] == 2 and st["crc"] == crc2, st
    # A replay of its own version with other (signed) weights is not adopted either.
    same_version, _ = global_frame(2, seed=99)
    w.publish(T_GLOBAL, same_version)
    mark = w.mark()
    w.publish(T_ROUND, b"\x01\x02garbage")  # garbage on the round topic too
    st = wait_status(w, lambda s: s["state"] == "rejected", mark)
    assert "round" in st["reason"], st
    assert st["version"] == 2 and st["crc"] == crc2 and st["accepted"] == 1, st
    assert dev.running, dev.log_tail()
    assert not (dev.root / "model.bin.tmp").exists()
    assert weights.validate((dev.root / "model.bin").read_bytes()).model_version == 2

    # -- a round that selects it: k steps from v2, an update the coordinator decodes ----
    codec = Codec(FLEET, MODEL, SIZES, KEY.encode())
    mark = w.mark()
    for f in codec.encode_round(2, k=16, lr_shift=6, deadline_s=10, devices=[DEV, "other"]):
        w.publish(T_ROUND, f)
    m = w.wait_for(lambda t, p: t == T_UPDATE, 15, mark)
    assert m is not None, dev.log_tail()
    upd = codec.decode_update(DEV, m[1])
    assert upd is not None and upd.device == DEV and upd.round == 2 and upd.samples == 16
    start = reference.init_weights(SIZES, 11)
    moved = np.abs(upd.weights - (start >> 12 << 12)).max()
    assert 0 < moved < 2**24, moved  # it trained, from the v2 weights

    # ...and a round that does not select it gets no reply
    mark = w.mark()
    for f in codec.encode_round(3, k=16, lr_shift=6, deadline_s=10, devices=["other"]):
        w.publish(T_ROUND, f)
    assert w.wait_for(lambda t, p: t == T_UPDATE, 2.0, mark) is None

    # Mosquitto drops a client silent for 1.5 keepalives (4.5 s here): still connected
    # after all this, so the client's own pings work.
    time.sleep(max(0.0, t_online + 6.0 - time.monotonic()))
    assert dev.running and "link: lost" not in dev.log_tail(200), dev.log_tail(200)

    # -- broker restart: reconnects, resubscribes, says it is online again ------------
    conf = mosquitto.workdir / "mosquitto.conf"
    assert mosquitto.proc is not None
    mosquitto.proc.terminate()
    mosquitto.proc.wait(5)
    w.client.loop_stop()
    time.sleep(1.0)
    mosquitto.proc = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection((mosquitto.host, mosquitto.port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    w.close()
    w = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/#"], client_id="test-watch2")
    try:
        wait_status(w, lambda s: s["state"] == "online", 0, timeout=20)
        frame5, crc5 = global_frame(5, seed=14)
        w.publish(T_GLOBAL, frame5, retain=True)  # only reaches it if it resubscribed
        st = wait_status(w, lambda s: s["state"] == "accepted" and s["version"] == 5, 0)
        assert st["crc"] == crc5
        assert "link: lost" in dev.log_tail(200) and dev.running

        # -- killed: the broker publishes its last will, retained ---------------------
        mark = w.mark()
        dev.stop()
        wait_status(w, lambda s: s["state"] == "offline", mark, timeout=10)
    finally:
        w.close()


def test_restart_restores_persisted_model(tmp_path: Path, mosquitto: EmbeddedBroker):  # noqa: F811,E501
    """A device restarted with model.bin on its flash starts from that global version and
    ignores the retained copy of the same model."""
    w = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/#"], client_id="w")
    fleet = Fleet(tmp_path, build="32")
    dev = fleet.add({"id": DEV, "fleet": FLEET, "model": MODEL, "broker": mosquitto.host,
                     "port": mosquitto.port, "keepalive": 5, "seed": 3})
    frame, crc = global_frame(4, seed=21, key=None)
    w.publish(T_GLOBAL, frame, retain=True)
    try:
        fleet.start()
        st = wait_status(w, lambda s: s["state"] == "accepted", 0)
        assert st["version"] == 4 and st["crc"] == crc
        dev.stop()
        mark = w.mark()
        dev.start()
        st = wait_status(w, lambda s: s["state"] == "online", mark)
        assert st["version"] == 4 and st["crc"] == crc and st["rejected"] == 0, st
        time.sleep(1.0)
        assert all(s["state"] != "rejected" for s in statuses(w, mark))
    finally:
        fleet.stop()
        w.close()


def test_password_and_learning_while_refused(tmp_path: Path):
    """With user/password from config.json a device gets in; with a wrong password the
    broker refuses it, and it keeps learning, retrying with growing backoff."""
    # Prepare: a Mosquitto that refuses anonymous clients
    from tinyfleet.broker import free_port

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "dev-ok", "right"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "watch", "w"], check=True)
    port = free_port()
    conf = tmp_path / "m.conf"
    # As root, mosquitto drops to its own user before reading the password file, which
    # it then cannot reach inside pytest's private tmp dir: stay root (tests only).
    stay = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {pwfile}\npersistence false\n{stay}")
    broker = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet = Fleet(tmp_path / "boards", build="32")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        import paho.mqtt.client as mqtt

        good = fleet.add({"id": "ok", "fleet": FLEET, "model": MODEL, "port": port,
                          "user": "dev-ok", "password": "right", "seed": 1})
        bad = fleet.add({"id": "bad", "fleet": FLEET, "model": MODEL, "port": port,
                         "user": "dev-ok", "password": "wrong", "seed": 2,
                         "max_samples": 250, "rate": 100})
        got: list[dict] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="w2")
        sub.username_pw_set("watch", "w")
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"tf/{FLEET}/dev/+/status")
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        # Execute
        fleet.start()
        assert bad.proc is not None
        code = bad.proc.wait(30)  # 250 samples at 100/s, never connected
        # Assert
        log = bad.log_tail(50)
        assert code == 0, log
        fails = [line for line in log.splitlines() if line.startswith("link: connect failed")]
        assert len(fails) >= 2, log
        delays = [float(line.split("retry in ")[1].split()[0]) for line in fails]
        assert delays[-1] > delays[0], delays  # exponential backoff
        deadline = time.monotonic() + 10
        while not any(s.get("id") == "ok" and s["state"] == "online" for s in got):
            assert time.monotonic() < deadline, (got, good.log_tail())
            time.sleep(0.1)
        assert not any(s.get("id") == "bad" for s in got)
        sub.loop_stop()
        sub.disconnect()
    finally:
        fleet.stop()
        broker.terminate()
        broker.wait(5)
