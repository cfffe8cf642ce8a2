"""A small line chart written as a PNG with zlib only (no matplotlib dependency).

Enough for a loss curve: axes, grid, several series, a title, axis titles and a legend
in a 3x5 pixel font (digits, lower-case letters as capitals, a little punctuation).
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
    " ": "000000000000000", "a": "010101111101101", "b": "110101110101110",
    "c": "011100100100011", "d": "110101101101110", "e": "111100111100111",
    "f": "111100111100100", "g": "011100101101011", "h": "101101111101101",
    "i": "111010010010111", "j": "001001001101010", "k": "101101110101101",
    "l": "100100100100111", "m": "101111111101101", "n": "110101101101101",
    "o": "010101101101010", "p": "110101110100100", "q": "010101101110011",
    "r": "110101110101101", "s": "011100010001110", "t": "111010010010010",
    "u": "101101101101111", "v": "101101101101010", "w": "101101111111101",
    "x": "101101010101101", "y": "101101010010010", "z": "111001010100111",
    "(": "010100100100010", ")": "010001001001010", "=": "000111000111000",
    ":": "000010000010000", "/": "001001010100100", ",": "000000000010100",
    "+": "000010111010000", "_": "000000000000111", "'": "010010000000000",
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
            bits = _FONT.get(ch.lower(), _FONT[" "])
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
               width: int = 640, height: int = 400, log_y: bool = False,
               labels: Sequence[str] = (), title: str = "", xlabel: str = "",
               ylabel: str = "") -> Path:
    """Draw each series (list of (x, y) points; NaN/inf skipped) in PALETTE order.

    `labels` name the series in a legend under the plot; `title` goes above it,
    `ylabel` above the y axis, `xlabel` under the x axis. Returns `path`.
    """
    pts = [[(x, y) for x, y in s if math.isfinite(x) and math.isfinite(y)
            and (y > 0 or not log_y)] for s in series]
    allp = [p for s in pts for p in s]
    left, right, top, bottom = 70, 20, 20 + (24 if title else 0) + (20 if ylabel else 0), 40
    if xlabel:
        bottom += 20
    legend_top = height - 4
    if labels:
        height += 16 * len(labels) + 8  # the legend gets its own rows under the plot
    c = Canvas(width, height)
    pw, ph = width - left - right, legend_top + 4 - top - bottom
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
    if title:
        c.text(left, 8, title)
    if ylabel:
        c.text(4, top - 24, ylabel)
    if xlabel:
        c.text(left + pw // 2 - 4 * len(xlabel), top + ph + 30, xlabel)
    _legend(c, labels, left, legend_top)
    path.write_bytes(c.png())
    return path


def _legend(c: Canvas, labels: Sequence[str], left: int, top: int) -> None:
    """A legend in rows from (left, top): a colour swatch and a label per series."""
    for i, label in enumerate(labels):
        y = top + 8 + 16 * i
        c.line(left, y, left + 18, y, PALETTE[i % len(PALETTE)], thick=3)
        c.text(left + 26, y - 5, label)
