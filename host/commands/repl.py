"""`tinyfleet repl`: mpremote's interactive REPL on a board (Ctrl-] or Ctrl-x to leave)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port of the board")


def run(args: argparse.Namespace) -> int:
    from .. import board_mp

    return board_mp.interactive(args.port, ["repl"])
