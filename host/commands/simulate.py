"""`tinyfleet simulate`: Mosquitto + coordinator + N MicroPython devices, with a report."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=8, help="MicroPython device processes")
    parser.add_argument("--rounds", type=int, default=200, help="federated rounds")
    parser.add_argument("--task", default="sine", choices=["sine"], help="the devices' task")
    parser.add_argument("--out", help="report directory (default: ./runs/<UTC timestamp>)")
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="use this MQTT broker (default: an embedded Mosquitto)")
    parser.add_argument("--strategy", default="reptile",
                        choices=["reptile", "tinyreptile", "fedavg", "local"])
    parser.add_argument("--seed", type=int, default=0, help="tasks, initial weights, held-out set")
    parser.add_argument("--k", type=int, default=32, help="local SGD steps per round")
    parser.add_argument("--lr-shift", type=int, default=6, help="device learning rate 2**-S")
    parser.add_argument("--epsilon", type=float, default=1.0,
                        help="outer step size at round 1 (annealed linearly to 0)")
    parser.add_argument("--drift", type=int, default=150,
                        help="samples between a device's task changes (0: never)")
    parser.add_argument("--rate", type=int, default=50,
                        help="device samples per second between rounds (0: flat out)")
    parser.add_argument("--build", default="32", choices=["32", "64"],
                        help="MicroPython unix build (32: 31-bit small ints, like a board)")
    parser.add_argument("--heapsize", help="device heap (default: 128k on 32-bit, 256k on 64)")
    parser.add_argument("--deadline", type=float, default=20.0,
                        help="seconds a round waits for updates")
    parser.add_argument("--registry", action="store_true",
                        help="keep a semantic registry in OUT/registry.sqlite: the boards' "
                             "Thing Descriptions and a model card per round (slower)")
    parser.add_argument("--no-evaluation", action="store_true",
                        help="skip the method comparison (metaeval's TinyReptile, Reptile, "
                             "FedAvg, jointly trained, local-only and random init with the "
                             "same settings, beside this fleet)")
    parser.add_argument("--eval-tasks", type=int, default=100,
                        help="held-out tasks every model is scored on (100)")
    parser.add_argument("--unsigned", action="store_true",
                        help="no fleet key (default: a random HMAC key per run)")


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from ..simulate import SimConfig
    from ..simulate import run as simulate

    cfg = SimConfig(devices=args.devices, rounds=args.rounds, task=args.task,
                    out=Path(args.out) if args.out else None, broker=args.broker,
                    strategy=args.strategy, seed=args.seed, k=args.k, lr_shift=args.lr_shift,
                    epsilon=args.epsilon, build=args.build, heapsize=args.heapsize,
                    drift=args.drift, rate=args.rate, deadline=args.deadline,
                    fleet_key="" if args.unsigned else None, registry=args.registry,
                    evaluation=not args.no_evaluation, eval_tasks=args.eval_tasks)
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean shutdown as Ctrl-C

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        res = simulate(cfg)
    finally:
        signal.signal(signal.SIGTERM, old)
    first, last = res.initial, (res.rounds[-1] if res.rounds else res.initial)
    print(f"held-out MSE after {cfg.eval_steps} steps: round 0 {first.heldout_after:.3f} -> "
          f"round {last.round} {last.heldout_after:.3f} "
          f"(before adaptation {first.heldout_before:.3f} -> {last.heldout_before:.3f})")
    ev = res.evaluation
    if ev:
        at, fixed = ev["steps"], ev["methods"]["mse"]["fixed"]
        fleet = ev["fleet"]["mse"]["fixed"][str(at)]
        print(f"after {at} steps, fixed point: this fleet {fleet:.3f}, "
              + ", ".join(f"{m} {fixed[m][str(at)]:.3f}" for m in fixed)
              + f"; fleet / simulated {ev['same_method']} {ev['ratio']['fixed']:.2f}")
    print(f"{len(res.rounds)} rounds in {res.elapsed:.1f} s; report: {res.out}/report.md")
    return 0
