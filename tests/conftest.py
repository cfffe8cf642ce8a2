"""Shared fixtures: the real MicroPython unix port (64- and 32-bit builds) and a staged
board filesystem holding the real device/ and shared/ code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tinyfleet import upy
from tinyfleet.broker import EmbeddedBroker, find_mosquitto


@pytest.fixture(params=["64", "32"], ids=["upy64", "upy32"])
def build(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both builds; the 32-bit one has 31-bit small ints
    like ESP32/RP2040."""
    upy.micropython(request.param)
    return request.param


@pytest.fixture
def board_root(tmp_path: Path) -> Path:
    """A fresh board filesystem with TinyFleet's device and shared code on it."""
    return upy.stage_board_fs(tmp_path / "board")


class UpyRunner:
    """Runs MicroPython scripts on a staged board filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, script: str, build: str = "64", heapsize: str | None = None,
            args: list[str] | None = None, timeout: float = 600,
            input_bytes: bytes | None = None) -> str:
        """Run `script` (source text); return stdout, fail the test on a non-zero exit."""
        path = self.root / "_test_script.py"
        path.write_text(script)
        proc = upy.run(self.root, path.name, build=build, heapsize=heapsize, args=args,
                       timeout=timeout, input_bytes=input_bytes)
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            pytest.fail(f"MicroPython ({build}-bit) exited {proc.returncode}:\n{out}\n{err}")
        return out

    def run_json(self, script: str, **kwargs: object) -> object:
        """Run `script`; its last stdout line is JSON, returned decoded."""
        out = self.run(script, **kwargs)  # type: ignore[arg-type]
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, f"script printed nothing: {out!r}"
        return json.loads(lines[-1])


@pytest.fixture
def upy_runner(board_root: Path) -> UpyRunner:
    return UpyRunner(board_root)


@pytest.fixture(params=["cpython", "64", "32"], ids=["cpython", "upy64", "upy32"])
def run_json(request: pytest.FixtureRequest, board_root: Path, upy_runner: UpyRunner):
    """Shared code runs unchanged on CPython and MicroPython: each test using this runs a
    script (cwd = the staged board root) on CPython and on both MicroPython builds, and
    gets its last stdout line decoded as JSON."""
    if request.param == "cpython":
        def run(script: str) -> object:
            proc = subprocess.run([sys.executable, "-c", script], cwd=board_root,
                                  capture_output=True, text=True, timeout=120,
                                  env={"PYTHONPATH": str(board_root)})
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout.strip().splitlines()[-1])
        return run
    return lambda script: upy_runner.run_json(script, build=request.param)


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """A real Mosquitto on a free loopback port, stopped after the test.

    Parametrize indirectly with an int to set its per-client queue limit
    (max_queued_messages; default 100,000, as the coordinator's broker config).
    """
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (tools/bootstrap installs it)")
    broker = EmbeddedBroker(max_queued=getattr(request, "param", 100_000)).start()
    try:
        yield broker
    finally:
        broker.stop()
