"""`tinyfleet devices`: the boards in the semantic registry (self-description, TD)."""

from __future__ import annotations

import argparse


def add_common(parser: argparse.ArgumentParser, rdf: bool = True) -> None:
    """Options devices, models and match share."""
    parser.add_argument("--db", default="tinyfleet-registry.sqlite", metavar="PATH",
                        help="registry database (default: tinyfleet-registry.sqlite)")
    parser.add_argument("--fleet", help="only this fleet")
    parser.add_argument("--where", metavar="COND",
                        help="filter: field op value joined by 'and', units k/M (x1024), "
                             "e.g. \"ram_free>=100k and sensor=temperature\"")
    parser.add_argument("--json", action="store_true", help="print JSON")
    if rdf:
        parser.add_argument("--rdf", choices=["turtle", "json-ld"],
                            help="print the registry (boards and models) as RDF "
                                 "(needs tinyfleet[semantic])")
        parser.add_argument("--sparql", metavar="QUERY",
                            help="run a SPARQL SELECT over that RDF (prefixes td: sosa: ssn: "
                                 "tf: bound; a file name or the query text)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--td", metavar="ID", help="print one board's W3C WoT Thing Description")


def rdf_output(reg: object, args: argparse.Namespace) -> bool:
    """Handle --rdf / --sparql; True when one of them was given (and printed)."""
    import json
    from pathlib import Path

    from .. import registry as R

    if not (args.rdf or args.sparql):
        return False
    assert isinstance(reg, R.Registry)
    g = R.to_graph(reg.devices(args.fleet), reg.cards(fleet=args.fleet))
    if args.rdf:
        print(R.serialize(g, args.rdf))
    if args.sparql:
        q = args.sparql
        if "{" not in q and Path(q).is_file():
            q = Path(q).read_text()
        prefixes = "".join(f"PREFIX {p}: <{u}>\n" for p, u in (
            ("td", "https://www.w3.org/2019/wot/td#"), ("sosa", R.tdmod.NS["sosa"]),
            ("ssn", R.tdmod.NS["ssn"]), ("tf", R.tdmod.NS["tf"]),
            ("rdfs", "http://www.w3.org/2000/01/rdf-schema#")))
        rows = R.sparql(g, prefixes + q)
        if args.json:
            print(json.dumps(rows, indent=1, default=str))
        else:
            names = list(rows[0]) if rows else []
            print(R.table(names, [[r[n] for n in names] for r in rows]) if rows
                  else "no results")
    return True


def run(args: argparse.Namespace) -> int:
    import json

    from .. import registry as R
    from ..errors import TinyFleetError

    conds = R.parse_where(args.where, R.DEVICE_FIELDS) if args.where else []
    with R.Registry(args.db, create=False) as reg:
        if rdf_output(reg, args):
            return 0
        recs = reg.devices(args.fleet)
        if args.td:
            rec = next((r for r in recs if r.description.id == args.td), None)
            if rec is None:
                raise TinyFleetError(f"no board {args.td!r} in {args.db}")
            print(json.dumps(rec.td, indent=1))
            return 0
    rows = [(r, R.device_fields(r.description, r.last_seen)) for r in recs]
    keep = {id(f) for f in R.where([f for _, f in rows], conds)}
    rows = [(r, f) for r, f in rows if id(f) in keep]
    if args.json:
        print(json.dumps([{**r.description.to_json(), "fleet": r.description.fleet,
                           "first_seen": r.first_seen, "last_seen": r.last_seen,
                           "updates": r.updates, "td": r.td} for r, _ in rows], indent=1))
        return 0
    if not rows:
        print("no boards" + (" match" if conds else " registered"))
        return 0
    print(R.table(["ID", "FLEET", "BOARD", "RUNTIME", "RAM", "FREE", "FLASH FREE", "KERNELS",
                   "SENSORS", "MODEL", "LAST SEEN"],
                  [[f["id"], f["fleet"], f["board"] or "-",
                    f"{f['runtime']} {f['version']}".strip(), R.size_text(f["ram"]),
                    R.size_text(f["ram_free"]), R.size_text(f["flash_free"]),
                    ",".join(f["kernels"]) or f["kernel"] or "-",
                    ",".join(f["sensor"]) or "-",
                    f"{f['model']} {f['sizes']}".strip() or "-", R.ago(f["last_seen"])]
                   for _, f in rows]))
    return 0
