"""All board I/O goes through the real `mpremote` (run as a subprocess), never a raw REPL
of our own; this module turns its failures into one-line TinyFleet errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .errors import TinyFleetError

# Seconds one mpremote invocation may take before we call the board hung.
DEFAULT_TIMEOUT = 120.0
# mpremote waits forever for a port that never answers; a first call is cut short.
PROBE_TIMEOUT = 15.0


def argv(port: str, *commands: str) -> list[str]:
    """The argv of `mpremote connect PORT commands...` (chain commands with "+")."""
    return [sys.executable, "-m", "mpremote", "connect", port, *commands]


def check_port(port: str) -> None:
    """Fail early and clearly when `port` is not a device path that exists.

    Raises:
        TinyFleetError: no such device.
    """
    if "://" in port:  # pyserial URL (rfc2217://, socket://): let mpremote try it
        return
    if not os.path.exists(port):
        raise TinyFleetError(f"no board on {port}: no such device")


def explain(port: str, output: str) -> str:
    """One line saying what went wrong, from mpremote's stdout+stderr."""
    text = output.strip()
    if "failed to access" in text:
        if not os.path.exists(port):
            return f"no board on {port}: no such device"
        return f"port {port} is busy (another program has it open) or not accessible"
    if "could not enter raw repl" in text or "timeout waiting for" in text:
        return f"no MicroPython REPL answering on {port} (is a board there, running MicroPython?)"
    if ("ENOSPC" in text or "[Errno 28]" in text or "OSError: 28" in text
            or "No space left on device" in text):
        return f"the board's filesystem on {port} is full"
    lines = [line for line in text.splitlines() if line.strip()]
    return f"mpremote failed on {port}: {lines[-1] if lines else 'no output'}"


def run(port: str, commands: Sequence[str], timeout: float = DEFAULT_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `mpremote connect PORT commands...`; return the finished process.

    Raises:
        TinyFleetError: the port is missing or busy, the board does not answer, or the
            command failed (with `check`).
    """
    check_port(port)
    try:
        proc = subprocess.run(argv(port, *commands), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise TinyFleetError(f"no answer from {port} within {timeout:.0f} s (no MicroPython "
                             "REPL there, or the board hung)") from exc
    if check and proc.returncode != 0:
        raise TinyFleetError(explain(port, proc.stdout + "\n" + proc.stderr))
    return proc


def exec_json(port: str, code: str, timeout: float = DEFAULT_TIMEOUT,
              after: Sequence[str] = ()) -> object:
    """Run `code` on the board (then the mpremote commands `after`, e.g. ["reset"]); the
    last line `code` prints is JSON, returned decoded.

    Raises:
        TinyFleetError: mpremote failed, or the code raised or printed no JSON.
    """
    proc = run(port, ["exec", code, *(["+", *after] if after else [])], timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    raise TinyFleetError(explain(port, proc.stdout + "\n" + proc.stderr))


def exec_device(port: str, module: str, code: str, timeout: float = DEFAULT_TIMEOUT,
                after: Sequence[str] = ()) -> dict[str, Any]:
    """exec_json of `code`, which imports the device module `module` and prints a JSON
    object; a board without that module gets the one-line "not deployed" error.

    Raises:
        TinyFleetError: not deployed, mpremote failed, or the answer is not a JSON object.
    """
    try:
        answer = exec_json(port, code, timeout=timeout, after=after)
    except TinyFleetError as exc:
        if f"no module named '{module}'" in str(exc).lower():
            raise TinyFleetError(f"TinyFleet is not deployed on {port} (no {module} module); "
                                 "run tinyfleet deploy first") from exc
        raise
    if not isinstance(answer, dict):
        raise TinyFleetError(f"unexpected {module} answer from {port}")
    return answer


def ensure_repl(port: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Check quickly that a MicroPython REPL answers on `port`.

    Raises:
        TinyFleetError: no such device, busy, or nothing answers within `timeout`.
    """
    run(port, ["exec", "pass"], timeout=timeout)


def interactive(port: str, commands: Sequence[str]) -> int:
    """Run mpremote attached to this terminal (REPL); return its exit code.

    Raises:
        TinyFleetError: no such device.
    """
    check_port(port)
    return subprocess.call(argv(port, *commands))
