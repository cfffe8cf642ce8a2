"""`tinyfleet bench <what>`: benchmarks. Each benchmark is a sub-command registered in BENCHES
(`kernels`: the learning step on MicroPython; `rounds`: federated rounds of a real fleet)."""

from __future__ import annotations

import argparse


def _add_kernels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--steps", type=int, default=200, metavar="N",
                        help="at least N SGD steps per timed repeat on MicroPython (default 200)")
    parser.add_argument("--min-time", type=float, default=0.2, metavar="S",
                        help="and at least S seconds per timed repeat (default 0.2)")
    parser.add_argument("--repeats", type=int, default=5, metavar="R",
                        help="timed repeats; the median is reported (default 5)")
    parser.add_argument("--heap", default="512K", metavar="SIZE",
                        help="MicroPython heap for the timed runs, as -X heapsize (default 512K, "
                             "board-sized: an allocating kernel pays for its GC)")
    parser.add_argument("--build", choices=["64", "32"], default="64",
                        help="MicroPython unix port build (32: 31-bit small ints like ESP32)")


def _run_kernels(args: argparse.Namespace) -> int:
    from .. import bench_kernels  # numpy and subprocess work only when the command runs

    report = bench_kernels.run(steps=args.steps, repeats=args.repeats, build=args.build,
                               min_time=args.min_time, heap=args.heap)
    print(bench_kernels.to_json(report) if args.json else bench_kernels.format_table(report))
    return 0


def _add_rounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--devices", type=int, default=4, help="MicroPython devices (default 4)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds to time (default 10)")
    parser.add_argument("--k", type=int, default=32, help="local SGD steps per round (default 32)")
    parser.add_argument("--build", choices=["64", "32"], default="32",
                        help="MicroPython unix port build (default 32: like a board)")
    parser.add_argument("--heapsize", help="device heap (default: 128k on 32-bit, 256k on 64)")


def _run_rounds(args: argparse.Namespace) -> int:
    from .. import bench_rounds

    report = bench_rounds.run(devices=args.devices, rounds=args.rounds, k=args.k,
                              build=args.build, heapsize=args.heapsize)
    print(bench_rounds.to_json(report) if args.json else bench_rounds.format_table(report))
    return 0


# name -> (help, add_arguments, run)
BENCHES = {
    "kernels": ("µs and bytes per SGD step of each MLP kernel on MicroPython, vs naive and C",
                _add_kernels, _run_kernels),
    "rounds": ("round latency and bytes on the wire per device of a real MicroPython fleet",
               _add_rounds, _run_rounds),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    for name, (help_text, add, _) in BENCHES.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    return BENCHES[args.bench][2](args)
