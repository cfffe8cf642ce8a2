"""`tinyfleet flash`: MicroPython firmware onto ESP32-family boards (through esptool) and
RP2040/RP2350 boards (a .uf2 copied to the BOOTSEL drive).

The firmware file is checked before anything on the board is erased: an ESP image must
start with the image magic 0xE9 and name the chip in its extended header; a UF2 file
must consist of whole 512-byte blocks with all three magics and the right family id.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import TinyFleetError

# Chip -> (flash offset of MicroPython's combined firmware .bin, image header chip id).
# Offsets as in micropython.org/download; chip ids from esptool (ESP_IMAGE chip_id).
ESP_CHIPS: dict[str, tuple[int, int]] = {
    "esp32": (0x1000, 0x0000),
    "esp32s2": (0x1000, 0x0002),
    "esp32c3": (0x0, 0x0005),
    "esp32s3": (0x0, 0x0009),
    "esp32c2": (0x0, 0x000C),
    "esp32c6": (0x0, 0x000D),
    "esp32h2": (0x0, 0x0010),
    "esp32p4": (0x2000, 0x0012),
}
ESP_IMAGE_MAGIC = 0xE9

UF2_MAGIC_START0 = 0x0A324655
UF2_MAGIC_START1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_FLAG_FAMILY = 0x00002000
UF2_FLAG_NOT_MAIN_FLASH = 0x00000001
# Chip -> UF2 family ids it accepts (github.com/microsoft/uf2 utils/uf2families.json).
UF2_FAMILIES: dict[str, set[int]] = {
    "rp2040": {0xE48BFF56},
    "rp2350": {0xE48BFF57, 0xE48BFF59, 0xE48BFF5A, 0xE48BFF5B},
}
# What INFO_UF2.TXT says on each chip's BOOTSEL drive.
UF2_BOARD_IDS = {"rp2040": "RPI-RP2", "rp2350": "RP2350"}
CHIPS = ["auto", *ESP_CHIPS, *UF2_FAMILIES]


@dataclass
class Firmware:
    """A checked firmware file."""
    path: Path
    kind: str  # "esp" | "uf2"
    chip: str  # chip the image is for


def check_esp_image(data: bytes, path: Path, chip: str) -> Firmware:
    """Check an ESP32-family image (.bin); `chip` may be "auto" (taken from the header).

    Raises:
        TinyFleetError: not an ESP image, or one for another chip.
    """
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        first = f"0x{data[0]:02X}" if data else "empty file"
        raise TinyFleetError(f"{path.name} is not an ESP firmware image (first byte {first}, "
                             f"expected 0x{ESP_IMAGE_MAGIC:02X})")
    chip_id = struct.unpack_from("<H", data, 12)[0]
    by_id = {cid: name for name, (_, cid) in ESP_CHIPS.items()}
    image_chip = by_id.get(chip_id)
    if image_chip is None:
        raise TinyFleetError(f"{path.name}: unknown ESP chip id {chip_id} in the image header")
    if chip not in ("auto", image_chip):
        raise TinyFleetError(f"{path.name} is an image for {image_chip}, not {chip}")
    return Firmware(path, "esp", image_chip)


def check_uf2(data: bytes, path: Path, chip: str) -> Firmware:
    """Check a UF2 file block by block; `chip` may be "auto" (taken from the family id).

    Raises:
        TinyFleetError: not UF2, damaged, or for another chip family.
    """
    if not data or len(data) % 512:
        raise TinyFleetError(f"{path.name} is not a UF2 file ({len(data)} bytes, not a "
                             "multiple of 512)")
    families: set[int] = set()
    total = None
    seen = 0
    for off in range(0, len(data), 512):
        m0, m1, flags, _addr, size, _blockno, nblocks, family = struct.unpack_from(
            "<8I", data, off)
        (mend,) = struct.unpack_from("<I", data, off + 508)
        if (m0, m1, mend) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            raise TinyFleetError(f"{path.name} is not a UF2 file (bad magic in block "
                                 f"{off // 512})")
        if flags & UF2_FLAG_NOT_MAIN_FLASH:
            continue
        if size > 476:
            raise TinyFleetError(f"{path.name}: block {off // 512} has payload size {size}")
        if flags & UF2_FLAG_FAMILY:
            families.add(family)
        total = nblocks if total is None else total
        seen += 1
    if seen == 0 or seen != total:
        raise TinyFleetError(f"{path.name} is truncated: {seen} of {total} UF2 blocks")
    by_family = {f: name for name, fams in UF2_FAMILIES.items() for f in fams}
    chips = {by_family.get(f) for f in families}
    if len(chips) != 1 or None in chips:
        ids = ", ".join(f"0x{f:08X}" for f in sorted(families)) or "none"
        raise TinyFleetError(f"{path.name}: UF2 family {ids} is not an RP2040/RP2350 image")
    image_chip = chips.pop()
    assert image_chip is not None
    if chip not in ("auto", image_chip):
        raise TinyFleetError(f"{path.name} is a UF2 image for {image_chip}, not {chip}")
    return Firmware(path, "uf2", image_chip)


def check_firmware(path: Path, chip: str = "auto") -> Firmware:
    """Identify and check a firmware file before anything is erased.

    Raises:
        TinyFleetError: missing file, wrong kind for `chip`, or damaged.
    """
    if chip not in CHIPS:
        raise TinyFleetError(f"unknown chip {chip!r} (choose {', '.join(CHIPS)})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TinyFleetError(f"cannot read firmware {path}: {exc.strerror}") from exc
    if data[:4] == struct.pack("<I", UF2_MAGIC_START0):
        fw = check_uf2(data, path, chip)
    elif chip in UF2_FAMILIES:
        raise TinyFleetError(f"{path.name} is not a UF2 file ({chip} needs a .uf2)")
    else:
        fw = check_esp_image(data, path, chip)
    return fw


def esptool_commands(fw: Firmware, port: str, baud: int = 460800) -> list[list[str]]:
    """The esptool runs that flash `fw`: erase the flash, then write at the chip's offset."""
    offset = ESP_CHIPS[fw.chip][0]
    base = [sys.executable, "-m", "esptool", "--chip", fw.chip, "--port", port]
    return [base + ["erase_flash"],
            base + ["--baud", str(baud), "write_flash", f"0x{offset:x}", str(fw.path)]]


def run_esptool(argv: Sequence[str]) -> int:
    """Run esptool attached to the terminal so its progress shows."""
    return subprocess.call(list(argv))


def flash_esp(fw: Firmware, port: str, baud: int = 460800,
              runner: Callable[[Sequence[str]], int] | None = None) -> None:
    """Erase and write an ESP32-family board.

    Raises:
        TinyFleetError: esptool failed (no board, wrong chip, busy port, ...).
    """
    if "://" not in port and not os.path.exists(port):
        raise TinyFleetError(f"no board on {port}: no such device")
    runner = runner or run_esptool
    for argv in esptool_commands(fw, port, baud):
        step = "erase_flash" if "erase_flash" in argv else "write_flash"
        if runner(argv) != 0:
            raise TinyFleetError(f"esptool {step} failed on {port} (see its output above)")


def mount_points() -> list[Path]:
    """Mounted filesystems, plus the usual auto-mount folders."""
    points: list[Path] = []
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 1:
                    points.append(Path(parts[1].replace("\\040", " ")))
    except OSError:
        pass
    user = os.environ.get("USER", "")
    for base in (Path("/media") / user, Path("/run/media") / user, Path("/media"),
                 Path("/Volumes")):
        if base.is_dir():
            points += [p for p in base.iterdir() if p.is_dir()]
    return points


def find_uf2_drive(chip: str, candidates: Sequence[Path] | None = None) -> Path:
    """The BOOTSEL drive of a `chip` board: a folder whose INFO_UF2.TXT names it.

    Raises:
        TinyFleetError: no such drive is mounted.
    """
    want = UF2_BOARD_IDS[chip]
    for point in candidates if candidates is not None else mount_points():
        info = point / "INFO_UF2.TXT"
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        if f"Board-ID: {want}" in text:
            return point
    raise TinyFleetError(f"no {chip} BOOTSEL drive found (hold BOOTSEL while plugging the "
                         "board in, or pass --drive DIR)")


def flash_uf2(fw: Firmware, drive: Path) -> Path:
    """Copy the .uf2 onto the BOOTSEL drive; the board reboots when it has all blocks.

    Raises:
        TinyFleetError: the drive is not a UF2 drive or the copy failed.
    """
    if not (drive / "INFO_UF2.TXT").is_file():
        raise TinyFleetError(f"{drive} is not a UF2 drive (no INFO_UF2.TXT)")
    target = drive / fw.path.name
    try:
        with fw.path.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 64 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise TinyFleetError(f"copy to {drive} failed: {exc.strerror}") from exc
    return target
