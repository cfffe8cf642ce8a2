"""The device agent: learn online from the local data source, take part in federated
rounds over MQTT, and only ever adopt global models that are intact, authentic and newer.

Between rounds the board keeps predicting and learning from its own stream; a round that
selects it starts from the last accepted global weights, runs k SGD steps on fresh local
samples and sends the adapted weights. main.py builds one from config.json and runs it.
"""

import gc
import json
import time
from array import array
from binascii import crc32

import datasource
import describe
from micropython import const
from mlp import MLP, zeros
from store import Store, replace
from tfshared import hmac, weights, wire

try:
    from client import Link
except ImportError as e:  # no socket module (a port without networking) or no umqtt
    Link = None
    _NO_NET = "no network stack: %s" % e

_EMA_SHIFT = const(6)  # online loss: exponential average over ~64 samples
_ERR_MAX = const(65535)  # error clamp for loss tracking: 16.0 in Q12
_POLL_MS = const(20)  # how often the MQTT socket is looked at while learning
_SAVE_FIRST_MS = const(1000)  # status.json after 1 s, then 2, 4, ... up to status_save


def log(*args):
    print(*args)


class Offline:
    """Stands in for client.Link where MQTT cannot work at all: the device learns alone."""

    up = False
    connects = 0

    def __init__(self, why):
        self.why = why

    def ensure(self):
        return False

    def poll(self):
        pass

    def publish(self, topic, msg, retain=False, qos=0):
        return False

    def close(self):
        pass


class Device:
    def __init__(self, cfg, buffers=None):
        """buffers: (weights, global) arrays of n_params each, allocated early by main.py
        (see there); None: allocate them here."""
        self.cfg = cfg
        sizes = tuple(cfg["sizes"])
        self.sizes = sizes
        gc.collect()  # big, long-lived buffers first, while the heap is in one piece
        w, glob = buffers if buffers else (None, None)
        self.net = MLP(sizes, lr_shift=cfg["lr_shift"], kernel=cfg.get("kernel", "auto"),
                       seed=cfg["seed"], weights=w)
        n = self.net.n_params
        self.n = n
        # The last accepted global model. A push is decoded straight into it: the codec
        # validates everything before it writes a single element.
        self.glob = glob if glob is not None else zeros(n)
        self.gver = 0  # version of self.glob; 0: none accepted yet
        key = cfg.get("fleet_key")
        self.key = hmac.Key(parse_key(key)) if key else None  # prepared once, reused
        self.model_id = wire.model_id(cfg["model"])
        # Reassembly buffers allocated once, sized for what each topic may carry: a
        # push declaring more than that is refused before anything is allocated for it.
        blob = weights.encoded_size(sizes, weights.DTYPE_Q12)
        self.rx_global = wire.Reassembler(blob, max_chunks=8, key=self.key)
        if not cfg["max_msg"]:  # the largest message it has to take: one global frame
            cfg["max_msg"] = blob + wire.HEADER_LEN + wire.MAC_LEN + wire.CRC_LEN
        self.rx_round = wire.Reassembler(1024, max_chunks=1, key=self.key)
        self.store = Store(cfg["state"])
        info = self.store.load(into=self.glob, sizes=sizes)
        if info is not None:
            self.gver = info.model_version
            self.net.set_weights(self.glob)
            log("store: global model v%d restored" % self.gver)
        amp, phase = cfg["amp"], cfg["phase"]
        self.data = datasource.SineTask(seed=cfg["seed"],
                                        amp=None if amp is None else int(amp * 4096),
                                        phase=None if phase is None else int(phase * 4096))
        self.drift = cfg["drift"]
        self.x = array("i", [0])
        self.y = array("i", [0])
        self.err_ema = 0  # Q16 squared error average
        self.samples = 0
        self.rounds = 0
        self.last_round = 0  # number of the last round it took part in
        self.accepted = 0
        self.rejected = 0
        self.reason = ""
        self.pending = None  # wire.RoundStart selecting this device, not yet run
        self.pending_t0 = 0
        self.dirty = False  # status changed since the last publication
        fleet, model, dev = cfg["fleet"], cfg["model"], cfg["id"]
        self.t_global = wire.topic_global(fleet, model)
        self.t_round = wire.topic_round(fleet, model)
        self.b_global = self.t_global.encode()  # umqtt hands topics over as bytes
        self.b_round = self.t_round.encode()
        self.t_status = wire.topic_status(fleet, dev)
        self.t_update = wire.topic_update(fleet, dev)
        self.t_td = wire.topic_td(fleet, dev)
        self.status_path = cfg.get("status_file")
        self.kernels = None  # kernels this port can run, found when first described
        if Link is None:
            self.link = Offline(_NO_NET)
            log("link: offline, learning alone (%s)" % _NO_NET)
        else:
            will = json.dumps({"id": dev, "state": "offline"})
            self.link = Link(cfg, self.on_msg, (self.t_global, self.t_round), self.t_status,
                             will, on_connect=self.on_connect, on_drop=self.on_drop, log=log)

    # -- messages (called from inside the MQTT client; the payload is only borrowed) ---
    def on_connect(self, link):
        self.publish_status("online")
        self.publish_description()

    def describe(self):
        """The compact self-description (device/describe.py documents its keys)."""
        if self.kernels is None:
            self.kernels = describe.kernels(self.net.kernel)
        return describe.build(self.cfg, self.sizes, self.n, self.gver, self.net.kernel,
                              self.kernels)

    def publish_description(self):
        """Retained on .../td at every connect and model change; the host expands it into
        a W3C WoT Thing Description (DESIGN §5)."""
        try:
            self.link.publish(self.t_td, json.dumps(self.describe()), retain=True)
        except MemoryError:
            gc.collect()  # the description is a nicety; the status is what counts

    def on_drop(self, topic, size, why):
        self.reject("%s message on %s (%d bytes)" % (why, _s(topic), size))

    def on_msg(self, topic, msg):
        try:
            if topic == self.b_global:
                self.on_global(msg)
            elif topic == self.b_round:
                self.on_round(msg)
        except MemoryError:
            gc.collect()
            self.reject("out of memory handling %s (%d bytes)" % (_s(topic), len(msg)))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            self.reject("bad message on %s: %s" % (_s(topic), e))

    def reject(self, reason):
        self.rejected += 1
        self.reason = reason
        log("reject:", reason)
        self.publish_status("rejected")

    def on_global(self, payload):
        """Adopt a pushed global model only if intact, authentic and newer."""
        if not len(payload):
            return  # a cleared retained message
        # CRC, HMAC, declared size, chunk layout: ValueError naming the defect.
        msg = self.rx_global.feed(payload)
        if msg is None:
            return  # more chunks to come
        self._check_model(msg)
        if msg.version == self.gver:
            return  # the retained copy of the model we have, again after a reconnect
        if msg.version < self.gver:  # replay protection (wire.check_fresh's rule)
            self.reject("stale global model v%d (have v%d): replay refused" % (
                msg.version, self.gver))
            return
        # Validates the blob fully (shape, CRC, range) before writing self.glob.
        wire.global_into(msg, self.glob, self.sizes)
        self.adopt(msg.version)

    def _check_model(self, msg):
        if msg.model_id != self.model_id:
            raise ValueError("model id %d is not %s's (%d)" % (msg.model_id,
                                                              self.cfg["model"], self.model_id))

    def adopt(self, ver):
        g = self.glob
        self.gver = ver
        self.net.set_weights(g)
        self.accepted += 1
        try:
            self.store.save(g, self.sizes, ver)  # once per model, not per step (flash wear)
        except OSError as e:  # flash full or failing: keep running on the RAM copy
            self.reason = "adopted v%d but could not persist it: %r" % (ver, e)
            log(self.reason)
        log("global: adopted v%d" % ver)
        self.publish_status("accepted")
        self.publish_description()  # it names the model version it runs

    def on_round(self, payload):
        if not len(payload):
            return
        msg = self.rx_round.feed(payload)
        if msg is None:
            return
        self._check_model(msg)
        r = wire.parse_round_start(msg)
        if r.selects(self.cfg["id"]):
            self.pending = r
            self.pending_t0 = time.ticks_ms()

    # -- a federated round ---------------------------------------------------------
    def run_round(self):
        """k SGD steps from the global weights on fresh local samples; send the result."""
        r = self.pending
        if self.gver > r.round:
            # The round starts from an older global than this board holds (a coordinator
            # behind the fleet): an update from other weights than the round's would
            # corrupt its aggregate, so sit it out and say why.
            self.pending = None
            self.reject("round %d skipped: it starts from v%d, this board holds v%d" % (
                r.round, r.round, self.gver))
            return
        if self.gver < r.round:
            # The coordinator publishes global v(r) before round r's start: until that
            # push arrives (or if it was refused), wait, learning meanwhile, up to the
            # round's deadline.
            if time.ticks_diff(time.ticks_ms(), self.pending_t0) > r.deadline_ms:
                self.pending = None
                self.reject("round %d skipped: global v%d never arrived (have v%d)" % (
                    r.round, r.round, self.gver))
            return
        self.pending = None
        net = self.net
        net.set_weights(self.glob)
        old = net.lr_shift
        net.lr_shift = r.lr_shift
        x, y, data, drift = self.x, self.y, self.data, self.drift
        err = 0
        for _ in range(r.k):
            data.read(x, y)
            err += sq_err(net.predict(x)[0], y[0])  # before the step: an honest loss
            net.train_step(x, y)
            self.samples += 1
            if drift and self.samples % drift == 0:  # round samples count for drift too
                data.drift()
        net.lr_shift = old
        self.rounds += 1
        self.last_round = r.round
        loss_q12 = (err // r.k) >> 4  # Q16 -> Q12
        gc.collect()  # the update needs ~15 KB for a moment: start from a tidy heap
        blob = weights.encode(net.weights, self.sizes, weights.DTYPE_Q12, self.gver)
        frames = wire.encode_update(self.model_id, r.round, self.cfg["id"], r.k, loss_q12,
                                    blob, key=self.key)
        blob = None
        ok = True
        for f in frames:
            ok = self.link.publish(self.t_update, f, qos=1) and ok
        log("round %d: %d steps from v%d, loss %.4f, sent %s" % (
            r.round, r.k, self.gver, loss_q12 / 4096, ok))
        self.dirty = True
        self.save_status()  # once per round

    # -- status ----------------------------------------------------------------------
    def status(self, state):
        link = self.link
        return {"id": self.cfg["id"], "state": state, "model": self.cfg["model"],
                "sizes": self.sizes, "params": self.n,
                "version": self.gver, "samples": self.samples, "rounds": self.rounds,
                "last_round": self.last_round,
                "loss": self.err_ema / (1 << 16), "kernel": self.net.kernel,
                "accepted": self.accepted, "rejected": self.rejected, "reason": self.reason,
                "net": "up" if link.up else "down: " + link.why,
                "amp": self.data.amp / 4096, "phase": self.data.phase / 4096,
                "crc": crc32(self.glob) & 0xFFFFFFFF,  # which global weights it holds
                "mem_free": gc.mem_free()}

    def save_status(self, state=None):
        """Write the status dict to status.json atomically, for `tinyfleet inspect`.

        Called once per round, on a timer (never per step: flash wear) and on exit."""
        path = self.status_path
        if not path:
            return
        if state is None:
            state = "online" if self.link.up else "offline"
        try:
            text = json.dumps(self.status(state))
            write_atomic(path, text)
        except (OSError, MemoryError) as e:  # flash full or failing: learning goes on
            gc.collect()
            log("status: not saved (%r)" % e)
            return
        log("status:", text)

    def publish_status(self, state="online"):
        self.dirty = False
        try:
            msg = json.dumps(self.status(state))
        except MemoryError:
            gc.collect()
            msg = '{"id": "%s", "state": "%s", "reason": "low memory"}' % (self.cfg["id"], state)
        self.link.publish(self.t_status, msg, retain=True)

    # -- the loop --------------------------------------------------------------------
    def learn(self):
        """One online sample: predict, track the error, learn. Allocates nothing."""
        x, y, net = self.x, self.y, self.net
        self.data.read(x, y)
        e = sq_err(net.predict(x)[0], y[0])
        self.err_ema += (e - self.err_ema) >> _EMA_SHIFT
        net.train_step(x, y)
        self.samples += 1
        if self.drift and self.samples % self.drift == 0:
            self.data.drift()  # a new task: amplitude and phase drawn afresh

    def run(self):
        """Learn and serve until max_samples (forever by default). Without a broker (or
        without any network) it keeps learning; the link retries with backoff."""
        try:
            self._run()
        except KeyboardInterrupt:  # Ctrl-C, e.g. mpremote taking over the REPL
            self.save_status("stopped")
            raise
        except Exception as e:  # a bug or a failing sensor: leave inspect the reason
            self.reason = "crashed: %r" % e
            self.save_status("crashed")
            raise
        self.save_status("stopped")
        self.publish_status("stopped")
        self.link.close()

    def _run(self):
        cfg = self.cfg
        rate = cfg.get("rate", 50)
        period = 1000 // rate if rate else 0
        every = cfg["status_every"]
        limit = cfg["max_samples"]
        save_max = cfg["status_save"] * 1000
        link = self.link
        link.ensure()
        self.save_status()
        t_poll = time.ticks_ms()
        t_next = t_poll
        t_save = t_poll
        save_gap = min(_SAVE_FIRST_MS, save_max)
        while not limit or self.samples < limit:
            self.learn()
            now = time.ticks_ms()
            if time.ticks_diff(now, t_poll) >= _POLL_MS or period:
                t_poll = now
                link.poll()
                if self.pending is not None:
                    try:
                        self.run_round()
                    except MemoryError:
                        self.pending = None
                        gc.collect()
                        self.reject("round skipped: out of memory encoding the update")
            if (every and self.samples % every == 0) or self.dirty:
                self.publish_status()
            if save_gap and time.ticks_diff(now, t_save) >= save_gap:
                t_save = now
                save_gap = min(2 * save_gap, save_max)  # soon after boot, then rarely
                self.save_status()
            if period:
                t_next = time.ticks_add(t_next, period)
                d = time.ticks_diff(t_next, time.ticks_ms())
                if d > 0:
                    time.sleep_ms(d)
                else:
                    t_next = time.ticks_ms()  # fell behind (a round): do not try to catch up


def write_atomic(path, text):
    """Replace `path` by `text` via path.tmp and a rename, as store.py does: a reader (or
    a power cut) sees the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    replace(tmp, path)


def parse_key(text):
    """Fleet key bytes from config text: 'hex:0123...' or plain text (as the host's)."""
    if text.startswith("hex:"):
        import binascii

        return binascii.unhexlify(text[4:])
    return text.encode()


def sq_err(z, y):
    """(z - y)**2 in Q16 for Q12 z, y; |z - y| clamped to 16, so it is < 2**24 and stays
    a small int on 31-bit ports."""
    e = z - y
    if e > _ERR_MAX:
        e = _ERR_MAX
    elif e < -_ERR_MAX:
        e = -_ERR_MAX
    e >>= 4  # Q8
    return e * e


def _s(b):
    try:
        return b.decode() if isinstance(b, (bytes, bytearray)) else str(b)
    except Exception:
        return repr(b)
