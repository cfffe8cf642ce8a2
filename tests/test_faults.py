"""Faults, with real MicroPython devices (32-bit build, 128 KB heap) and a real Mosquitto.

Each test states its pass criterion first:
  (a) a device SIGKILLed mid-round: that round closes (by the deadline at the latest)
      with the other devices' updates, and the next rounds run without it;
  (b) the coordinator kill -9'd mid-run and restarted on its checkpoint: it resumes from
      the last completed round, no completed round is lost or changed, every round is
      stored once, and the devices keep taking part (nothing refused, no version bump);
  (c) the broker restarted mid-run: devices and coordinator reconnect by themselves and
      every later round has every device's update;
  (d) a device publishing garbage on its update and status topics: the coordinator logs
      and ignores each message, and every round completes with the real devices.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from tfshared import weights, wire
from tinyfleet.broker import EmbeddedBroker
from tinyfleet.checkpoint import Checkpoint
from tinyfleet.coord_codec import model_id
from tinyfleet.coordinator import Config, Coordinator
from tinyfleet.fleet import Fleet, Watcher
from tinyfleet.simulate import SimConfig, device_configs

FLEET, MODEL, SIZES, KEY = "flt", "sine", (1, 40, 40, 1), "f4ult-key"
DEVS = ["dev00", "dev01", "dev02"]


@pytest.fixture
def devices(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Fleet]:
    """Three MicroPython devices on the test's broker, started and online."""
    watch = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/dev/+/status"],
                    client_id="tf-faults-watch")
    with Fleet(tmp_path / "boards") as fleet:
        for dc in device_configs(SimConfig(devices=len(DEVS), seed=5), FLEET,
                                 mosquitto.host, mosquitto.port, KEY):
            fleet.add(dc)
        fleet.start()
        for dev in DEVS:
            got = watch.wait_for(lambda t, p, dev=dev: dev in t and json.loads(p)["state"]
                                 == "online", 30)
            assert got is not None, f"{dev} never came online:\n" + fleet.devices[0].log_tail()
        watch.close()
        yield fleet


def coordinator(mosquitto: EmbeddedBroker, db: Path, **kw: object) -> tuple[
        Coordinator, threading.Thread, threading.Event, Checkpoint]:
    ck = Checkpoint(db)
    base = dict(fleet=FLEET, model=MODEL, sizes=SIZES, rounds=5, deadline=10.0,
                min_replies=1, online_wait=30.0, key=KEY.encode(), seed=5)
    base.update(kw)
    coord = Coordinator(Config(**base), mosquitto.host, mosquitto.port, ck,  # type: ignore[arg-type]
                        client_id="tf-faults-coord")
    stop = threading.Event()

    def target() -> None:
        try:
            coord.run(stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced by finish()
            th.error = exc  # type: ignore[attr-defined]

    th = threading.Thread(target=target, daemon=True)
    th.error = None  # type: ignore[attr-defined]
    th.start()
    return coord, th, stop, ck


def finish(th: threading.Thread, stop: threading.Event, ck: Checkpoint,
           timeout: float = 120) -> None:
    th.join(timeout)
    stop.set()
    th.join(10)
    ck.close()
    assert not th.is_alive(), "coordinator did not finish"
    if th.error is not None:  # type: ignore[attr-defined]
        raise th.error  # type: ignore[attr-defined]


def wait_until(pred, timeout: float, what: str) -> None:  # noqa: ANN001
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def history(db: Path) -> list:
    with Checkpoint(db) as ck:
        return ck.history()


def final_statuses(mosquitto: EmbeddedBroker) -> dict[str, dict]:
    """The devices' retained statuses as the broker holds them now."""
    w = Watcher(mosquitto.host, mosquitto.port, [f"tf/{FLEET}/dev/+/status"],
                client_id="tf-faults-final")
    time.sleep(0.5)
    out = {t.split("/")[3]: json.loads(p) for t, p, _ in w.messages if p}
    w.close()
    return out


def test_a_device_killed_mid_round(tmp_path, mosquitto, devices, caplog):
    # Prepare: rounds of k = 30000 local steps (long enough to kill a device while it
    # computes); dev02 is killed once round 2 is open and dev00/dev01 have not replied yet.
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    db = tmp_path / "c.db"
    coord, th, stop, ck = coordinator(mosquitto, db, rounds=4, k=30000, deadline=20.0)
    victim = devices.devices[2]
    # Execute
    wait_until(lambda: coord.open is not None and coord.open.round == 2, 90, "round 2 open")
    assert victim.id not in coord.open.replies
    os.kill(victim.proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    wait_until(lambda: len(history(db)) > 2, 60, "round 2 to close")
    closed_after = time.monotonic() - t_kill
    finish(th, stop, ck)
    # Assert: round 2 done by the deadline with the two survivors' updates only; rounds
    # 3-4 select and hear only them; the survivors are still running.
    hist = history(db)
    assert [(h.round, h.status) for h in hist] == [(0, "init")] + [(r, "done")
                                                                   for r in range(1, 5)]
    assert hist[1].replied == DEVS
    assert hist[2].replied == DEVS[:2] and closed_after < 20.0 + 5, (hist[2], closed_after)
    for h in hist[3:]:
        assert h.selected == DEVS[:2] and h.replied == DEVS[:2], h
    assert victim.proc.wait(5) == -signal.SIGKILL
    assert [d.id for d in devices.dead()] == [victim.id]


_RUNNER = """
import sys
from tinyfleet.commands import coordinator
import argparse
p = argparse.ArgumentParser()
coordinator.add_arguments(p)
sys.exit(coordinator.run(p.parse_args(sys.argv[1:])))
"""


def coordinator_process(broker: EmbeddedBroker, db: Path, rounds: int,
                        log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", _RUNNER, "--broker", broker.address, "--fleet", FLEET,
            "--model", MODEL, "--rounds", str(rounds), "--k", "2000", "--deadline", "10",
            "--seed", "5", "--fleet-key-env", "TF_FAULT_KEY", "--db", str(db),
            "--registry", str(db.with_name("registry.sqlite"))]  # as a user runs it: on
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_FAULT_KEY": KEY})


def test_b_coordinator_kill_9_and_restart(tmp_path, mosquitto, devices):
    # Prepare: the coordinator as its own process, rounds of 2000 local steps
    db, log = tmp_path / "c.db", tmp_path / "coord.log"
    p1 = coordinator_process(mosquitto, db, 6, log)
    # Execute: kill -9 while round 3 is open (2 completed), then restart on the same db
    try:
        wait_until(lambda: "round 3/6: started" in log.read_text(), 120, "round 3 to start")
        os.kill(p1.pid, signal.SIGKILL)
        p1.wait(10)
    finally:
        if p1.poll() is None:
            p1.kill()
    before = history(db)
    p2 = coordinator_process(mosquitto, db, 6, log)
    try:
        rc = p2.wait(120)
    finally:
        if p2.poll() is None:
            p2.kill()
    # Assert: resumed from the last completed round; rounds 0..6 each stored once; the
    # rounds completed before the kill are unchanged; all three devices replied in every
    # round after the restart; no device refused anything and the version did not jump.
    out = log.read_text()
    killed_at = before[-1].round
    assert p1.returncode == -signal.SIGKILL and rc == 0, out
    assert killed_at >= 2, out
    assert f"resuming from {db}: round {killed_at} completed" in out, out
    after = history(db)
    assert [h.round for h in after] == list(range(7))
    for old, new in zip(before, after, strict=False):
        np.testing.assert_array_equal(old.weights, new.weights, err_msg=f"round {old.round}")
        assert (old.status, old.replied) == (new.status, new.replied)
    for h in after[killed_at + 1:]:
        assert h.status == "done" and h.replied == DEVS, h
    assert "version epoch" not in out
    st = final_statuses(mosquitto)
    for dev in DEVS:
        assert st[dev]["rejected"] == 0 and st[dev]["version"] == 7, st[dev]
    assert devices.dead() == []


def test_c_broker_restart_mid_run(tmp_path, mosquitto, devices, caplog):
    # Prepare
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    db = tmp_path / "c.db"
    coord, th, stop, ck = coordinator(mosquitto, db, rounds=6, k=2000, attempts=5)
    port = mosquitto.port
    second = None
    try:
        # Execute: once round 2 is in, stop the broker for 2 s, then start a new one
        # (no persistence: retained messages are gone too) on the same port
        wait_until(lambda: len(history(db)) > 2, 90, "round 2")
        mosquitto.stop()
        time.sleep(2.0)
        second = EmbeddedBroker(port=port).start()
        finish(th, stop, ck, timeout=150)
        st = final_statuses(second)
    finally:
        stop.set()
        if second is not None:
            second.stop()
    # Assert: all rounds done; the coordinator said it lost and regained the broker; the
    # last rounds had every device's update; every device reconnected (its retained
    # status is on the new broker) and refused nothing.
    hist = history(db)
    assert [(h.round, h.status) for h in hist[1:]] == [(r, "done") for r in range(1, 7)]
    assert "lost the broker" in caplog.text
    assert "reconnected: republishing global" in caplog.text
    assert hist[-1].replied == DEVS and hist[-2].replied == DEVS, hist[-2:]
    assert sorted(st) == DEVS, st
    for dev in DEVS:
        assert st[dev]["rejected"] == 0, st[dev]
    assert devices.dead() == []


def test_d_garbage_on_update_and_status_topics(tmp_path, mosquitto, devices, caplog):
    # Prepare: 'evil' publishes, during every round, junk bytes, a CRC-broken frame, a
    # truncated frame and an unsigned (keyless) update on its update topic, and junk and
    # a JSON array on its status topic; dev02's update topic also gets junk.
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    n = weights.param_count(SIZES)
    blob = weights.encode([0] * n, SIZES, weights.DTYPE_Q12, 1)
    good = wire.encode_update(model_id(MODEL), 1, "evil", 1, 0, blob)[0]
    bad_crc = bytearray(good)
    bad_crc[40] ^= 0xFF
    updates = [b"\x00garbage\xff", bytes(bad_crc), good[:60], good]
    statuses = [b"\xde\xad\xbe\xef", b"[1, 2, 3]", b"{\"no\": \"state\"}"]
    evil = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil")
    evil.connect(mosquitto.host, mosquitto.port)
    evil.loop_start()
    sent = []

    def spam(round_no: int) -> None:
        for u in updates:
            evil.publish(wire.topic_update(FLEET, "evil"), u, qos=1).wait_for_publish(5)
            sent.append(("update", round_no))
        for s in statuses:
            evil.publish(wire.topic_status(FLEET, "evil"), s, qos=1).wait_for_publish(5)
            sent.append(("status", round_no))
        evil.publish(wire.topic_update(FLEET, "dev02"), b"TF\x01junk", qos=1
                     ).wait_for_publish(5)
        sent.append(("update", round_no))

    db = tmp_path / "c.db"
    coord, th, stop, ck = coordinator(mosquitto, db, rounds=4, k=15000)
    # Execute: spam once in each round while it is open
    try:
        for r in range(1, 5):
            wait_until(lambda r=r: coord.open is not None and coord.open.round == r, 60,
                       f"round {r}")
            spam(r)
        finish(th, stop, ck)
    finally:
        evil.loop_stop()
        evil.disconnect()
    # Assert: every round done with the three real devices only; each junk message was
    # counted as ignored and logged; 'evil' never counted as an online device.
    hist = history(db)
    assert [(h.round, h.status, h.replied) for h in hist[1:]] == [
        (r, "done", DEVS) for r in range(1, 5)]
    assert coord.ignored == len(sent), (coord.ignored, len(sent))
    text = caplog.text
    assert text.count("garbage update from 'evil'") == 4 * 4, text[-3000:]
    assert text.count("garbage status from 'evil'") == 4 * 3
    assert text.count("garbage update from 'dev02'") == 4
    assert "evil" not in coord.online
