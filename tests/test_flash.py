"""`tinyfleet flash` without a board: firmware checks, the exact esptool runs (a fake
runner records them), and the UF2 copy onto a stand-in BOOTSEL drive."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from tinyfleet import board_flash, cli
from tinyfleet.errors import TinyFleetError

RP2040 = 0xE48BFF56
ESP32S2_UF2 = 0xBFDD4EEE


def esp_image(chip_id: int) -> bytes:
    """A minimal ESP image: magic 0xE9, 3 segments, DIO, 4 MB, entry, extended header."""
    header = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000)
    ext = bytes([0xEE, 0, 0, 0]) + struct.pack("<H", chip_id) + bytes(10)
    return header + ext + bytes(1000)


def uf2(n_blocks: int = 3, family: int = RP2040, drop: int | None = None,
        bad_end: bool = False) -> bytes:
    out = b""
    for i in range(n_blocks):
        if i == drop:
            continue
        payload = bytes([i]) * 256
        block = struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000 + 256 * i,
                            256, i, n_blocks, family)
        block += payload + bytes(476 - len(payload))
        block += struct.pack("<I", 0x0AB16F31 if bad_end else 0x0AB16F30)
        out += block
    return out


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def board_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The real CLI, with only the board commands registered (others may be unfinished)."""
    board = {"flash", "deploy", "inspect", "repl", "selftest", "emulate"}
    monkeypatch.setattr(cli, "COMMANDS", {k: v for k, v in cli.COMMANDS.items() if k in board})
    return cli.main(argv)


class FakeEsptool:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(list(argv))
        return 1 if self.fail_at == len(self.calls) else 0


@pytest.mark.parametrize("chip,chip_id,offset", [("esp32", 0, "0x1000"), ("esp32s3", 9, "0x0"),
                                                 ("esp32c3", 5, "0x0")])
def test_esp_image_erase_then_write_at_chip_offset(tmp_path: Path, chip: str, chip_id: int,
                                                   offset: str) -> None:
    fw_path = write(tmp_path, "fw.bin", esp_image(chip_id))
    port = write(tmp_path, "ttyUSB0", b"")  # stands in for the device node
    runner = FakeEsptool()

    fw = board_flash.check_firmware(fw_path, "auto")
    board_flash.flash_esp(fw, str(port), baud=460800, runner=runner)

    assert fw.chip == chip
    tail = [c[c.index("--chip"):] for c in runner.calls]
    assert tail == [["--chip", chip, "--port", str(port), "erase_flash"],
                    ["--chip", chip, "--port", str(port), "--baud", "460800", "write_flash",
                     offset, str(fw_path)]], tail
    assert runner.calls[0][1:3] == ["-m", "esptool"]


def test_esptool_failure_is_one_line_and_stops(tmp_path: Path) -> None:
    fw = board_flash.check_firmware(write(tmp_path, "fw.bin", esp_image(0)), "esp32")
    runner = FakeEsptool(fail_at=1)
    with pytest.raises(TinyFleetError, match="erase_flash failed"):
        board_flash.flash_esp(fw, str(write(tmp_path, "tty", b"")), runner=runner)
    assert len(runner.calls) == 1  # nothing written after a failed erase


@pytest.mark.parametrize("data,chip,message", [
    (b"\x7fELF" + bytes(100), "auto", "not an ESP firmware image"),
    (esp_image(9), "esp32", "image for esp32s3, not esp32"),
    (esp_image(0x77), "auto", "unknown ESP chip id"),
    (b"", "esp32", "empty file"),
    (esp_image(0), "rp2040", "not a UF2 file"),
    (uf2(), "esp32", "UF2 image for rp2040, not esp32"),
    (uf2(bad_end=True), "auto", "bad magic in block 0"),
    (uf2(drop=1), "rp2040", "truncated: 2 of 3"),
    (uf2(family=ESP32S2_UF2), "auto", "not an RP2040/RP2350 image"),
    (uf2()[:700], "auto", "not a multiple of 512"),
])
def test_wrong_firmware_is_refused_before_anything_is_erased(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        data: bytes, chip: str, message: str) -> None:
    fw = write(tmp_path, "fw.bin", data)
    runner = FakeEsptool()
    monkeypatch.setattr(board_flash, "run_esptool", runner)
    port = write(tmp_path, "tty", b"")

    rc = board_cli(["flash", "--port", str(port), "--firmware", str(fw), "--chip", chip],
                   monkeypatch)

    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and err.count("\n") == 1, err
    assert runner.calls == []


def test_uf2_copied_to_bootsel_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\n"
                                        "Board-ID: RPI-RP2\n")
    fw = write(tmp_path, "RPI_PICO_W.uf2", uf2(5))

    rc = board_cli(["flash", "--firmware", str(fw), "--drive", str(drive)], monkeypatch)

    assert rc == 0, capsys.readouterr().err
    assert (drive / "RPI_PICO_W.uf2").read_bytes() == fw.read_bytes()
    assert "UF2 image for rp2040" in capsys.readouterr().out


def test_uf2_drive_found_by_info_file(tmp_path: Path) -> None:
    other = tmp_path / "usbstick"
    other.mkdir()
    (other / "INFO_UF2.TXT").write_text("Board-ID: SAMD21-XYZ\n")
    pico = tmp_path / "pico"
    pico.mkdir()
    (pico / "INFO_UF2.TXT").write_text("Board-ID: RPI-RP2\n")

    assert board_flash.find_uf2_drive("rp2040", [tmp_path, other, pico]) == pico
    with pytest.raises(TinyFleetError, match="no rp2040 BOOTSEL drive"):
        board_flash.find_uf2_drive("rp2040", [tmp_path, other])


def test_uf2_to_a_folder_that_is_not_a_uf2_drive(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fw = write(tmp_path, "fw.uf2", uf2())
    rc = board_cli(["flash", "--firmware", str(fw), "--drive", str(tmp_path / "nowhere")],
                   monkeypatch)
    assert rc == 1
    assert "not a UF2 drive" in capsys.readouterr().err


def test_esp_flash_without_a_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeEsptool()
    monkeypatch.setattr(board_flash, "run_esptool", runner)
    fw = write(tmp_path, "fw.bin", esp_image(0))
    rc = board_cli(["flash", "--port", "/dev/ttyNOPE0", "--firmware", str(fw)], monkeypatch)
    assert rc == 1
    assert "no board on /dev/ttyNOPE0" in capsys.readouterr().err
    assert runner.calls == []


def test_esp_flash_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeEsptool()
    monkeypatch.setattr(board_flash, "run_esptool", runner)
    fw = write(tmp_path, "ESP32_GENERIC_S3.bin", esp_image(9))
    port = write(tmp_path, "ttyACM0", b"")

    rc = board_cli(["flash", "--port", str(port), "--firmware", str(fw), "--baud", "921600"],
                   monkeypatch)

    out = capsys.readouterr().out
    assert rc == 0
    assert [c[c.index("--chip"):] for c in runner.calls] == [
        ["--chip", "esp32s3", "--port", str(port), "erase_flash"],
        ["--chip", "esp32s3", "--port", str(port), "--baud", "921600", "write_flash", "0x0",
         str(fw)]]
    assert "ESP image for esp32s3" in out and f"flashed esp32s3 on {port}" in out
