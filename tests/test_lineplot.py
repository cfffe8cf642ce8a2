"""host/lineplot: a valid PNG with the series, axis titles and legend drawn in it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from tinyfleet.lineplot import PALETTE, line_chart


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, RGB rows) of an 8-bit RGB PNG with filter 0, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:] == bytes([8, 2, 0, 0, 0])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    rows = [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]
    assert all(raw[y * stride] == 0 for y in range(height))
    return width, height, rows


def pixels_of(rows: list[bytes], color: tuple[int, int, int]) -> int:
    c = bytes(color)
    return sum(sum(1 for x in range(0, len(r), 3) if r[x:x + 3] == c) for r in rows)


def test_chart_is_a_valid_png_with_every_series(tmp_path: Path) -> None:
    series = [[(0, 4.0), (10, 2.0), (20, 1.0)], [(0, 3.0), (20, 3.5)]]
    path = line_chart(series, tmp_path / "a.png", width=320, height=200)
    width, height, rows = decode_png(path.read_bytes())
    assert (width, height) == (320, 200)
    assert pixels_of(rows, PALETTE[0]) > 50 and pixels_of(rows, PALETTE[1]) > 50
    assert pixels_of(rows, PALETTE[2]) == 0


def test_legend_gets_its_own_rows_under_the_plot(tmp_path: Path) -> None:
    series = [[(0, 1.0), (1, 2.0)], [(0, 2.0), (1, 1.0)], [(0, 0.5), (1, 0.5)]]
    plain = decode_png(line_chart(series, tmp_path / "a.png", height=300).read_bytes())
    path = line_chart(series, tmp_path / "b.png", height=300, labels=["a", "b", "c"],
                      title="t", xlabel="round", ylabel="mse")
    width, height, rows = decode_png(path.read_bytes())
    assert height == plain[1] + 16 * 3 + 8
    legend = rows[300:]
    for color in PALETTE[:3]:  # each series has its swatch in the legend rows
        assert pixels_of(legend, color) >= 18 * 3, color


def test_empty_and_non_finite_series_still_draw_axes(tmp_path: Path) -> None:
    path = line_chart([[(0, float("nan")), (1, float("inf"))], []], tmp_path / "e.png",
                      width=100, height=80)
    width, height, rows = decode_png(path.read_bytes())
    assert (width, height) == (100, 80)
    assert pixels_of(rows, (0, 0, 0)) > 0 and pixels_of(rows, PALETTE[0]) == 0
