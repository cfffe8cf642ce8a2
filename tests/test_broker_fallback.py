"""The Python broker fallback (amqtt in a subprocess, tinyfleet.pybroker), forced with
EmbeddedBroker(kind="python") or TINYFLEET_BROKER=python: retained messages, QoS 1 and
last wills work, and a short simulation completes on it. Fails (never skips) without amqtt."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tinyfleet import broker as broker_mod
from tinyfleet.broker import EmbeddedBroker, choose_kind
from tinyfleet.errors import TinyFleetError


def require_amqtt() -> None:
    if find_spec("amqtt") is None:
        pytest.fail("amqtt is not installed: the Python broker fallback needs it "
                    "(.venv/bin/pip install amqtt)")


@pytest.fixture
def pybroker() -> Iterator[EmbeddedBroker]:
    """The Python broker on a free loopback port, stopped after the test."""
    require_amqtt()
    b = EmbeddedBroker(kind="python").start()
    try:
        yield b
    finally:
        b.stop()


class Sub:
    """A paho subscriber (callback API v2) recording (topic, payload, retain, qos); the
    constructor returns once the broker has acknowledged the subscription."""

    def __init__(self, b: EmbeddedBroker, client_id: str, topic: str) -> None:
        self.got: list[tuple[str, bytes, bool, int]] = []
        self.event = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(b.host, b.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(5), f"no SUBACK for {topic}"

    def _on_message(self, client, userdata, msg) -> None:
        self.got.append((msg.topic, msg.payload, bool(msg.retain), msg.qos))
        self.event.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(b: EmbeddedBroker, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect(b.host, b.port)
    c.loop_start()
    return c


def mqtt_str(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def test_choice_falls_back_to_python_without_mosquitto(monkeypatch: pytest.MonkeyPatch):
    # Prepare: no mosquitto anywhere, no override
    monkeypatch.delenv("TINYFLEET_BROKER", raising=False)
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    # Execute / Assert
    assert choose_kind() == "python"
    assert choose_kind("mosquitto") == "mosquitto"
    monkeypatch.setenv("TINYFLEET_BROKER", "python")
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    assert choose_kind() == "python"
    monkeypatch.setenv("TINYFLEET_BROKER", "rabbit")
    with pytest.raises(TinyFleetError, match="unknown broker kind 'rabbit'"):
        choose_kind()


def test_no_broker_at_all_is_one_line_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(broker_mod, "find_spec", lambda name: None)
    with pytest.raises(TinyFleetError, match="neither is the Python fallback amqtt") as info:
        EmbeddedBroker(kind="python").start()
    assert "\n" not in str(info.value)


def test_retained_and_qos1_round_trip_then_clean_stop(pybroker: EmbeddedBroker):
    # Prepare: a retained QoS 1 message published before the subscriber exists
    pub = connect(pybroker, "pub")
    info = pub.publish("tf/t/retained", b"\x00\x01hello", qos=1, retain=True)
    info.wait_for_publish(5)
    assert info.is_published(), "no PUBACK for the retained QoS 1 publish"
    # Execute: a late subscriber gets it, then a live QoS 1 message
    sub = Sub(pybroker, "sub", "tf/t/#")
    assert sub.event.wait(5), "retained message not delivered to a late subscriber"
    sub.event.clear()
    live = pub.publish("tf/t/live", b"x" * 3600, qos=1)
    live.wait_for_publish(5)
    assert sub.event.wait(5), "live QoS 1 message not delivered"
    # Assert
    assert sub.got == [("tf/t/retained", b"\x00\x01hello", True, 1),
                       ("tf/t/live", b"x" * 3600, False, 1)], sub.got
    assert live.is_published()
    for c in (pub, sub.client):
        c.loop_stop()
        c.disconnect()
    proc, port = pybroker.proc, pybroker.port
    assert proc is not None and pybroker.log_path.name == "pybroker.log"
    pybroker.stop()
    assert not pybroker.running and proc.returncode == 0, (
        f"broker exited {proc.returncode} on SIGTERM (expected a clean 0)")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_last_will_published_when_a_client_vanishes(pybroker: EmbeddedBroker):
    # Prepare: a watcher, and a raw MQTT 3.1.1 client with a retained QoS 1 will
    sub = Sub(pybroker, "watcher", "tf/t/dev/+/status")
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    body = (mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
            + mqtt_str("dev7") + mqtt_str("tf/t/dev/dev7/status") + mqtt_str("offline"))
    frame = bytes([0x10, len(body)]) + body
    s = socket.create_connection((pybroker.host, pybroker.port), timeout=5)
    s.sendall(frame)
    assert s.recv(4) == b"\x20\x02\x00\x00", "no CONNACK accepting the client"
    # Execute: the socket closes without a DISCONNECT
    s.close()
    # Assert
    assert sub.event.wait(5), "last will not delivered"
    assert sub.got[0] == ("tf/t/dev/dev7/status", b"offline", False, 1), sub.got
    late = Sub(pybroker, "late", "tf/t/dev/+/status")  # ...and the will was retained
    other = Sub(pybroker, "other", "tf/elsewhere")
    assert late.event.wait(5), "retained will not delivered to a late subscriber"
    time.sleep(0.5)
    # once, at the subscription's QoS; nothing to a client whose filters do not match
    # (amqtt 0.12 alone sends both a QoS 0 copy on CONNECT: tinyfleet.pybroker stops it)
    assert late.got == [("tf/t/dev/dev7/status", b"offline", True, 1)], late.got
    assert other.got == [], other.got
    for c in (sub, late, other):
        c.close()


def test_short_simulation_on_the_python_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Prepare: no --broker, the embedded broker forced to the Python one
    require_amqtt()
    from tinyfleet.simulate import SimConfig, run

    monkeypatch.setenv("TINYFLEET_BROKER", "python")
    cfg = SimConfig(devices=2, rounds=3, out=tmp_path / "run", broker=None, seed=1,
                    eval_tasks=10, eval_points=2, deadline=20,
                    evaluation=False)  # a broker test: metaeval beside it is not its concern
    log = io.StringIO()
    # Execute
    res = run(cfg, stream=log)
    # Assert: every round done by both devices, on the Python broker
    assert len(res.rounds) == 3, log.getvalue()
    assert all(r.status == "done" and len(r.replied) == 2 for r in res.rounds), res.rounds
    assert sorted(res.devices) == ["dev00", "dev01"], res.devices
    assert all(st["rounds"] == 3 and st["rejected"] == 0 for st in res.devices.values())
    broker_dir = tmp_path / "run" / "broker"
    assert (broker_dir / "pybroker.log").exists() and not (broker_dir / "mosquitto.conf").exists()
