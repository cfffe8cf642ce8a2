"""`tinyfleet selftest`: the kernels on a board vs the integer reference (exit 1 on failure)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port of the board")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from .. import board_mp
    from .. import board_selftest as st

    board_mp.ensure_repl(args.port)  # fail fast: the self-test itself may take minutes
    answers = [st.run_case(args.port, case) for case in st.CASES]
    if args.json:
        print(json.dumps(answers))
    else:
        a = answers[0]
        print(f"{a['firmware']} on {a['machine']}")
        print(st.table(answers))
    ok = st.passed(answers)
    print("selftest: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1
