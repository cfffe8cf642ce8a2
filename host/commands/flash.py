"""`tinyfleet flash`: write MicroPython firmware (ESP32 family via esptool, RP2040 via UF2)."""

from __future__ import annotations

import argparse

CHIP_CHOICES = ["auto", "esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c2", "esp32c6",
                "esp32h2", "esp32p4", "rp2040", "rp2350"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", help="serial port (ESP32 family)")
    parser.add_argument("--firmware", required=True, help=".bin (ESP32) or .uf2 (RP2040)")
    parser.add_argument("--chip", default="auto", choices=CHIP_CHOICES,
                        help="target chip (default: read from the firmware file)")
    parser.add_argument("--baud", type=int, default=460800, help="esptool write baud rate")
    parser.add_argument("--drive", help="RP2040 BOOTSEL drive folder (default: search mounts)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import board_flash
    from ..errors import TinyFleetError

    fw = board_flash.check_firmware(Path(args.firmware), args.chip)
    print(f"{fw.path.name}: {fw.kind.upper()} image for {fw.chip}")
    if fw.kind == "uf2":
        drive = Path(args.drive) if args.drive else board_flash.find_uf2_drive(fw.chip)
        target = board_flash.flash_uf2(fw, drive)
        print(f"copied to {target}; the board reboots into the new firmware")
        return 0
    if not args.port:
        raise TinyFleetError(f"--port is required to flash {fw.chip}")
    board_flash.flash_esp(fw, args.port, args.baud)
    print(f"flashed {fw.chip} on {args.port}")
    return 0
