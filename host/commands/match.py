"""`tinyfleet match --model M`: which boards can run a model, and why the others cannot."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .devices import add_common

    parser.add_argument("--model", required=True, metavar="M",
                        help="model card: name (latest version), name@VERSION or FLEET/name/vN")
    add_common(parser, rdf=False)
    parser.add_argument("--ok", action="store_true", help="only the boards that can run it")


def run(args: argparse.Namespace) -> int:
    import json

    from .. import registry as R

    conds = R.parse_where(args.where, R.DEVICE_FIELDS) if args.where else []
    with R.Registry(args.db, create=False) as reg:
        card = reg.card(args.model, args.fleet)
        recs = reg.devices(args.fleet)
    fields = {r.description.id: R.device_fields(r.description, r.last_seen) for r in recs}
    keep = {f["id"] for f in R.where(list(fields.values()), conds)}
    verdicts = [R.check(card, r.description) for r in recs if r.description.id in keep]
    if args.ok:
        verdicts = [v for v in verdicts if v.ok]
    if args.json:
        print(json.dumps({"model": card["id"], "requirements": card.get("requirements", {}),
                          "boards": [v.to_json() for v in verdicts]}, indent=1))
        return 0
    req = card.get("requirements", {})
    ram = ", ".join(f"{R.size_text(v)} ({k})" for k, v in sorted(req.get("ram", {}).items()))
    print(f"{card['id']}: RAM {ram or '-'}, flash {R.size_text(req.get('flash', 0))}, "
          f"sensors {', '.join(req.get('sensors', [])) or '-'}, "
          f"MicroPython >= {req.get('min_version', '-')}")
    if not verdicts:
        print("no boards" + (" match --where" if conds else " registered"))
        return 0
    print(R.table(["BOARD", "CAN RUN", "KERNEL", "WHY NOT / NOTES"],
                  [[v.device, "yes" if v.ok else "no", v.kernel or "-",
                    "; ".join(v.reasons or v.notes) or "-"] for v in verdicts]))
    return 0
