"""The embedded Mosquitto broker (the `mosquitto` fixture is in conftest.py)."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from tinyfleet.broker import EmbeddedBroker, parse_broker, render_config
from tinyfleet.errors import TinyFleetError


def connect(broker: EmbeddedBroker, client_id: str) -> mqtt.Client:
    """A connected paho client (callback API v2) with its network loop running."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_parse_broker_and_config():
    assert parse_broker("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker("mqtt.local") == ("mqtt.local", 1883)
    with pytest.raises(TinyFleetError, match="port"):
        parse_broker("host:x")
    conf = render_config(4242)
    assert "listener 4242 127.0.0.1" in conf
    assert "max_queued_messages 100000" in conf and "persistence false" in conf


def test_broker_starts_relays_retained_and_stops(mosquitto: EmbeddedBroker):
    # Prepare: a retained message published before the subscriber exists
    pub = connect(mosquitto, "pub")
    pub.publish("tf/t/retained", b"\x00\x01hello", qos=1, retain=True).wait_for_publish(5)
    got: list[tuple[str, bytes, bool]] = []
    done = threading.Event()

    def on_message(client, userdata, msg):
        got.append((msg.topic, msg.payload, bool(msg.retain)))
        done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub")
    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("tf/t/#", qos=1)
    sub.loop_start()
    # Execute
    assert done.wait(5), "no message from the broker"
    # Assert
    assert got[0] == ("tf/t/retained", b"\x00\x01hello", True)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _burst(broker: EmbeddedBroker, n: int) -> int:
    """Publish n QoS 1 messages of 3.6 KB to a subscriber that is blocked at first; return
    how many it received once delivery stops making progress."""
    received = 0
    gate = threading.Event()

    def on_message(client, userdata, msg):
        nonlocal received
        gate.wait(10)
        received += 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="slow-sub")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("tf/burst", qos=1)
    sub.loop_start()
    time.sleep(0.2)
    pub = connect(broker, "burst-pub")
    infos = [pub.publish("tf/burst", bytes(3600), qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    gate.set()
    last, still = -1, time.monotonic()
    while received < n and time.monotonic() - still < 3:
        if received != last:
            last, still = received, time.monotonic()
        time.sleep(0.05)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return received


def test_burst_beyond_default_queue_limit_is_delivered_whole(mosquitto: EmbeddedBroker):
    # Prepare / Execute: 3,000 messages queued for one slow subscriber
    got = _burst(mosquitto, 3000)
    # Assert: the fleet config (max_queued_messages 100000) delivers them all
    assert got == 3000, f"only {got} of 3000 messages delivered"


@pytest.mark.parametrize("mosquitto", [1000], indirect=True)
def test_burst_with_mosquitto_default_queue_limit_drops(mosquitto: EmbeddedBroker):
    # The control for the test above: Mosquitto's default limit loses messages
    got = _burst(mosquitto, 3000)
    assert got < 3000, "expected drops with max_queued_messages 1000"


def test_missing_mosquitto_is_one_line_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYFLEET_MOSQUITTO", "/nonexistent/mosquitto")
    with pytest.raises(TinyFleetError, match="mosquitto not found") as info:
        EmbeddedBroker().start()
    assert "\n" not in str(info.value)
