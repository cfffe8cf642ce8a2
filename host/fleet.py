"""A simulated fleet: N real MicroPython unix processes running the board code.

Each device gets its own staged board filesystem (device/*.py at the root, shared/ as
lib/tfshared, umqtt.simple as lib/umqtt, a config.json) and runs main.py under
`micropython -X heapsize=...` so it has no more RAM than a board would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import upy
from .errors import TinyFleetError

FETCH_UMQTT = upy.REPO / "tools" / "fetch-umqtt"
UMQTT = upy.CACHE / "umqtt" / "umqtt" / "simple.py"

# Heap a device gets by default: a board's RAM. The 32-bit build is the board-like one
# (31-bit small ints, 4-byte pointers); the 64-bit build needs about twice the heap for
# the same objects.
HEAPSIZE = {"32": "128k", "64": "256k"}


def umqtt_source(install: bool = True) -> Path:
    """Path of the vendored umqtt/simple.py, fetched by tools/fetch-umqtt when missing.

    Raises:
        TinyFleetError: it is missing and could not be fetched.
    """
    if UMQTT.is_file() and UMQTT.stat().st_size > 0:
        return UMQTT
    if install:
        proc = subprocess.run([str(FETCH_UMQTT)], capture_output=True, text=True)
        if proc.returncode == 0 and UMQTT.is_file():
            return UMQTT
        raise TinyFleetError(f"could not fetch umqtt.simple: {proc.stderr.strip()[-300:]}")
    raise TinyFleetError(f"umqtt.simple (for the simulated boards) not found at {UMQTT}; "
                         f"run tools/fetch-umqtt (tools/bootstrap does)")


# mpy-cross -march for the native (viper) code of each unix build.
MARCH = {"32": "x86", "64": "x64"}
# Files a board runs from source: main.py is what MicroPython executes at boot.
SOURCE_ONLY = {"main.py", "boot.py"}


def compile_mpy(root: Path, build: str) -> None:
    """Precompile every module under `root` except main.py, as a deploy does.

    On a 128 KB heap this matters: compiling ~45 KB of source at import leaves the heap
    in small pieces, and the model's 7 KB arrays then no longer fit.

    Raises:
        TinyFleetError: mpy-cross fails on a module.
    """
    cross = upy.mpy_cross()
    for src in sorted(root.rglob("*.py")):
        if src.name in SOURCE_ONLY and src.parent == root:
            continue
        proc = subprocess.run([str(cross), f"-march={MARCH[build]}", "-o",
                               str(src.with_suffix(".mpy")), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise TinyFleetError(f"mpy-cross {src.name}: {proc.stderr.strip()[-300:]}")
        src.unlink()


def stage_device(root: Path, config: dict[str, Any], build: str = "32",
                 mpy: bool = True) -> Path:
    """Stage a board filesystem for one device at `root`, with `config` as config.json
    and umqtt.simple in lib/; modules precompiled to .mpy for `build` unless mpy=False."""
    upy.stage_board_fs(root)
    target = root / "lib" / "umqtt" / "simple.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(umqtt_source(), target)
    if mpy:
        compile_mpy(root, build)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    return root


@dataclass
class Device:
    """One simulated board: its config, filesystem and process."""

    id: str
    root: Path
    config: dict[str, Any]
    build: str
    heapsize: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "device.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start main.py; output goes to device.log in the device's directory."""
        argv = upy.command(self.root, "main.py", self.build, self.heapsize)
        with open(self.log_path, "ab") as log:
            # A session of its own: Ctrl-C reaches the host, which then stops devices
            # in order instead of every process dying at once mid-write.
            self.proc = subprocess.Popen(argv, cwd=self.root, env=upy.env_for(self.root),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; return the exit code (idempotent)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Fleet:
    """N devices; a context manager that always stops every process it started."""

    def __init__(self, workdir: Path, build: str = "32", heapsize: str | None = None) -> None:
        if build not in HEAPSIZE:
            raise TinyFleetError(f"unknown MicroPython build {build!r} (choose 64 or 32)")
        upy.micropython(build)  # fail early, with a clear message, if it is missing
        self.workdir = Path(workdir).resolve()  # devices run with cwd = their own root
        self.build = build
        self.heapsize = heapsize or HEAPSIZE[build]
        self.devices: list[Device] = []

    def add(self, config: dict[str, Any]) -> Device:
        """Stage (not start) a device whose config.json is `config` (needs an "id")."""
        dev_id = str(config["id"])
        root = stage_device(self.workdir / dev_id, config, self.build)
        dev = Device(dev_id, root, config, self.build, self.heapsize)
        self.devices.append(dev)
        return dev

    def start(self) -> None:
        for dev in self.devices:
            dev.start()

    def stop(self) -> None:
        """Stop all devices: SIGTERM to all first, then wait (so shutdown is parallel)."""
        for dev in self.devices:
            if dev.running:
                assert dev.proc is not None
                try:
                    os.killpg(dev.proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 3.0
        for dev in self.devices:
            dev.stop(timeout=max(0.1, deadline - time.monotonic()))

    def dead(self) -> list[Device]:
        """Devices whose process has exited."""
        return [d for d in self.devices if d.proc is not None and d.proc.poll() is not None]

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Watcher:
    """A paho subscriber that records every message on `topics` and lets a caller wait
    for one matching a predicate (tests and `tinyfleet simulate` watch devices with it)."""

    def __init__(self, host: str, port: int, topics: list[str], client_id: str = "tf-watch",
                 timeout: float = 10.0) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: [c.subscribe(t, qos=1)
                                                               for t in topics]
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        try:
            self.client.connect(host, port)
        except OSError as exc:
            raise TinyFleetError(f"cannot connect to the broker at {host}:{port}: "
                                 f"{exc.strerror or exc}") from None
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TinyFleetError(f"could not subscribe to the broker at {host}:{port}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 10.0,
                 start: int = 0) -> tuple[str, bytes, bool] | None:
        """First message from index `start` on with pred(topic, payload) true, or None."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.messages):
                    m = self.messages[i]
                    i += 1
                    try:
                        if pred(m[0], m[1]):
                            return m
                    except ValueError:  # e.g. a payload that is not JSON
                        pass
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def mark(self) -> int:
        """Index to pass as `start` to only see messages from now on."""
        with self._cond:
            return len(self.messages)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False,
                qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
