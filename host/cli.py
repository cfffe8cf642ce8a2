"""The `tinyfleet` command: one dispatch table from command name to handler module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import TinyFleetError

# command -> (module under tinyfleet.commands, one-line help).
# A command module keeps its top level light (argparse only); heavy imports
# (numpy, paho, mpremote) happen inside run(), so `tinyfleet --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "one simulated board learning the sine task online (MicroPython)"),
    "bench": ("bench", "benchmarks: kernels (µs/step, bytes/step) and rounds"),
    "coordinator": ("coordinator", "federated rounds over MQTT (Reptile, FedAvg), checkpointed"),
    "simulate": ("simulate", "a simulated fleet: Mosquitto, coordinator, N MicroPython devices"),
    "evaluate": ("evaluate", "meta-learning vs baselines on held-out tasks (host, fixed+float)"),
    "emulate": ("emulate", "emulated board (qemu Cortex-M3, UART on a pty): start|stop|status"),
    "flash": ("flash", "write MicroPython firmware: ESP32 family (esptool) or RP2040 (UF2)"),
    "deploy": ("deploy", "compile and copy TinyFleet to a board, write its config, reset it"),
    "inspect": ("inspect", "a board's firmware, model, learning state, memory and config"),
    "repl": ("repl", "open mpremote's REPL on a board"),
    "selftest": ("selftest", "run the kernels on a board against the integer reference"),
    "devices": ("devices", "boards in the semantic registry: self-descriptions, WoT TDs"),
    "models": ("models", "model cards in the semantic registry (needs, quality, lineage)"),
    "match": ("match", "which boards can run a model, and why the others cannot"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyfleet",
        description="TinyFleet: online learning on MicroPython boards and federated "
                    "meta-learning over MQTT.")
    parser.add_argument("--version", action="version", version=f"tinyfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"tinyfleet.commands.{module_name}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TinyFleetError as exc:
        print(f"tinyfleet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
