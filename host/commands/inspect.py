"""`tinyfleet inspect`: what a board runs and how its learning goes (device/tfinspect.py)."""

from __future__ import annotations

import argparse

# (field, label) in the order the human-readable view prints them.
FIELDS = [("device_id", "device"), ("firmware", "firmware"), ("machine", "machine"),
          ("tinyfleet", "TinyFleet"), ("model", "model"), ("model_version", "model version"),
          ("samples", "samples seen"), ("loss", "recent loss"), ("kernel", "kernel"),
          ("last_round", "last round"), ("state", "state"), ("mem_free", "free memory"),
          ("fs_free", "free flash"), ("config", "config")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port of the board")
    parser.add_argument("--json", action="store_true", help="one JSON object per reading")
    parser.add_argument("--watch", type=float, metavar="SECS",
                        help="read again every SECS seconds until Ctrl-C")
    parser.add_argument("--no-restart", action="store_true",
                        help="leave the board at its REPL (by default it is reset after each "
                        "reading, because reading it over serial interrupts main.py)")


def _text(report: dict[str, object]) -> str:
    import json

    lines = []
    for key, label in FIELDS:
        value = report.get(key)
        if key == "model" and isinstance(value, dict):
            value = (f"{'-'.join(map(str, value['sizes']))} v{value['version']} "
                     f"({value['params']} params, {value['file']})")
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif key in ("mem_free", "fs_free") and isinstance(value, int):
            value = f"{value} bytes"
        lines.append(f"{label + ':':15}{'-' if value is None else value}")
    return "\n".join(lines)


def read(port: str, restart: bool = True) -> dict[str, object]:
    """The board's inspect report; with `restart`, reset the board afterwards so that
    TinyFleet (main.py), interrupted by mpremote, starts again.

    Raises:
        TinyFleetError: board I/O failed or TinyFleet is not deployed on it.
    """
    from .. import board_mp

    return board_mp.exec_device(port, "tfinspect", "import tfinspect; tfinspect.main()",
                                timeout=board_mp.PROBE_TIMEOUT + 15,
                                after=["reset"] if restart else [])


def run(args: argparse.Namespace) -> int:
    import json
    import time

    while True:
        report = read(args.port, restart=not args.no_restart)
        print(json.dumps(report) if args.json else _text(report), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)
        if not args.json:
            print()
