"""`tinyfleet train`: one simulated board (MicroPython) learning a sine task online."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5000, help="online SGD steps (5000)")
    parser.add_argument("--every", type=int, default=500, help="report every N steps (500)")
    parser.add_argument("--seed", type=int, default=1, help="task and init seed (1)")
    parser.add_argument("--lr-shift", type=int, default=5,
                        help="learning rate 2**-N (5: 0.03125)")
    parser.add_argument("--kernel", default="auto",
                        choices=["auto", "viper", "ulab", "bytecode"], help="kernel (auto)")
    parser.add_argument("--build", default="32", choices=["32", "64"],
                        help="MicroPython build; 32 has ESP32/RP2040's 31-bit ints (32)")
    parser.add_argument("--heapsize", default="64k", help="board heap (64k)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def run(args: argparse.Namespace) -> int:
    from .. import train_demo

    rows = train_demo.run(steps=args.steps, every=args.every, seed=args.seed,
                          lr_shift=args.lr_shift, kernel=args.kernel, build=args.build,
                          heapsize=args.heapsize)
    for row in rows:
        if args.json:
            print(json.dumps(row), flush=True)
        elif "kernel" in row:
            print(f"board: MicroPython {args.build}-bit, heap {args.heapsize}, "
                  f"kernel {row['kernel']}, 1-40-40-1 ({row['params']} params), "
                  f"task A={row['amplitude'] / 4096:.2f} phase={row['phase'] / 4096:.2f}")
            print(f"{'step':>6}  {'held-out MSE':>12}  {'µs/step':>8}  {'bytes/step':>10}")
        else:
            alloc = row.get("alloc", 0) / max(1, args.every) if row["step"] else 0
            print(f"{row['step']:>6}  {row['mse']:>12.4f}  {row['us']:>8}  {alloc:>10.1f}",
                  flush=True)
    return 0
