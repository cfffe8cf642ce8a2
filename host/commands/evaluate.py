"""`tinyfleet evaluate`: meta-learning methods simulated on the host, scored on held-out tasks."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=300,
                        help="batched rounds; TinyReptile runs rounds x boards (300)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds averaged (3)")
    parser.add_argument("--tasks", type=int, default=200, help="held-out tasks (200)")
    parser.add_argument("--boards", type=int, default=8, help="simulated boards (8)")
    parser.add_argument("--k", type=int, default=32, help="fresh samples per round (32)")
    parser.add_argument("--drift-rounds", type=int, default=3,
                        help="a board's task drifts every N of its rounds (3)")
    parser.add_argument("--lr-shift", type=int, default=6,
                        help="inner learning rate 2**-N (6: 0.0156)")
    parser.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"],
                        help="Reptile/TinyReptile ε schedule from 1 to 0 (linear)")
    parser.add_argument("--arith", default="both", choices=["both", "fixed", "float"],
                        help="fixed point (the boards' integers), float64 reference, or both")
    parser.add_argument("--no-wire", action="store_true",
                        help="keep Q24 weights between rounds (default: int16 Q12, as the wire)")
    parser.add_argument("--recovery-target", type=float, default=0.5,
                        help="drift recovery: MSE a drifted board must reach (0.5)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the drift recovery")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes (the two arithmetics run side by side) (2)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--out", help="report directory (default: ./runs/evaluate-<UTC time>)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from .. import metaeval
    from ..errors import TinyFleetError

    try:
        settings = metaeval.Settings(rounds=args.rounds, seeds=args.seeds, tasks=args.tasks,
                                     boards=args.boards, k=args.k,
                                     drift_rounds=args.drift_rounds, lr_shift=args.lr_shift,
                                     schedule=args.schedule, wire=not args.no_wire,
                                     recovery_target=args.recovery_target)
    except ValueError as exc:
        raise TinyFleetError(str(exc)) from None
    if args.jobs < 1:
        raise TinyFleetError("--jobs must be >= 1")
    ariths = metaeval.ARITHMETICS if args.arith == "both" else (args.arith,)
    out = Path(args.out) if args.out else Path("runs") / time.strftime(
        "evaluate-%Y%m%d-%H%M%S", time.gmtime())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFleetError(f"cannot create {out}: {exc.strerror}") from None

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(f"evaluating {', '.join(metaeval.METHODS)} ({'/'.join(ariths)}): "
          f"{settings.rounds} rounds x {settings.boards} boards, {settings.seeds} seeds, "
          f"{settings.tasks} held-out tasks...", file=sys.stderr, flush=True)
    rep = metaeval.run(settings, ariths, recovery=not args.no_recovery, jobs=args.jobs,
                       progress=progress)
    data = rep.to_json()
    (out / "evaluate.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "evaluate.md").write_text(metaeval.format_markdown(rep))
    if args.json:
        print(json.dumps(data))
    else:
        print(metaeval.format_text(rep))
        print(f"report: {out}/evaluate.md, {out}/evaluate.json")
    return 0
