"""`tinyfleet models`: the model cards in the semantic registry."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .devices import add_common

    add_common(parser)
    parser.add_argument("--card", metavar="MODEL",
                        help="print one model card (name, name@VERSION or FLEET/name/vN)")
    parser.add_argument("--all", action="store_true",
                        help="every version (default: the latest of each model)")


def run(args: argparse.Namespace) -> int:
    import json

    from .. import registry as R
    from .devices import rdf_output

    conds = R.parse_where(args.where, R.MODEL_FIELDS) if args.where else []
    with R.Registry(args.db, create=False) as reg:
        if rdf_output(reg, args):
            return 0
        if args.card:
            print(json.dumps(reg.card(args.card, args.fleet), indent=1))
            return 0
        cards = reg.cards(fleet=args.fleet)
    if not args.all:
        latest: dict[tuple[str, str], dict] = {}
        for c in cards:  # oldest first: the last one wins
            latest[(c.get("fleet", ""), c["name"])] = c
        cards = list(latest.values())
    rows = [(c, R.model_fields(c)) for c in cards]
    keep = {id(f) for f in R.where([f for _, f in rows], conds)}
    rows = [(c, f) for c, f in rows if id(f) in keep]
    if args.json:
        print(json.dumps([c for c, _ in rows], indent=1))
        return 0
    if not rows:
        print("no models" + (" match" if conds else " registered"))
        return 0

    def mse(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(R.table(["MODEL", "FLEET", "TASK", "SIZES", "PARAMS", "MACS", "TRAIN MACS",
                   "RAM", "FLASH", "SENSOR", "MSE", "ADAPTED", "ROUNDS", "DEVICES"],
                  [[f"{f['name']}@v{f['version']}", f["fleet"], f["task"], f["sizes"],
                    f["params"], f["macs"], f["train_macs"], R.size_text(f["ram"]),
                    R.size_text(f["flash"]), ",".join(f["sensor"]) or "-", mse(f["mse"]),
                    mse(f["mse_adapted"]), f["rounds"], f["devices"]] for _, f in rows]))
    return 0
