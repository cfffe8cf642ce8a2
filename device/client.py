"""MQTT for a device: umqtt.simple made bounded, non-blocking and self-healing.

umqtt.simple allocates each incoming payload whole, blocks without timeout (CONNACK,
SUBACK, PUBACK, the rest of a packet), never pings and never reconnects. FleetMQTT
subclasses it: every read has a timeout, a PUBLISH larger than `max_msg` is skipped in
small pieces before anything is allocated for it, payloads land in one preallocated
buffer, and keepalive pings notice a dead broker. Link adds reconnect with exponential
backoff and resubscribes, without ever blocking the learning loop for long.
"""

import socket
import struct
import time

from backoff import Backoff
from micropython import const
from umqtt.simple import MQTTClient, MQTTException

_SKIP = const(256)  # drain buffer for oversized messages
_MAX_TOPIC = const(160)


def _put_length(buf, sz):
    """MQTT's remaining length into buf[1:] (7 bits a byte); returns the index after it."""
    i = 1
    while sz > 0x7F:
        buf[i] = (sz & 0x7F) | 0x80
        sz >>= 7
        i += 1
    buf[i] = sz
    return i + 1


class Dropped(Exception):
    """Raised inside the client when an incoming message is refused; never escapes."""


class FleetMQTT(MQTTClient):
    """umqtt.simple with bounded reads. The callback gets (topic bytes, memoryview); the
    memoryview points into a shared buffer and is only valid during the call."""

    def __init__(self, client_id, server, port=1883, user=None, password=None,
                 keepalive=30, max_msg=8192, io_timeout=3.0, buf=None, skip=None):
        super().__init__(client_id, server, port=port, user=user, password=password,
                         keepalive=keepalive)
        # Pass the buffers in to keep them across reconnects (no new 4 KB block each time).
        self.max_msg = max_msg
        self.buf = buf if buf is not None else bytearray(max_msg)
        self.mv = memoryview(self.buf)
        self.skip = skip if skip is not None else bytearray(_SKIP)
        self.io_timeout = io_timeout
        self.on_drop = None  # f(topic, size, reason)
        self.acked = -1  # last PUBACK packet id
        self.subacked = -1
        self.sub_rc = 0
        self.last_tx = time.ticks_ms()
        self.last_rx = self.last_tx
        self.ping_sent = 0  # ticks of an unanswered PINGREQ, 0 when none

    # -- low level -----------------------------------------------------------------
    def _read_exact(self, mv, n):
        got = 0
        while got < n:
            r = self.sock.readinto(mv[got:n])
            if not r:  # None: timed out; 0: peer closed
                raise OSError(-2)
            got += r

    def _read(self, n):
        b = self.sock.read(n)
        if b is None or len(b) != n:
            raise OSError(-3)
        return b

    def _skip(self, n):
        mv = memoryview(self.skip)
        while n > 0:
            k = n if n < _SKIP else _SKIP
            self._read_exact(mv, k)
            n -= k

    def _recv_len(self):
        n = 0
        sh = 0
        while 1:
            b = self._read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return n
            sh += 7
            if sh > 21:  # MQTT allows at most 4 length bytes
                raise OSError(-4)

    def _write(self, data, n=None):
        if self.sock is None:
            raise OSError(-8)  # closed under us (a failed publish inside a callback)
        if n is None:
            self.sock.write(data)
        else:
            self.sock.write(data, n)
        self.last_tx = time.ticks_ms()

    def _send_str(self, s):
        self._write(struct.pack("!H", len(s)))
        self._write(s)

    # -- session ---------------------------------------------------------------------
    def connect(self, clean_session=True):
        """Like umqtt.simple's, but the socket has a timeout before anything is read."""
        self.sock = socket.socket()
        self.sock.settimeout(self.io_timeout)
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        try:
            self.sock.connect(addr)
        except OSError:
            self.sock.close()
            raise
        premsg = bytearray(b"\x10\0\0\0\0\0")
        msg = bytearray(b"\x04MQTT\x04\x02\0\0")
        sz = 10 + 2 + len(self.client_id)
        msg[6] = clean_session << 1
        if self.user is not None:
            sz += 2 + len(self.user) + 2 + len(self.pswd)
            msg[6] |= 0xC0
        if self.keepalive:
            msg[7] |= self.keepalive >> 8
            msg[8] |= self.keepalive & 0xFF
        if self.lw_topic:
            sz += 2 + len(self.lw_topic) + 2 + len(self.lw_msg)
            msg[6] |= 0x4 | (self.lw_qos & 0x1) << 3 | (self.lw_qos & 0x2) << 3
            msg[6] |= self.lw_retain << 5
        self._write(premsg, _put_length(premsg, sz) + 1)
        self._write(msg)
        self._send_str(self.client_id)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user is not None:
            self._send_str(self.user)
            self._send_str(self.pswd)
        resp = self._read(4)
        if resp[0] != 0x20 or resp[1] != 0x02:
            raise MQTTException("bad CONNACK")
        if resp[3] != 0:
            raise MQTTException(resp[3])  # 4: bad user/password, 5: not authorised
        self.last_rx = time.ticks_ms()
        self.ping_sent = 0
        return resp[2] & 1

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def disconnect(self):
        try:
            self._write(b"\xe0\0")
        finally:
            self.close()

    def ping(self):
        self._write(b"\xc0\0")
        self.ping_sent = time.ticks_ms() or 1

    def keepalive_tick(self):
        """Ping when idle for half the keepalive; OSError when the broker stopped answering."""
        if not self.keepalive:
            return
        now = time.ticks_ms()
        ka = self.keepalive * 1000
        if self.ping_sent and time.ticks_diff(now, self.ping_sent) > ka:
            raise OSError(-5)  # no PINGRESP for a whole keepalive: the link is dead
        if not self.ping_sent and time.ticks_diff(now, self.last_tx) > ka // 2:
            self.ping()

    def _wait_for(self, attr, pid, timeout_ms):
        """Process packets (callbacks included) until `attr` == pid; bounded in time."""
        t0 = time.ticks_ms()
        while getattr(self, attr) != pid:
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                raise OSError(-6)
            self.wait_msg()

    def publish(self, topic, msg, retain=False, qos=0):
        if qos not in (0, 1):
            raise ValueError("qos 0 or 1")
        pkt = bytearray(b"\x30\0\0\0")
        pkt[0] |= qos << 1 | retain
        sz = 2 + len(topic) + len(msg) + (2 if qos else 0)
        self._write(pkt, _put_length(pkt, sz))
        self._send_str(topic)
        if qos:
            self.pid = self.pid % 65535 + 1
            struct.pack_into("!H", pkt, 0, self.pid)
            self._write(pkt, 2)
        self._write(msg)
        if qos:
            self._wait_for("acked", self.pid, int(self.io_timeout * 1000))

    def subscribe(self, topic, qos=0):
        pkt = bytearray(b"\x82\0\0\0")
        self.pid = self.pid % 65535 + 1
        struct.pack_into("!BH", pkt, 1, 2 + 2 + len(topic) + 1, self.pid)
        self._write(pkt)
        self._send_str(topic)
        self._write(qos.to_bytes(1, "little"))
        self._wait_for("subacked", self.pid, int(self.io_timeout * 1000))
        if self.sub_rc == 0x80:
            raise MQTTException("subscription refused: %s" % topic)

    # -- incoming --------------------------------------------------------------------
    def wait_msg(self):
        """Read one packet if one is there (blocking up to io_timeout for its first byte
        unless the socket is non-blocking). Returns the packet type or None."""
        res = self.sock.read(1)
        self.sock.settimeout(self.io_timeout)  # the rest of a packet must come promptly
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)  # broker closed the connection
        op = res[0]
        sz = self._recv_len()
        self.last_rx = time.ticks_ms()
        kind = op & 0xF0
        if kind == 0x30:
            self._publish_in(op, sz)
            return op
        if sz > 4:  # no control packet we expect is longer
            self._skip(sz)
            return op
        body = self._read(sz) if sz else b""
        if kind == 0xD0:  # PINGRESP
            self.ping_sent = 0
        elif kind == 0x40 and sz == 2:  # PUBACK
            self.acked = body[0] << 8 | body[1]
        elif kind == 0x90 and sz == 3:  # SUBACK
            self.sub_rc = body[2]
            self.subacked = body[0] << 8 | body[1]
        return op

    def _publish_in(self, op, sz):
        if sz < 2:
            raise OSError(-7)
        tl = self._read(2)
        tl = tl[0] << 8 | tl[1]
        if tl + 2 > sz:
            raise OSError(-7)  # a length that lies: the stream is out of step
        if tl > _MAX_TOPIC:
            self._skip(tl)
            topic = b"?"
        else:
            topic = self._read(tl)
        sz -= tl + 2
        pid = 0
        if op & 6:
            p = self._read(2)
            pid = p[0] << 8 | p[1]
            sz -= 2
        if sz > self.max_msg or tl > _MAX_TOPIC:
            # Too big to hold: drain it without allocating, then say so.
            self._skip(sz)
            if self.on_drop:
                self.on_drop(topic, sz, "oversized")
        else:
            self._read_exact(self.mv, sz)
            try:
                self.cb(topic, self.mv[:sz])
            except Exception as e:  # noqa: BLE001 - a bad message must not kill the link
                if self.on_drop:
                    self.on_drop(topic, sz, "error %r" % e)
        if op & 6 == 2:
            pkt = bytearray(b"\x40\x02\0\0")
            struct.pack_into("!H", pkt, 2, pid)
            self._write(pkt)

    def check_msg(self):
        if self.sock is None:
            raise OSError(-8)
        self.sock.setblocking(False)
        return self.wait_msg()


class Link:
    """A connection that heals itself: connect, last will, subscriptions, pings and
    reconnect with backoff. `on_connect(link)` runs after every (re)connection."""

    def __init__(self, cfg, on_msg, subs, will_topic, will_msg, on_connect=None,
                 on_drop=None, log=print):
        self.cfg = cfg
        self.on_msg = on_msg
        self.subs = subs
        self.will_topic = will_topic
        self.will_msg = will_msg
        self.on_connect = on_connect
        self.on_drop = on_drop
        self.log = log
        self.mqtt = None
        self.buf = bytearray(cfg["max_msg"])  # allocated once for every session
        self.skip = bytearray(_SKIP)
        # A board without its broker learns alone: waiting up to 30 s between attempts
        # keeps the time lost in blocking connects small.
        self.backoff = Backoff(cap=30.0)
        self.next_try = time.ticks_ms()
        self.connects = 0
        self.why = "not connected yet"  # why the link is down (status reports it)

    @property
    def up(self):
        return self.mqtt is not None

    def _open(self):
        c = self.cfg
        m = FleetMQTT(c["id"], c["broker"], port=c["port"], user=c["user"],
                      password=c["password"], keepalive=c["keepalive"], max_msg=c["max_msg"],
                      buf=self.buf, skip=self.skip)
        m.set_callback(self.on_msg)
        m.on_drop = self.on_drop
        m.set_last_will(self.will_topic, self.will_msg, retain=True, qos=1)
        try:
            m.connect()
            self.mqtt = m  # publish/subscribe from here on go through this session
            for t in self.subs:
                m.subscribe(t, qos=1)
        except Exception:
            self.mqtt = None
            m.close()
            raise
        self.connects += 1
        self.why = ""
        self.backoff.reset()
        if self.on_connect:
            self.on_connect(self)

    def drop(self, why):
        if self.mqtt is not None:
            self.log("link: lost (%s)" % why)
            self.why = "lost (%s)" % why
            self.mqtt.close()
            self.mqtt = None
            self.next_try = time.ticks_add(time.ticks_ms(), int(self.backoff.delay() * 1000))

    def ensure(self):
        """Try to connect when down and the backoff delay has passed; never raises."""
        if self.mqtt is not None or time.ticks_diff(self.next_try, time.ticks_ms()) > 0:
            return self.mqtt is not None
        try:
            self._open()
            self.log("link: connected to %s:%d" % (self.cfg["broker"], self.cfg["port"]))
        except Exception as e:  # noqa: BLE001 - never let a failed connect stop learning
            delay = self.backoff.delay()
            self.next_try = time.ticks_add(time.ticks_ms(), int(delay * 1000))
            self.why = "connect failed (%r)" % e
            self.log("link: connect failed (%r), retry in %.1f s" % (e, delay))
        return self.mqtt is not None

    def poll(self, max_msgs=4):
        """Handle up to `max_msgs` waiting messages and keepalive; never blocks for long."""
        if not self.ensure():
            return
        try:
            for _ in range(max_msgs):
                if self.mqtt is None or self.mqtt.check_msg() is None:
                    break
            if self.mqtt is not None:
                self.mqtt.keepalive_tick()
        except Exception as e:  # noqa: BLE001 - whatever broke, the cure is a reconnect
            self.drop(repr(e))

    def publish(self, topic, msg, retain=False, qos=0):
        """Publish if connected; False (and a reconnect later) when the link is down."""
        if self.mqtt is None:
            return False
        try:
            self.mqtt.publish(topic, msg, retain, qos)
            return True
        except (OSError, MQTTException, IndexError) as e:
            self.drop(repr(e))
            return False

    def close(self):
        if self.mqtt is not None:
            try:
                self.mqtt.disconnect()
            except OSError:
                pass
            self.mqtt = None
