"""Find the MicroPython unix port and run the real device code on it.

The board filesystem is staged exactly as `tinyfleet deploy` lays it out on a board:
``device/*.py`` at the root and ``shared/*.py`` as the package ``lib/tfshared``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import TinyFleetError

REPO = Path(__file__).resolve().parent.parent
DEVICE_DIR = REPO / "device"
SHARED_DIR = REPO / "shared"
INSTALLER = REPO / "tools" / "install-micropython"
CACHE = Path(os.environ.get("TINYFLEET_CACHE", Path.home() / ".cache" / "tinyfleet"))

# Which binary each build name means, and the env var that overrides it.
BUILDS = {"64": ("micropython", "TINYFLEET_MICROPYTHON"),
          "32": ("micropython32", "TINYFLEET_MICROPYTHON32")}


def micropython(build: str = "64", install: bool = True) -> Path:
    """Return the path of the MicroPython unix port for `build` ("64" or "32").

    Raises:
        TinyFleetError: the build is unknown, or not installed and cannot be built.
    """
    if build not in BUILDS:
        raise TinyFleetError(f"unknown MicroPython build {build!r} (choose 64 or 32)")
    name, env = BUILDS[build]
    if os.environ.get(env):
        return Path(os.environ[env])
    path = CACHE / "bin" / name
    if not os.access(path, os.X_OK) and install:
        proc = subprocess.run([str(INSTALLER)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise TinyFleetError(f"could not build MicroPython: {proc.stderr.strip()[-300:]}")
    if not os.access(path, os.X_OK):
        raise TinyFleetError(f"MicroPython {build}-bit not found at {path}; run {INSTALLER}")
    return path


def mpy_cross(install: bool = True) -> Path:
    """Return the path of mpy-cross matching the unix port build."""
    micropython("64", install=install)
    return CACHE / "bin" / "mpy-cross"


def board_files() -> list[tuple[Path, str]]:
    """(source, path on the board) for every file TinyFleet puts on a board."""
    files = [(p, p.name) for p in sorted(DEVICE_DIR.glob("*.py")) if p.name != "manifest.py"]
    files += [(p, f"lib/tfshared/{p.name}") for p in sorted(SHARED_DIR.glob("*.py"))]
    return files


def stage_board_fs(dest: Path) -> Path:
    """Copy the board's files into `dest` (a stand-in for the board's filesystem)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src, rel in board_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


def command(root: Path, script: str, build: str = "64", heapsize: str | None = None) -> list[str]:
    """The argv that runs `script` (a path relative to `root`) like a board would."""
    argv = [str(micropython(build))]
    if heapsize:
        argv += ["-X", f"heapsize={heapsize}"]
    return argv + [script]


def env_for(root: Path) -> dict[str, str]:
    """Environment so that imports resolve as on a board: root first, then root/lib."""
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{root}:{root}/lib"
    return env


def run(root: Path, script: str, build: str = "64", heapsize: str | None = None,
        args: list[str] | None = None, timeout: float = 600,
        input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `script` under MicroPython with `root` as the board filesystem (cwd).

    Raises:
        TinyFleetError: MicroPython is missing or the script timed out.
    """
    argv = command(root, script, build, heapsize) + list(args or [])
    try:
        return subprocess.run(argv, cwd=root, env=env_for(root), capture_output=True,
                              timeout=timeout, input=input_bytes)
    except subprocess.TimeoutExpired as exc:
        raise TinyFleetError(
            f"MicroPython run of {script} timed out after {timeout:.0f} s") from exc
