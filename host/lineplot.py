"""A small line chart written as a PNG with zlib only (no matplotlib dependency).

Enough for a loss curve: axes, grid, several series, tick labels in a 3x5 pixel font.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

RGB = tuple[int, int, int]
PALETTE: list[RGB] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14),
                      (148, 103, 189), (140, 86, 75)]

# 3x5 glyphs, one string of 15 bits (rows top to bottom) per character.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111111100111", " ": "000000000000000",
}


class Canvas:
    """An RGB raster with the few drawing primitives a line chart needs."""

    def __init__(self, width: int, height: int, bg: RGB = (255, 255, 255)) -> None:
        self.w = width
        self.h = height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: RGB) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = 3 * (y * self.w + x)
            self.px[i:i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: RGB, thick: int = 1) -> None:
        """Bresenham line, `thick` pixels wide."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for t in range(thick):
                self.set(x0, y0 + t - thick // 2, c)
                self.set(x0 + t - thick // 2, y0, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, c: RGB = (0, 0, 0), scale: int = 2) -> None:
        for ch in s:
            bits = _FONT.get(ch, _FONT[" "])
            for k, b in enumerate(bits):
                if b == "1":
                    for a in range(scale):
                        for bb in range(scale):
                            self.set(x + (k % 3) * scale + a, y + (k // 3) * scale + bb, c)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[3 * self.w * y:3 * self.w * (y + 1)])
                       for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}".replace("+", "")
    return f"{v:.3g}"


def line_chart(series: Sequence[Sequence[tuple[float, float]]], path: Path,
               width: int = 640, height: int = 400, log_y: bool = False) -> Path:
    """Draw each series (list of (x, y) points; NaN/inf skipped) in PALETTE order.

    The legend lives in the caller's markdown (the font has digits only). Returns `path`.
    """
    pts = [[(x, y) for x, y in s if math.isfinite(x) and math.isfinite(y)
            and (y > 0 or not log_y)] for s in series]
    allp = [p for s in pts for p in s]
    c = Canvas(width, height)
    left, right, top, bottom = 70, 20, 20, 40
    pw, ph = width - left - right, height - top - bottom
    if allp:
        fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
        xs = [p[0] for p in allp]
        ys = [fy(p[1]) for p in allp]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if not log_y:
            y0 = min(y0, 0.0)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y1 = y0 + 1

        def px(x: float, y: float) -> tuple[int, int]:
            return (left + round((x - x0) / (x1 - x0) * pw),
                    top + ph - round((fy(y) - y0) / (y1 - y0) * ph))

        for k in range(5):  # horizontal grid and y labels
            yv = y0 + (y1 - y0) * k / 4
            yy = top + ph - round(ph * k / 4)
            c.line(left, yy, left + pw, yy, (225, 225, 225))
            c.text(4, yy - 5, _fmt(10 ** yv if log_y else yv))
        for k in range(5):  # x ticks
            xv = x0 + (x1 - x0) * k / 4
            xx = left + round(pw * k / 4)
            c.line(xx, top + ph, xx, top + ph + 5, (0, 0, 0))
            c.text(xx - 8, top + ph + 10, _fmt(round(xv, 2)))
        for i, s in enumerate(pts):
            color = PALETTE[i % len(PALETTE)]
            for (a, b), (cc, d) in zip(s, s[1:], strict=False):
                c.line(*px(a, b), *px(cc, d), color, thick=2)
            for p in (s if len(s) <= 50 else []):  # markers only where they stay legible
                x, y = px(*p)
                for dx in (-2, -1, 0, 1, 2):
                    for dy in (-2, -1, 0, 1, 2):
                        c.set(x + dx, y + dy, color)
    c.line(left, top, left, top + ph, (0, 0, 0))
    c.line(left, top + ph, left + pw, top + ph, (0, 0, 0))
    path.write_bytes(c.png())
    return path
