"""`tinyfleet emulate start|stop|status`: the emulated board (qemu Cortex-M3) on a pty."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"],
                        help="start (build if needed) | stop | status")
    parser.add_argument("--json", action="store_true", help="print the state as JSON")
    parser.add_argument("--fs-image", metavar="IMG",
                        help="start: preload the 2 MiB RAM-disk filesystem from this image "
                        "(tools/emuboard/mkfsimg.py builds one)")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from .. import board_emu

    if args.action == "start":
        state = board_emu.start(fs_image=Path(args.fs_image) if args.fs_image else None)
    elif args.action == "stop":
        state = board_emu.stop()
        if not args.json:
            print(f"stopped emulated board (pid {state.pid}, {state.port})" if state
                  else "emulated board was not running")
            return 0
    else:
        state = board_emu.status()
    if args.json:
        print(json.dumps(asdict(state) if state else None))
    elif args.action == "start":
        print(state.port)  # type: ignore[union-attr]
    elif state:
        print(f"running: port {state.port}, pid {state.pid}, log {state.log}")
    else:
        print("not running")
    return 0 if state or args.action == "stop" else 1
