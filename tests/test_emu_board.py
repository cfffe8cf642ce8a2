"""Board tooling against the emulated Cortex-M3 board (qemu), with the real mpremote:
deploy (incremental, atomic, full filesystem), booting into the real TinyFleet (learning
offline: the board has no network), inspect, selftest, error cases.

The board is started once for this module (its own state folder) and stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from tinyfleet import board_deploy, board_emu, board_mp, cli, upy

pytestmark = pytest.mark.emulator

SECRET = "s3cr3t-Pw!"
BOARD_CMDS = {"flash", "deploy", "inspect", "repl", "selftest", "emulate"}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state_dir = tmp_path_factory.mktemp("emuboard")
    state = board_emu.start(state_dir)
    try:
        yield state.port
    finally:
        board_emu.stop(state_dir)


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the real CLI (board commands only); return (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS",
                        {k: v for k, v in cli.COMMANDS.items() if k in BOARD_CMDS})
    monkeypatch.setenv("TF_TEST_PW", SECRET)
    monkeypatch.setenv("TF_TEST_KEY", "fleet-key-" + SECRET)

    def run(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err
    return run


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str]]:
    """A private copy of the board files (so a test can change one), used by deploy."""
    staged = []
    for src, rel in upy.board_files():
        dst = tmp_path / "src" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        staged.append((dst, rel))
    monkeypatch.setattr(upy, "board_files", lambda: list(staged))
    return staged


WIPE = """
import os
def rm(d):
    for n in os.listdir(d):
        p = (d.rstrip('/') + '/' + n)
        if os.stat(p)[0] & 0x4000:
            rm(p); os.rmdir(p)
        else:
            os.remove(p)
rm('/')
print('{"ok": 1}')
"""

HASHES = """
import os, json
r = {}
def walk(d):
    for n in os.listdir(d):
        p = (d + '/' + n) if d else n
        if os.stat(p)[0] & 0x4000: walk(p)
        else: r[p] = os.stat(p)[6]
walk('')
print(json.dumps(r))
"""


def board_files(port: str) -> dict[str, int]:
    """Every file on the board with its size."""
    return board_mp.exec_json(port, HASHES)  # type: ignore[return-value]


def deploy_args(port: str, *extra: str) -> list[str]:
    return ["deploy", "--port", port, "--device-id", "emu-1", "--broker", "127.0.0.1",
            "--password-env", "TF_TEST_PW", "--fleet-key-env", "TF_TEST_KEY", *extra]


def copied(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("  copy ")]


def test_deploy_is_incremental_and_boots(port: str, run_cli, files) -> None:
    board_mp.exec_json(port, WIPE)
    n_files = len(files) + 2  # + umqtt/simple + config.json

    rc, out, err = run_cli(*deploy_args(port))
    assert rc == 0, err
    assert len(copied(out)) == n_files, out
    assert SECRET not in out + err
    on_board = board_files(port)
    assert "main.py" in on_board and "lib/umqtt/simple.mpy" in on_board
    assert not [p for p in on_board if p.endswith(".tmp")]
    for _, rel in files:  # modules compiled, main.py kept as source
        want = rel if rel in board_deploy.SOURCE_ONLY else rel[:-3] + ".mpy"
        assert want in on_board, (want, sorted(on_board))

    rc, out, err = run_cli(*deploy_args(port))
    assert rc == 0, err
    assert copied(out) == [] and f"0 of {n_files} files to copy" in out, out

    # Change one file (main.py, still the real one): only it is copied, then the board
    # is reset and boots into the real TinyFleet.
    main_py = next(src for src, rel in files if rel == "main.py")
    main_py.write_text(main_py.read_text() + "# redeployed\n")
    rc, out, err = run_cli(*deploy_args(port))
    assert rc == 0, err
    assert copied(out) == ["main.py"], out
    assert "board reset" in out

    # The running agent, watched on its console without interrupting it: it learns
    # offline (this board has no socket module) and saves status.json 1, 2, 4 s after
    # start, each time with more samples.
    log, saved = watch_console(port, want=3, timeout=30)
    samples = [s["samples"] for s in saved]
    assert samples == sorted(set(samples)) and samples[-1] > 0, log
    assert all(s["kernel"] == "viper" and s["state"] == "offline"
               and s["net"].startswith("down: no network stack:") for s in saved), saved

    # status.json as inspect reads it: mpremote stops the agent, which saves it once more
    st = board_mp.exec_json(port, "print(open('status.json').read())")
    assert isinstance(st, dict) and st["state"] == "stopped", st
    assert st["samples"] > samples[-1] and st["kernel"] == "viper", (st, samples)
    assert st["net"].startswith("down: no network stack:"), st
    rc, out, err = run_cli("inspect", "--port", port, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert (r["samples"], r["kernel"], r["loss"], r["model_version"], r["last_round"]) == (
        st["samples"], "viper", st["loss"], 0, 0), r
    assert r["model"] == {"sizes": [1, 40, 40, 1], "version": 0, "params": 1761,
                          "file": None}, r
    assert r["tinyfleet"] and r["firmware"] == "MicroPython 1.25.0", r
    assert r["mem_free"] == st["mem_free"] and r["config"]["password"] == "***", r
    none = [k for k in ("firmware", "tinyfleet", "model", "samples", "loss", "kernel",
                        "last_round", "model_version", "state", "mem_free", "config")
            if r[k] is None]
    assert none == [], none

    # The deployed modules are the compiled ones
    r = board_mp.exec_json(port, (
        "import json, mlp, config, store, tfinspect, selftest; from tfshared import weights\n"
        "print(json.dumps([mlp.__file__, weights.__file__, config.load()['id']]))"))
    assert r[0] == "mlp.mpy" and r[2] == "emu-1", r
    assert r[1].endswith("lib/tfshared/weights.mpy"), r

    # Its self-description (what it publishes retained on .../td where it has a network)
    d = board_mp.exec_json(port, (
        "import json, config, describe\nc = config.load()\nprint(json.dumps(describe.build("
        "c, (1, 40, 40, 1), 1761, 0, 'viper', describe.kernels('viper'))))"))
    assert isinstance(d, dict), d
    assert (d["board"], d["mcu"], d["port"], d["clock"]) == (
        "mps2-an385", "Cortex-M3", "qemu", None), d
    assert d["kernels"] == ["viper", "bytecode"] and d["runtime"] == "MicroPython 1.25.0"
    assert d["flash"] == 2 * 1024 * 1024 and 0 < d["flash_free"] < d["flash"], d
    assert 100_000 < d["ram"] < 256 * 1024 and d["tinyfleet"] == r_cfg_version(port)
    board_mp.exec_json(port, RM_STATUS)


def r_cfg_version(port: str) -> str:
    return board_mp.exec_json(port, "import json; print(json.dumps(json.load("
                              "open('config.json'))['tinyfleet_version']))")  # type: ignore


RM_STATUS = """
import os
for p in ('status.json', 'status.json.tmp'):
    try: os.remove(p)
    except OSError: pass
print(1)
"""


def watch_console(port: str, want: int, timeout: float) -> tuple[str, list[dict]]:
    """Read the board's console (no keys sent, so main.py keeps running) until `want`
    "status: {...}" lines came; (console text, the statuses)."""
    import time

    text, saved = "", []
    deadline = time.monotonic() + timeout
    with serial.Serial(port, 115200, timeout=0.2) as ser:
        while len(saved) < want and time.monotonic() < deadline:
            text += ser.read(4096).decode(errors="replace")
            saved = [json.loads(line[len("status: "):]) for line in text.splitlines()
                     if line.startswith("status: {") and line.rstrip().endswith("}")]
    assert len(saved) >= want, text[-2000:]
    return text, saved


def test_config_has_secrets_from_env_and_inspect_masks_them(port: str, run_cli,
                                                            files) -> None:
    rc, out, err = run_cli(*deploy_args(port, "--no-reset", "--fleet", "lab",
                                        "--wifi-ssid", "shed"))
    assert rc == 0, err
    cfg = board_mp.exec_json(port, "print(open('config.json').read())")
    assert cfg == {"id": "emu-1", "fleet": "lab", "broker": "127.0.0.1", "port": 1883,
                   "password": SECRET, "fleet_key": "fleet-key-" + SECRET, "ssid": "shed",
                   "tinyfleet_version": cfg["tinyfleet_version"]}, cfg  # type: ignore[index]

    board_mp.exec_json(port, RM_STATUS)  # left by an earlier run of the agent
    rc, out, err = run_cli("inspect", "--port", port, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert SECRET not in out
    assert set(report) >= {"firmware", "tinyfleet", "model", "model_version", "samples",
                           "loss", "kernel", "last_round", "mem_free", "config"}
    assert report["firmware"] == "MicroPython 1.25.0"
    assert report["tinyfleet"] == cfg["tinyfleet_version"]  # type: ignore[index]
    assert report["config"]["password"] == "***" and report["config"]["fleet_key"] == "***"
    assert report["config"]["id"] == "emu-1"
    assert isinstance(report["mem_free"], int) and report["mem_free"] > 10000
    assert report["samples"] is None  # no status file until the client writes one

    rc, out, err = run_cli("inspect", "--port", port)
    assert rc == 0 and "recent loss:" in out and SECRET not in out


def test_inspect_reads_model_header_and_status(port: str, run_cli, files, tmp_path) -> None:
    blob = subprocess.run(
        [sys.executable, "-c",
         "from array import array; from tfshared import weights; import sys; "
         "sys.stdout.buffer.write(weights.encode(array('i', bytes(4 * 33)), (2, 8, 1),"
         " model_version=7))"], capture_output=True, check=True).stdout
    (tmp_path / "model.bin").write_bytes(blob)
    (tmp_path / "status.json").write_text(json.dumps(
        {"samples": 1234, "loss": 0.07, "kernel": "viper", "rounds": 5, "last_round": 9,
         "version": 7}))
    board_mp.run(port, ["cp", str(tmp_path / "model.bin"), ":model.bin", "+",
                        "cp", str(tmp_path / "status.json"), ":status.json"])
    try:
        rc, out, err = run_cli("inspect", "--port", port, "--json")
        assert rc == 0, err
        r = json.loads(out)
        assert r["model"] == {"sizes": [2, 8, 1], "version": 7, "params": 33,
                              "file": "model.bin"}
        assert (r["samples"], r["loss"], r["kernel"], r["last_round"], r["rounds"]) == (
            1234, 0.07, "viper", 9, 5)
    finally:
        board_mp.run(port, ["rm", ":model.bin", "+", "rm", ":status.json"])


def test_inspect_restarts_the_board_unless_told_not_to(port: str, run_cli, tmp_path) -> None:
    main_py = tmp_path / "main.py"
    main_py.write_text("import os\nwith open('ran.txt', 'w') as f:\n    f.write('1')\n")
    board_mp.run(port, ["cp", str(main_py), ":main.py", "+", "exec",
                        "import os\ntry: os.remove('ran.txt')\nexcept OSError: pass"])

    assert run_cli("inspect", "--port", port, "--no-restart")[0] == 0
    assert board_mp.exec_json(port, "import os; print(int('ran.txt' in os.listdir()))") == 0

    assert run_cli("inspect", "--port", port)[0] == 0  # reads, then resets: main.py runs
    assert board_mp.exec_json(port, "import os; print(int('ran.txt' in os.listdir()))") == 1
    board_mp.run(port, ["rm", ":ran.txt", "+", "rm", ":main.py"])


def test_selftest_bit_exact_and_allocation_free(port: str, run_cli, files) -> None:
    rc, out, err = run_cli(*deploy_args(port, "--no-reset"))
    assert rc == 0, err

    rc, out, err = run_cli("selftest", "--port", port, "--json")

    assert rc == 0, out + err
    answers = json.loads(out.splitlines()[0])
    ran = {(a["case"], r["kernel"]): r for a in answers for r in a["results"]
           if r["available"]}
    # The 32-bit board runs viper and bytecode (no ulab in this firmware).
    assert {k for _, k in ran} >= {"viper", "bytecode"}, ran
    for key, r in ran.items():
        assert r["bit_exact"] and r["alloc_per_step"] == 0, (key, r)
        assert r["us_per_step"] > 0


@pytest.fixture
def full_board(tmp_path: Path) -> Iterator[str]:
    """A second emulated board whose filesystem holds an old main.py and is nearly full."""
    old = tmp_path / "old_main.py"
    old.write_text("print('old main')\n")
    image = board_emu.make_fs_image(tmp_path / "fs.img", {"main.py": old},
                                    {"junk.bin": 2_040_000})
    state = board_emu.start(tmp_path / "run", fs_image=image)
    try:
        yield state.port
    finally:
        board_emu.stop(tmp_path / "run")


def test_full_filesystem_is_refused_and_nothing_changes(full_board: str, run_cli, files,
                                                        monkeypatch) -> None:
    before = board_files(full_board)
    assert set(before) == {"main.py", "junk.bin"}, before

    rc, out, err = run_cli(*deploy_args(full_board))

    assert rc == 1
    assert f"the board's filesystem on {full_board} is full" in err, err
    assert err.count("\n") == 1, err
    assert board_files(full_board) == before

    # Even when the space check is fooled, a transfer that hits ENOSPC leaves the old
    # files in place and removes its temp files.
    monkeypatch.setattr(board_deploy, "check_space", lambda plan, port: None)
    rc, out, err = run_cli(*deploy_args(full_board))
    assert rc == 1
    assert "is full" in err and err.count("\n") == 1, err
    assert board_files(full_board) == before
    assert board_mp.exec_json(full_board, "print(repr(open('main.py').read()))") == \
        "print('old main')\n"


def test_dry_run_changes_nothing(port: str, run_cli, files) -> None:
    main_py = next(src for src, rel in files if rel == "main.py")
    main_py.write_text("print('dry')\n")
    before = board_files(port)
    rc, out, err = run_cli(*deploy_args(port, "--dry-run"))
    assert rc == 0, err
    assert "  would copy main.py" in out and SECRET not in out
    assert board_files(port) == before


def test_board_without_tinyfleet(run_cli, tmp_path) -> None:
    state = board_emu.start(tmp_path / "run")  # a fresh board: empty filesystem
    try:
        rc, out, err = run_cli("inspect", "--port", state.port)
        assert rc == 1 and "TinyFleet is not deployed on" in err and err.count("\n") == 1
        rc, out, err = run_cli("selftest", "--port", state.port)
        assert rc == 1 and "run tinyfleet deploy first" in err and err.count("\n") == 1
    finally:
        board_emu.stop(tmp_path / "run")


def test_busy_port(port: str, run_cli) -> None:
    with serial.Serial(port, exclusive=True):
        rc, out, err = run_cli("inspect", "--port", port)
    assert rc == 1
    assert f"port {port} is busy" in err and err.count("\n") == 1, err


def test_no_board_on_port(run_cli) -> None:
    rc, out, err = run_cli("inspect", "--port", "/dev/ttyNOPE9")
    assert rc == 1
    assert err == "tinyfleet: error: no board on /dev/ttyNOPE9: no such device\n"


def test_port_without_micropython(run_cli) -> None:
    # A pty nobody answers on: the port exists but no REPL replies.
    leader, follower = os.openpty()
    try:
        rc, out, err = run_cli("selftest", "--port", os.ttyname(follower))
    finally:
        os.close(leader)
        os.close(follower)
    assert rc == 1
    assert "no answer from" in err and "no MicroPython REPL" in err, err
    assert err.count("\n") == 1, err


def test_emulate_start_status_stop(run_cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TINYFLEET_EMU_RUN", str(tmp_path))
    rc, out, err = run_cli("emulate", "status")
    assert (rc, out) == (1, "not running\n")
    rc, out, err = run_cli("emulate", "start")
    try:
        assert rc == 0, err
        pty = out.strip()
        assert pty.startswith("/dev/pts/")
        assert run_cli("emulate", "start")[1].strip() == pty  # idempotent
        rc, out, err = run_cli("emulate", "status", "--json")
        state = json.loads(out)
        assert rc == 0 and state["port"] == pty
        assert board_mp.exec_json(pty, "print(1 + 2)") == 3
    finally:
        rc, out, err = run_cli("emulate", "stop")
    assert rc == 0 and "stopped emulated board" in out
    assert run_cli("emulate", "stop")[1] == "emulated board was not running\n"
    assert run_cli("emulate", "status")[0] == 1
