"""An emulated board for the serial tooling: MicroPython's qemu port (Cortex-M3,
MPS2-AN385) plus tools/emuboard/qemu-tooling.patch, with its UART on a pty.

Built from the MicroPython 1.25.0 source that tools/install-micropython fetched from
Debian's source package, with Debian's Arm toolchain and qemu; cached under
~/.cache/tinyfleet/emuboard (a second start is instant).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import board_mp, upy
from .errors import TinyFleetError
from .upy import CACHE, INSTALLER, REPO

PATCH = REPO / "tools" / "emuboard" / "qemu-tooling.patch"
MKFSIMG = REPO / "tools" / "emuboard" / "mkfsimg.py"
EMU_CACHE = CACHE / "emuboard"
BOARD = "MPS2_AN385_TOOLING"
HEAP = 143360  # MICROPY_HEAP_SIZE, as upstream's MPS2_AN385
# Debian packages the build and the emulator need (also listed for tools/bootstrap).
APT_PACKAGES = ["gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm", "make"]
# Parts of the MicroPython tree the qemu port does not need (the other ports are 100 MB).
_SKIP_PARTS = {"ports", "docs", "examples", "tests"}


@dataclass
class BoardState:
    """What `emulate start` records: enough for `status`/`stop` and for tests."""
    pid: int
    port: str
    elf: str
    log: str
    started: float


def state_file(state_dir: Path | None = None) -> Path:
    """Where the running board is recorded ($TINYFLEET_EMU_RUN overrides the folder)."""
    default = Path(os.environ.get("TINYFLEET_EMU_RUN", EMU_CACHE / "run"))
    return (state_dir or default) / "board.json"


def _patch_id() -> str:
    return hashlib.sha256(PATCH.read_bytes()).hexdigest()[:10]


def _source() -> Path:
    """The pristine MicroPython source tree (fetched by tools/install-micropython)."""
    def find() -> Path | None:
        for d in sorted((CACHE / "src").glob("micropython-*/")):
            if (d / "ports" / "qemu" / "Makefile").is_file():
                return d
        return None
    src = find()
    if src is None:
        proc = subprocess.run([str(INSTALLER)], capture_output=True, text=True)
        src = find()
        if src is None:
            raise TinyFleetError("MicroPython source not found under "
                                 f"{CACHE / 'src'}: {proc.stderr.strip()[-200:]}")
    return src


def _ensure_tools() -> None:
    """apt-get install the toolchain and qemu when they are missing."""
    missing = [p for p in APT_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        cmd = ["sudo", *cmd]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise TinyFleetError(f"could not install {' '.join(missing)}: "
                             f"{proc.stderr.strip().splitlines()[-1:]}")


def _tree() -> Path:
    """A patched copy of the MicroPython tree, one per patch version."""
    tree = EMU_CACHE / f"mp-{_patch_id()}"
    if (tree / ".patched").is_file():
        return tree
    src = _source()
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    parts = [p.name for p in src.iterdir() if p.is_dir() and p.name not in _SKIP_PARTS]
    for part in [*parts, "ports/qemu"]:
        shutil.copytree(src / part, tmp / part, symlinks=True,
                        ignore=shutil.ignore_patterns("build", "build-*"))
    proc = subprocess.run(["patch", "-p1", "-s", "-i", str(PATCH)], cwd=tmp,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise TinyFleetError(f"{PATCH.name} does not apply to {src}: "
                             f"{(proc.stdout + proc.stderr).strip()[-200:]}")
    (tmp / ".patched").write_text(str(src) + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    tmp.rename(tree)
    return tree


def firmware(build: bool = True) -> Path:
    """Path of the emulated board's firmware.elf, building it first if needed.

    Raises:
        TinyFleetError: tools missing and not installable, or the build failed.
    """
    tree = EMU_CACHE / f"mp-{_patch_id()}"
    build_name = f"build-{BOARD}-h{HEAP}"
    elf = tree / "ports" / "qemu" / build_name / "firmware.elf"
    if elf.is_file() or not build:
        return elf
    _ensure_tools()
    tree = _tree()
    jobs = str(os.cpu_count() or 1)
    log = EMU_CACHE / f"build-{_patch_id()}.log"
    print(f"building the emulated board ({BOARD}, about a minute; log {log})",
          file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k != "VARIANT"}  # make reads VARIANT
    with log.open("w") as out:
        for args in (["make", "-C", str(tree / "mpy-cross"), "-j", jobs],
                     ["make", "-C", str(tree / "ports" / "qemu"), "-j", jobs,
                      f"BOARD={BOARD}", f"BUILD={build_name}", f"MICROPY_HEAP_SIZE={HEAP}"]):
            if subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
                raise TinyFleetError(f"emulated board build failed, see {log}")
    return elf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(state_dir: Path | None = None) -> BoardState | None:
    """The running board, or None (a stale state file is removed)."""
    path = state_file(state_dir)
    try:
        state = BoardState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(state.pid) and _is_qemu(state.pid):
        return state
    path.unlink(missing_ok=True)
    return None


def _is_qemu(pid: int) -> bool:
    try:
        return b"qemu-system-arm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


def make_fs_image(out: Path, files: dict[str, Path] | None = None,
                  fill: dict[str, int] | None = None) -> Path:
    """A LittleFS2 image of the board's RAM disk holding `files` (board path -> host file)
    and `fill` (board path -> size of a zero-filled file), built with the unix port.

    Raises:
        TinyFleetError: the files do not fit or MicroPython is missing.
    """
    specs = [f"{src}:{dst}" for dst, src in (files or {}).items()]
    specs += [f"@fill:{dst}:{n}" for dst, n in (fill or {}).items()]
    proc = subprocess.run([str(upy.micropython("64")), "-X", "heapsize=8M", str(MKFSIMG),
                           str(out), *specs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TinyFleetError(f"could not build {out.name}: "
                             f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
    return out


def start(state_dir: Path | None = None, timeout: float = 30.0,
          fs_image: Path | None = None) -> BoardState:
    """Start the emulated board (building it if needed); idempotent. `fs_image` preloads
    the RAM-disk filesystem (see make_fs_image); otherwise the board formats an empty one.

    Raises:
        TinyFleetError: build failed, qemu missing, or the REPL never answered.
    """
    running = status(state_dir)
    if running:
        return running
    elf = firmware()
    if shutil.which("qemu-system-arm") is None:
        _ensure_tools()
    sfile = state_file(state_dir)
    sfile.parent.mkdir(parents=True, exist_ok=True)
    log = sfile.with_suffix(".log")
    extra: list[str] = []
    if fs_image is not None:
        if not fs_image.is_file():
            raise TinyFleetError(f"filesystem image {fs_image} not found")
        extra = ["-device", f"loader,file={fs_image},addr=0x20000000,force-raw=on"]
    with log.open("wb") as out:
        # As `make run` in ports/qemu, but the UART on a pty instead of stdio.
        proc = subprocess.Popen(
            ["qemu-system-arm", "-machine", "mps2-an385", "-nographic", "-monitor", "null",
             "-semihosting", "-serial", "pty", "-kernel", str(elf), *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    port = None
    deadline = time.monotonic() + timeout
    while port is None and time.monotonic() < deadline:
        m = re.search(r"/dev/pts/\d+", log.read_text(errors="replace"))
        if m:
            port = m.group(0)
        elif proc.poll() is not None:
            raise TinyFleetError(f"qemu exited: {log.read_text(errors='replace').strip()[-200:]}")
        else:
            time.sleep(0.05)
    if port is None:
        _kill(proc.pid)
        raise TinyFleetError(f"qemu printed no pty within {timeout:.0f} s (log {log})")
    state = BoardState(pid=proc.pid, port=port, elf=str(elf), log=str(log), started=time.time())
    tmp = sfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(sfile)
    while True:  # wait until the REPL answers
        try:
            board_mp.run(port, ["exec", "pass"], timeout=5)
            return state
        except TinyFleetError as exc:
            if time.monotonic() > deadline:
                stop(state_dir)
                raise TinyFleetError(f"emulated board on {port} did not answer: {exc}") from exc
            time.sleep(0.3)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    try:  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(state_dir: Path | None = None) -> BoardState | None:
    """Stop the board started by `start`; return what was stopped (None: nothing ran)."""
    state = status(state_dir)
    if state:
        _kill(state.pid)
    state_file(state_dir).unlink(missing_ok=True)
    return state
