"""`tinyfleet simulate` as a user runs it: progress output, one-line user errors, and a
clean shutdown of the broker and every device process on Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tinyfleet.simulate import Progress

# The real CLI entry point (main(): dispatch, one-line errors, exit codes), with its
# table narrowed to this command so that another command's import problem cannot fail
# these tests.
CLI = ("import sys; from tinyfleet import cli; "
       "cli.COMMANDS = {'simulate': cli.COMMANDS['simulate']}; sys.exit(cli.main())")


def cli(*args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLI, "simulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def processes_under(out: Path) -> list[str]:
    """Live processes started for the run in `out`: devices (cwd under out/boards) and
    the embedded broker (its config under out/broker)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(str(out)) or str(out) in cmd):
            found.append(f"{pid} {cmd}")
    return found


def children(ppid: int) -> dict[str, str]:
    """{pid: command line} of the live child processes of `ppid`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == ppid:
            found[pid] = cmd
    return found


def test_progress_line_tty_and_plain():
    plain = io.StringIO()
    p = Progress(10, plain, every=0.0)
    p.update(3, "4/4 online")
    p.update(10, "done", force=True)
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("round   3/10 [#######") and "4/4 online" in lines[0], lines
    assert "\r" not in plain.getvalue() and len(lines) == 2

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    p = Progress(10, tty)
    p.update(1, "a")
    p.update(2, "b")
    p.close()
    text = tty.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1, repr(text)


def test_user_error_is_one_line(tmp_path: Path):
    proc = cli("--devices", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert err.strip() == "tinyfleet: error: --devices must be 1..64", err
    # Prepare: a port nobody listens on
    from tinyfleet.broker import free_port

    port = free_port()
    proc = cli("--broker", f"127.0.0.1:{port}", "--out", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert err.startswith(f"tinyfleet: error: cannot connect to the broker at 127.0.0.1:{port}"
                          ) and err.count("\n") == 1, err


def test_ctrl_c_stops_every_process(tmp_path: Path):
    # Prepare: a run far too long to finish, with its devices mid-round
    out = tmp_path / "run"
    proc = cli("--devices", "4", "--rounds", "100000", "--out", "run", cwd=tmp_path)  # relative
    log = out / "boards" / "dev00" / "device.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "round 2:" in log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no round started within 60 s"
        time.sleep(0.2)
    assert len(processes_under(out)) >= 5  # 4 devices and the broker
    workers = children(proc.pid)  # metaeval's two processes (and multiprocessing's tracker)
    assert len([c for c in workers.values() if "spawn_main" in c]) == 2, workers
    # Execute
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    # Assert
    assert proc.returncode == 130, (stdout, stderr)
    assert "tinyfleet: error" not in stderr and "Traceback" not in stderr, stderr
    assert stdout.startswith("broker 127.0.0.1:") and "round" in stdout, stdout
    assert processes_under(out) == []
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"] == []


def test_missing_umqtt_is_one_line_naming_fetch_umqtt(tmp_path: Path):
    # Prepare: a cache with the MicroPython binaries but no umqtt (a clean machine that
    # has not run tools/fetch-umqtt)
    from tinyfleet import upy

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "bin").symlink_to(upy.CACHE / "bin")
    # Execute
    proc = cli("--devices", "1", "--out", str(tmp_path / "run"),
               env={**os.environ, "TINYFLEET_CACHE": str(cache)})
    out, err = proc.communicate(timeout=60)
    # Assert: exit 1, one line that says what to run; nothing was started
    assert proc.returncode == 1, (out, err)
    assert err.startswith("tinyfleet: error: umqtt.simple") and err.count("\n") == 1, err
    assert "run tools/fetch-umqtt" in err, err
    assert not (tmp_path / "run" / "broker").exists()


def test_a_dead_evaluation_process_is_reported_not_waited_for() -> None:
    # Prepare: the evaluation beside a fleet (two spawned processes), one of them killed
    import pytest
    from tinyfleet.simulate import EvalFailed, EvalJob, SimConfig

    job = EvalJob(SimConfig(devices=2, rounds=400, eval_tasks=10))
    arith, victim, _ = job.procs[0]
    victim.kill()
    # Execute
    t0 = time.monotonic()
    with pytest.raises(EvalFailed, match=f"the {arith}-point evaluation process died"):
        job.report()
    # Assert: noticed at once (a pool would wait forever), nothing left running
    assert time.monotonic() - t0 < 10
    assert not any(proc.is_alive() for _, proc, _ in job.procs)
