"""`tinyfleet deploy`: compile and copy TinyFleet to a board, write its config, reset it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True,
                        help="serial port of the board (e.g. /dev/ttyUSB0)")
    parser.add_argument("--device-id", required=True, help="this board's id in the fleet")
    parser.add_argument("--broker", required=True, help="MQTT broker host the board connects to")
    parser.add_argument("--fleet", default="demo", help="fleet name (default: demo)")
    parser.add_argument("--model", default=None, help="model name (default: the device's)")
    parser.add_argument("--broker-port", type=int, default=1883, help="MQTT port (default 1883)")
    parser.add_argument("--user", default=None, help="MQTT user name")
    parser.add_argument("--password-env", metavar="VAR", help="env var holding the MQTT password")
    parser.add_argument("--fleet-key-env", metavar="VAR", help="env var holding the fleet HMAC key")
    parser.add_argument("--wifi-ssid", default=None, help="WiFi network the board joins")
    parser.add_argument("--wifi-password-env", metavar="VAR",
                        help="env var holding the WiFi password")
    parser.add_argument("--no-umqtt", action="store_true",
                        help="do not install umqtt.simple (the board already has it)")
    parser.add_argument("--no-reset", action="store_true", help="do not reset the board after")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the board and print the plan; change nothing")


def _secret(var: str | None) -> str | None:
    """The value of env var `var` (secrets never come from argv)."""
    import os

    from ..errors import TinyFleetError

    if not var:
        return None
    if var not in os.environ:
        raise TinyFleetError(f"environment variable {var} is not set")
    return os.environ[var]


def config_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The board's config.json (keys as device/config.py reads them)."""
    from .. import __version__
    from ..errors import TinyFleetError

    for name in ("device_id", "fleet"):
        value = getattr(args, name)
        if not value or any(c in value for c in "/+#"):
            raise TinyFleetError(f"--{name.replace('_', '-')} {value!r} must be non-empty "
                                 "without '/', '+' or '#'")
    cfg: dict[str, object] = {"id": args.device_id, "fleet": args.fleet,
                              "broker": args.broker, "port": args.broker_port,
                              "tinyfleet_version": __version__}
    if args.model:
        cfg["model"] = args.model
    optional = {"user": args.user, "password": _secret(args.password_env),
                "fleet_key": _secret(args.fleet_key_env), "ssid": args.wifi_ssid,
                "wifi_password": _secret(args.wifi_password_env)}
    cfg.update({k: v for k, v in optional.items() if v is not None})
    return cfg


def run(args: argparse.Namespace) -> int:
    import json

    from .. import board_deploy as bd
    from ..fleet import umqtt_source

    config = config_from_args(args)
    board = bd.probe(args.port)
    compiler = bd.pick_compiler(board)
    print(f"board: MicroPython {board.version_str} on {board.machine or board.platform}, "
          f"mpy v{board.mpy_format[0]}.{board.mpy_format[1]}"  # type: ignore[index]
          f", arch {board.arch or 'none'}; mpy-cross {compiler.version} ({compiler.path})")
    umqtt = None if args.no_umqtt else umqtt_source()
    items = bd.build_items(bd.source_files(umqtt), compiler, board.arch, config)
    plan = bd.make_plan(board, items, compiler)
    print(f"config {bd.CONFIG_NAME}: {json.dumps(bd.masked_config(config), sort_keys=True)}")
    print(f"{len(plan.copy)} of {len(items)} files to copy ({plan.bytes_needed} bytes on "
          f"the board, {board.bsize * board.bfree} free)"
          + (f", {len(plan.remove)} stale to remove" if plan.remove else ""))
    if args.dry_run:
        for item in plan.copy:
            print(f"  would copy {item.board_path} ({len(item.data)} bytes)")
        for path in plan.remove:
            print(f"  would remove {path}")
        return 0
    bd.check_space(plan, args.port)
    bd.apply(plan, args.port, reset=not args.no_reset)
    print(f"deployed to {args.port}" + ("" if args.no_reset else "; board reset"))
    return 0
