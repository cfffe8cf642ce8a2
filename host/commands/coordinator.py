"""`tinyfleet coordinator`: run federated rounds over MQTT, checkpointed in SQLite."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="MQTT broker (default: start an embedded Mosquitto on loopback)")
    parser.add_argument("--fleet", default="demo", help="fleet name (topic prefix tf/FLEET/)")
    parser.add_argument("--model", default="sine",
                        help="model name (topic segment); sine = 1-40-40-1, digits = 64-32-10")
    parser.add_argument("--sizes", help="layer sizes, e.g. 1-40-40-1 (default: from --model)")
    parser.add_argument("--strategy", default="reptile",
                        choices=["reptile", "tinyreptile", "fedavg", "local"])
    parser.add_argument("--rounds", type=int, default=10, help="rounds to complete")
    parser.add_argument("--k", type=int, default=32, help="local SGD steps per round")
    parser.add_argument("--per-round", type=int, default=0, metavar="N",
                        help="devices per round (0: every online device; tinyreptile: 1)")
    parser.add_argument("--lr-shift", type=int, default=6,
                        help="device learning rate 2**-S for the round's steps")
    parser.add_argument("--epsilon", type=float, default=1.0, help="outer step size at round 1")
    parser.add_argument("--epsilon-end", type=float, default=0.0,
                        help="outer step size the schedule anneals towards")
    parser.add_argument("--schedule", default="linear", choices=["constant", "linear", "cosine"])
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="seconds a round waits for updates")
    parser.add_argument("--min-replies", type=int, default=1,
                        help="updates a round needs; fewer -> retried, then skipped")
    parser.add_argument("--attempts", type=int, default=3, help="tries per round")
    parser.add_argument("--online-wait", type=float, default=None,
                        help="seconds between 'waiting for devices' log lines "
                             "(default: --deadline)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and selection")
    parser.add_argument("--db", default="tinyfleet-coordinator.sqlite",
                        help="checkpoint database (resumed if it exists)")
    parser.add_argument("--registry", metavar="PATH", default="tinyfleet-registry.sqlite",
                        help="semantic registry: record the boards' self-descriptions, select "
                             "only boards that can run the model, write a model card per "
                             "global (read by tinyfleet devices/models/match; default: "
                             "tinyfleet-registry.sqlite)")
    parser.add_argument("--no-registry", dest="registry", action="store_const", const=None,
                        help="no registry: select any online board, write no model cards")
    parser.add_argument("--fleet-key-env", metavar="VAR",
                        help="environment variable holding the fleet HMAC key "
                             "(text, or hex:...)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every update")


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    import threading

    from ..broker import EmbeddedBroker, parse_broker
    from ..checkpoint import Checkpoint
    from ..coord_codec import parse_key
    from ..coordinator import MODELS, Config, Coordinator, parse_sizes
    from ..errors import TinyFleetError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    elif args.model in MODELS:
        sizes = MODELS[args.model]
    else:
        raise TinyFleetError(f"unknown model {args.model!r}: give --sizes "
                             f"(known: {', '.join(MODELS)})")
    key = None
    if args.fleet_key_env:
        text = os.environ.get(args.fleet_key_env)
        if not text:
            raise TinyFleetError(f"environment variable {args.fleet_key_env} is empty or unset")
        try:
            key = parse_key(text)
        except ValueError as exc:
            raise TinyFleetError(str(exc)) from None
    per_round = 1 if args.strategy == "tinyreptile" else args.per_round
    cfg = Config(fleet=args.fleet, model=args.model, sizes=sizes, strategy=args.strategy,
                 rounds=args.rounds, per_round=per_round, k=args.k, lr_shift=args.lr_shift,
                 epsilon=args.epsilon, epsilon_end=args.epsilon_end, schedule=args.schedule,
                 deadline=args.deadline, min_replies=args.min_replies, attempts=args.attempts,
                 online_wait=args.online_wait, seed=args.seed, key=key,
                 registry=args.registry)
    cfg.check()

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("tinyfleet.coordinator").info("signal %d: finishing", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = None
    try:
        with Checkpoint(args.db) as ck:  # a bad --db fails before a broker is started
            if args.broker:
                host, port = parse_broker(args.broker)
            else:
                broker = EmbeddedBroker().start()
                host, port = broker.host, broker.port
                print(f"embedded Mosquitto on {broker.address}", flush=True)
            coord = Coordinator(cfg, host, port, ck)
            coord.run(stop)
            last = coord.last_round
        print(f"coordinator: last completed round {last} of {cfg.rounds} ({args.db})",
              flush=True)
        return 0
    finally:
        if broker is not None:
            broker.stop()
        for s, h in old.items():
            signal.signal(s, h)
