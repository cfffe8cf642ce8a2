"""The coordinator against a real Mosquitto, with small paho clients standing in for devices.

The fake devices speak the real wire format (tfshared.wire) and reply with known weights,
so every expectation below is computed by hand. The end-to-end test with MicroPython
devices lives elsewhere; this one pins the coordinator's round protocol.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from tfshared import weights, wire
from tinyfleet.broker import EmbeddedBroker
from tinyfleet.checkpoint import Checkpoint
from tinyfleet.coord_codec import model_id
from tinyfleet.coordinator import Config, Coordinator
from tinyfleet.strategies import select_devices

SIZES = (2, 2, 1)            # 9 parameters: small enough to write expectations by hand
N = weights.param_count(SIZES)
ONE = 1 << 24                # 1.0 as a Q24 master weight
FLEET, MODEL = "t", "tiny"
MID = model_id(MODEL)


def update_frames(dev: str, round_no: int, value_q12: int, samples: int = 1,
                  key: bytes | None = None) -> list[bytes]:
    """An update whose every weight is value_q12 / 4096."""
    blob = weights.encode([value_q12 << 12] * N, SIZES, weights.DTYPE_Q12, round_no)
    return wire.encode_update(MID, round_no, dev, samples, 0, blob, key=key)


# A reply plan: round -> list of (delay s, frames) to publish on the update topic.
Plan = Callable[[int], list[tuple[float, list[bytes]]]]


class FakeDevice:
    """A paho client with a retained 'online' status that answers round starts by plan."""

    def __init__(self, broker: EmbeddedBroker, dev: str, plan: Plan,
                 always: bool = False) -> None:
        self.dev, self.plan = dev, plan
        self.always = always  # reply even when the round did not select this device
        self.rounds_seen: list[tuple[int, tuple[str, ...] | None]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-{dev}")
        self.c.will_set(wire.topic_status(FLEET, dev), json.dumps({"state": "offline"}),
                        qos=1, retain=True)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.reconnect_delay_set(0.1, 1)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert self.ready.wait(5), f"fake device {dev} could not subscribe"

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:
        # Like device/agent.py: (re)subscribe and announce itself after every connection.
        client.subscribe(wire.topic_round(FLEET, MODEL), qos=1)
        self.set_status("online")

    def set_status(self, state: str) -> None:
        self.c.publish(wire.topic_status(FLEET, self.dev),
                       json.dumps({"id": self.dev, "state": state}), qos=1, retain=True)

    def _on_message(self, client, userdata, msg) -> None:
        rs = wire.parse_round_start(wire.decode(msg.payload))
        self.rounds_seen.append((rs.round, rs.devices))
        if rs.selects(self.dev) or self.always:
            threading.Thread(target=self._reply, args=(rs.round,), daemon=True).start()

    def _reply(self, round_no: int) -> None:
        for delay, frames in self.plan(round_no):
            time.sleep(delay)
            for f in frames:
                self.c.publish(wire.topic_update(FLEET, self.dev), f, qos=1)

    def close(self, clear: bool = True) -> None:
        if clear and self.c.is_connected():
            self.c.publish(wire.topic_status(FLEET, self.dev), b"", qos=1,
                           retain=True).wait_for_publish(5)
        self.c.loop_stop()
        self.c.disconnect()


class GlobalWatcher:
    """Records every global-weights frame (version, weights as reals)."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.seen: list[tuple[int, np.ndarray]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch-global")
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port)
        self.c.subscribe(wire.topic_global(FLEET, MODEL), qos=1)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        f = wire.decode(msg.payload)
        out = weights.zeros(N)
        wire.global_into(f, out, SIZES)
        self.seen.append((f.version, np.array(out, dtype=np.float64) / ONE))

    def wait_version(self, v: int, timeout: float = 30) -> np.ndarray:
        t = time.monotonic() + timeout
        while time.monotonic() < t:
            for ver, w in self.seen:
                if ver == v:
                    return w
            time.sleep(0.05)
        raise AssertionError(f"global v{v} never published; saw {[s[0] for s in self.seen]}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def fleet(mosquitto: EmbeddedBroker) -> Iterator[Callable[[str, Plan], FakeDevice]]:
    devices: list[FakeDevice] = []

    def make(dev: str, plan: Plan, always: bool = False) -> FakeDevice:
        d = FakeDevice(mosquitto, dev, plan, always)
        devices.append(d)
        return d

    yield make
    for d in devices:
        d.close()


def start_coordinator(broker: EmbeddedBroker, db: Path, theta0: float | None = 0.0,
                      **kw: object) -> tuple[Coordinator, threading.Thread, threading.Event,
                                             Checkpoint]:
    """A Coordinator in a thread; theta0 pre-seeds round 0 so expectations are exact."""
    ck = Checkpoint(db)
    if theta0 is not None and ck.resume() is None:
        ck.save_round(0, np.full(N, theta0 * ONE), status="init")
    base = dict(fleet=FLEET, model=MODEL, sizes=SIZES, rounds=1, deadline=3.0,
                schedule="constant", online_wait=5.0)
    base.update(kw)
    coord = Coordinator(Config(**base), broker.host, broker.port, ck)  # type: ignore[arg-type]
    stop = threading.Event()

    def target() -> None:
        try:
            coord.run(stop)
        except BaseException as exc:  # surfaced by finish()
            th.error = exc  # type: ignore[attr-defined]

    th = threading.Thread(target=target, daemon=True)
    th.error = None  # type: ignore[attr-defined]
    th.start()
    return coord, th, stop, ck


def finish(th: threading.Thread, ck: Checkpoint, timeout: float = 60) -> None:
    th.join(timeout)
    assert not th.is_alive(), "coordinator did not finish"
    ck.close()
    if th.error is not None:  # type: ignore[attr-defined]
        raise th.error  # type: ignore[attr-defined]


def test_fedavg_round_aggregates_exactly_the_expected_weights(mosquitto, fleet, tmp_path):
    # Prepare: a replies 1.0 (1 sample), b replies 3.0 (3 samples)
    watch = GlobalWatcher(mosquitto)
    fleet("a", lambda r: [(0, update_frames("a", r, 4096, samples=1))])
    fleet("b", lambda r: [(0, update_frames("b", r, 3 * 4096, samples=3))])
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="fedavg",
                                            min_replies=2)
    finish(th, ck)
    # Assert: (1·1.0 + 3·3.0) / 4 = 2.5 everywhere, published as global v2
    np.testing.assert_allclose(watch.wait_version(2), np.full(N, 2.5))
    with Checkpoint(tmp_path / "c.db") as ck2:
        hist = ck2.history()
        mets = ck2.metrics(1)
    assert [h.round for h in hist] == [0, 1]
    np.testing.assert_allclose(hist[1].weights / ONE, np.full(N, 2.5))
    assert hist[1].replied == ["a", "b"] and hist[1].status == "done"
    assert [(m.device, m.samples) for m in mets] == [("a", 1), ("b", 3)]
    watch.close()


def test_reptile_duplicate_counted_once_and_garbage_ignored(mosquitto, fleet, tmp_path,
                                                            caplog):
    # Prepare: θ0 = 0, ε = 0.5. a sends 1.0 then a duplicate 7.0; b sends garbage first,
    # then 3.0; c answers late in the round (keeps it open) with 2.0.
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    watch = GlobalWatcher(mosquitto)
    fleet("a", lambda r: [(0, update_frames("a", r, 4096)), (0.2, update_frames("a", r, 7 * 4096))])
    fleet("b", lambda r: [(0, [b"garbage!", b"TF\x01\x03" + bytes(40)]),
                          (0, update_frames("b", r, 3 * 4096))])
    fleet("c", lambda r: [(1.0, update_frames("c", r, 2 * 4096))])
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="reptile",
                                            epsilon=0.5, min_replies=3)
    finish(th, ck)
    # Assert: θ1 = 0 + 0.5 · mean(1, 3, 2) = 1.0 (7.0 would have made it 2.0)
    np.testing.assert_allclose(watch.wait_version(2), np.full(N, 1.0))
    text = caplog.text
    assert "duplicate update from a for round 1" in text
    assert text.count("garbage update from 'b'") == 2
    assert coord.ignored == 3
    watch.close()


def test_late_reply_for_old_round_is_ignored(mosquitto, fleet, tmp_path, caplog):
    # Prepare: in round 2, a also resends an update stamped round 1 (7.0) before its real one
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    watch = GlobalWatcher(mosquitto)

    def plan_a(r: int):
        stale = [(0, update_frames("a", r - 1, 7 * 4096))] if r > 1 else []
        return stale + [(0.3, update_frames("a", r, 2 * 4096))]

    fleet("a", plan_a)
    # Execute: two rounds of TinyReptile with ε = 0.5 on the only device
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="tinyreptile",
                                            per_round=1, epsilon=0.5, rounds=2)
    finish(th, ck)
    # Assert: θ1 = 0.5·2 = 1.0; θ2 = 1 + 0.5·(2 − 1) = 1.5 (the stale 7.0 would give 4.0)
    np.testing.assert_allclose(watch.wait_version(2), np.full(N, 1.0))
    np.testing.assert_allclose(watch.wait_version(3), np.full(N, 1.5))
    assert "late update from a for round 1 (open: 2)" in caplog.text
    watch.close()


def test_silent_device_round_closes_at_deadline_with_the_others(mosquitto, fleet, tmp_path):
    # Prepare: a and b answer at once, d never does
    fleet("a", lambda r: [(0, update_frames("a", r, 4096))])
    fleet("b", lambda r: [(0, update_frames("b", r, 3 * 4096))])
    d = fleet("d", lambda r: [])
    # Execute
    t0 = time.monotonic()
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="reptile",
                                            epsilon=1.0, min_replies=2, deadline=2.0)
    finish(th, ck)
    took = time.monotonic() - t0
    # Assert: selected all three, aggregated a and b: mean(1, 3) = 2.0, after the deadline
    with Checkpoint(tmp_path / "c.db") as ck2:
        h = ck2.history()[1]
    assert h.selected == ["a", "b", "d"] and h.replied == ["a", "b"]
    np.testing.assert_allclose(h.weights / ONE, np.full(N, 2.0))
    assert h.duration >= 2.0 and took < 15
    assert d.rounds_seen == [(1, None)]  # every online device: "all" on the wire


def test_per_round_lists_chosen_devices_and_ignores_the_others(mosquitto, fleet, tmp_path,
                                                               caplog):
    # Prepare: three devices that all answer every round start, chosen or not; each one's
    # weights are its index + 1; two are chosen per round
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    value = {"a": 1, "b": 2, "c": 3}
    chosen = select_devices("reptile", list(value), 2, round_no=1, seed=0)
    (left_out,) = set(value) - set(chosen)
    # the chosen ones answer a little later, so the round is still open for the intruder
    devs = {k: fleet(k, lambda r, k=k: [(0 if k == left_out else 0.5,
                                         update_frames(k, r, value[k] * 4096))],
                     always=True) for k in value}
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="reptile",
                                            epsilon=1.0, per_round=2)
    finish(th, ck)
    # Assert: the round start listed the two; θ1 = their mean; the third one was ignored
    with Checkpoint(tmp_path / "c.db") as ck2:
        h = ck2.history()[1]
    assert devs[left_out].rounds_seen == [(1, tuple(chosen))]
    assert h.selected == chosen and h.replied == chosen
    np.testing.assert_allclose(h.weights / ONE, np.full(N, np.mean([value[d] for d in chosen])))
    assert f"update from {left_out}, not selected for round 1" in caplog.text


def test_device_going_offline_closes_the_round_early(mosquitto, fleet, tmp_path):
    # Prepare: d announces "offline" (as its last will would) instead of replying
    fleet("a", lambda r: [(0, update_frames("a", r, 4096))])
    d = fleet("d", lambda r: [])
    d.plan = lambda r: (d.set_status("offline"), [])[1]
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="reptile",
                                            epsilon=1.0, deadline=20.0)
    t0 = time.monotonic()
    finish(th, ck)
    # Assert: closed with a's reply long before the 20 s deadline
    with Checkpoint(tmp_path / "c.db") as ck2:
        h = ck2.history()[1]
    assert h.selected == ["a", "d"] and h.replied == ["a"]
    np.testing.assert_allclose(h.weights / ONE, np.full(N, 1.0))
    assert time.monotonic() - t0 < 10 and h.duration < 10


def test_broker_restart_mid_run_coordinator_reconnects_and_finishes(mosquitto, fleet,
                                                                    tmp_path, caplog):
    # Prepare: θ0 = 0, ε = 0.5, a answers 2.0: θ_r = 2·(1 − 0.5^r)
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    fleet("a", lambda r: [(0.3, update_frames("a", r, 2 * 4096))])
    db = tmp_path / "c.db"
    coord, th, stop, ck = start_coordinator(mosquitto, db, strategy="reptile", epsilon=0.5,
                                            rounds=4, deadline=2.0, attempts=5)
    # Execute: once round 1 is in, stop the broker for a second, then restart it on its port
    wait_round(db, 1)
    port = mosquitto.port
    mosquitto.stop()
    time.sleep(1.0)
    second = EmbeddedBroker(port=port).start()
    try:
        finish(th, ck, timeout=90)
        watch = GlobalWatcher(second)
        final = watch.wait_version(5, timeout=10)  # the retained global on the new broker
        watch.close()
    finally:
        stop.set()
        second.stop()
    # Assert: every round done exactly once, weights as computed by hand
    with Checkpoint(db) as ck2:
        hist = ck2.history()
    assert [(h.round, h.status) for h in hist[1:]] == [(r, "done") for r in range(1, 5)]
    for h in hist:
        np.testing.assert_allclose(h.weights / ONE, np.full(N, 2 * (1 - 0.5 ** h.round)))
    np.testing.assert_allclose(final, np.full(N, 1.875))
    assert "lost the broker" in caplog.text and "reconnected: republishing global" in caplog.text


def test_too_few_replies_retries_then_skips(mosquitto, fleet, tmp_path, caplog):
    # Prepare: one device that never answers, a round that needs one reply, 2 attempts
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    d = fleet("d", lambda r: [])
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", theta0=0.25,
                                            deadline=0.5, attempts=2)
    finish(th, ck)
    # Assert: two round starts, then the round is recorded as skipped, θ unchanged
    with Checkpoint(tmp_path / "c.db") as ck2:
        h = ck2.history()[1]
    assert h.status == "skipped" and h.replied == []
    np.testing.assert_allclose(h.weights / ONE, np.full(N, 0.25))
    assert [r for r, _ in d.rounds_seen] == [1, 1]
    assert "no reply from d (attempt 1/2)" in caplog.text
    assert "round 1: skipped after 2 attempts" in caplog.text


def test_hmac_fleet_key_rejects_unsigned_update(mosquitto, fleet, tmp_path, caplog):
    # Prepare: a signs with the fleet key, b does not
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    key = b"fleet-secret"
    fleet("a", lambda r: [(0, update_frames("a", r, 4096, key=key))])
    fleet("b", lambda r: [(0, update_frames("b", r, 5 * 4096))])
    watch = GlobalWatcher(mosquitto)
    # Execute
    coord, th, stop, ck = start_coordinator(mosquitto, tmp_path / "c.db", strategy="fedavg",
                                            deadline=1.5, key=key)
    finish(th, ck)
    # Assert: only a's 1.0 counts; the global is signed (and decodes with the key)
    with Checkpoint(tmp_path / "c.db") as ck2:
        h = ck2.history()[1]
    assert h.replied == ["a"]
    np.testing.assert_allclose(h.weights / ONE, np.full(N, 1.0))
    assert "garbage update from 'b'" in caplog.text and "unsigned frame" in caplog.text
    watch.close()


# -- the real command, killed with SIGKILL and restarted ------------------------------------

_RUNNER = """
import argparse, sys
from tinyfleet.commands import coordinator
from tinyfleet.errors import TinyFleetError
p = argparse.ArgumentParser()
coordinator.add_arguments(p)
try:
    sys.exit(coordinator.run(p.parse_args(sys.argv[1:])))
except TinyFleetError as e:
    print("tinyfleet: error:", e, file=sys.stderr)
    sys.exit(1)
"""


def coordinator_process(broker: EmbeddedBroker, db: Path, rounds: int,
                        log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", _RUNNER, "--broker", broker.address, "--fleet", FLEET,
            "--model", MODEL, "--sizes", "2-2-1", "--strategy", "reptile", "--rounds",
            str(rounds), "--deadline", "5", "--epsilon", "0.5", "--schedule", "constant",
            "--db", str(db), "--no-registry"]  # these paho stand-ins do not describe themselves
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def wait_round(db: Path, r: int, timeout: float = 30) -> None:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if db.exists():
            with Checkpoint(db) as ck:
                got = ck.resume()
            if got is not None and got[0] >= r:
                return
        time.sleep(0.1)
    raise AssertionError(f"round {r} never completed")


def test_kill_9_then_restart_resumes_from_last_completed_round(mosquitto, fleet, tmp_path):
    # Prepare: θ0 = 0; a always answers 2.0, each round 0.4 s after the start; so with
    # ε = 0.5, θ_r = 2·(1 − 0.5^r)
    db = tmp_path / "c.db"
    with Checkpoint(db) as ck:
        ck.ensure_meta(fleet=FLEET, model=MODEL, sizes="2-2-1")
        ck.save_round(0, np.zeros(N), status="init")
    fleet("a", lambda r: [(0.4, update_frames("a", r, 2 * 4096))])
    log = tmp_path / "coord.log"
    # Execute: kill -9 once round 2 is checkpointed, then restart and let it finish 5 rounds
    p1 = coordinator_process(mosquitto, db, 5, log)
    try:
        wait_round(db, 2)
        os.kill(p1.pid, signal.SIGKILL)
        p1.wait(10)
    finally:
        if p1.poll() is None:
            p1.kill()
    with Checkpoint(db) as ck:
        killed_at = ck.resume()[0]
    p2 = coordinator_process(mosquitto, db, 5, log)
    try:
        rc = p2.wait(60)
    finally:
        if p2.poll() is None:
            p2.kill()
    # Assert: every round once, continuous, each exactly θ_r; the restart said where it was
    out = log.read_text()
    assert p1.returncode == -signal.SIGKILL and rc == 0, out
    assert f"resuming from {db}: round {killed_at} completed" in out
    with Checkpoint(db) as ck:
        hist = ck.history()
    assert [h.round for h in hist] == [0, 1, 2, 3, 4, 5]
    for h in hist:
        np.testing.assert_allclose(h.weights / ONE, np.full(N, 2 * (1 - 0.5 ** h.round)),
                                   err_msg=f"round {h.round}")


def test_sigterm_stops_cleanly_mid_round(mosquitto, fleet, tmp_path):
    # Prepare: a device that never answers, so the coordinator sits in round 1
    fleet("d", lambda r: [])
    log = tmp_path / "coord.log"
    p = coordinator_process(mosquitto, tmp_path / "c.db", 3, log)
    try:
        t = time.monotonic() + 20
        while "round 1/3: started" not in log.read_text() and time.monotonic() < t:
            time.sleep(0.1)
        # Execute
        p.send_signal(signal.SIGTERM)
        rc = p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    # Assert: exit 0, said so, and the checkpoint holds only the initial round
    out = log.read_text()
    assert rc == 0, out
    assert "stopping: 0 round(s) completed, last completed round 0" in out
    with Checkpoint(tmp_path / "c.db") as ck:
        assert ck.resume()[0] == 0


def test_fresh_checkpoint_continues_above_the_version_the_fleet_holds(mosquitto, fleet,
                                                                     tmp_path, caplog):
    # Prepare: an offline board whose retained status says it holds global v7 (from an
    # earlier coordinator); a fake device that answers 2.0; a brand-new checkpoint.
    caplog.set_level(logging.INFO, logger="tinyfleet.coordinator")
    old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="old-board")
    old.connect(mosquitto.host, mosquitto.port)
    old.loop_start()
    old.publish(wire.topic_status(FLEET, "old"), json.dumps(
        {"id": "old", "state": "offline", "version": 7, "crc": 1}), qos=1,
        retain=True).wait_for_publish(5)
    watch = GlobalWatcher(mosquitto)
    a = fleet("a", lambda r: [(0, update_frames("a", r, 2 * 4096))])
    db = tmp_path / "c.db"
    # Execute: two rounds on the fresh checkpoint, then a third after a restart on it
    coord, th, stop, ck = start_coordinator(mosquitto, db, strategy="reptile", epsilon=0.5,
                                            rounds=2)
    finish(th, ck)
    coord2, th2, stop2, ck2 = start_coordinator(mosquitto, db, strategy="reptile",
                                                epsilon=0.5, rounds=3)
    finish(th2, ck2)
    # Assert: versions continue above v7 (v8 = θ0, v9 = θ1, ...), round starts are numbered
    # by the version they start from, the epoch is in the checkpoint and a plain resume
    # (the retained global is its own) keeps it.
    np.testing.assert_allclose(watch.wait_version(8), np.full(N, 0.0))
    np.testing.assert_allclose(watch.wait_version(9), np.full(N, 1.0))
    np.testing.assert_allclose(watch.wait_version(11), np.full(N, 1.75))
    assert [r for r, _ in a.rounds_seen] == [8, 9, 10]
    assert min(v for v, _ in watch.seen) == 8, [v for v, _ in watch.seen]
    with Checkpoint(db) as ck3:
        assert ck3.get_meta("epoch_base") == "7"
        assert [h.round for h in ck3.history()] == [0, 1, 2, 3]
    assert caplog.text.count("version epoch: the fleet holds global v7 (old)") == 1
    old.loop_stop()
    old.disconnect()
    watch.close()
