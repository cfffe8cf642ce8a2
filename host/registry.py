"""The semantic registry: boards (latest sanitized self-description, its TD, last seen)
and model cards, in SQLite; matching models to boards; --where filters; RDF export.

Its own SQLite file (default `tinyfleet-registry.sqlite`; a coordinator keeps it next to
its checkpoint), not tables in the checkpoint: the checkpoint is the coordinator's
crash-safe round log and refuses foreign tables, while the registry is written by the
coordinator and read by any number of CLI commands, and can be deleted and rebuilt from
the retained td topics without losing a round. WAL mode, so readers never block it.

Matching (after SeLoC-ML's SPARQL queries, "needs accelerometer, RAM >= 121 kB"): a board
can run a model when its runtime is MicroPython >= the card's minimum, it offers a
kernel the card was measured with, it has every sensor the input needs, its free RAM
covers the measured RAM of that kernel and its free flash the persisted weights. A board
already running the same layer sizes holds that RAM and flash already. Figures a board
does not report (0) are not held against it but listed as unverified.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import td as tdmod
from .errors import TinyFleetError
from .td import Description

SCHEMA_VERSION = 1
DEFAULT_PATH = "tinyfleet-registry.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    fleet       TEXT NOT NULL,
    id          TEXT NOT NULL,
    description TEXT NOT NULL,     -- sanitized self-description (JSON, td.Description)
    td          TEXT NOT NULL,     -- its W3C WoT Thing Description 1.1 (JSON-LD)
    first_seen  REAL NOT NULL,     -- unix time
    last_seen   REAL NOT NULL,
    updates     INTEGER NOT NULL,  -- descriptions accepted so far
    PRIMARY KEY (fleet, id)
);
CREATE TABLE IF NOT EXISTS models (
    fleet   TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    card    TEXT NOT NULL,         -- model card (JSON, tinyfleet.modelcard)
    created REAL NOT NULL,
    PRIMARY KEY (fleet, name, version)
);
"""


def _kib(n: float) -> str:
    """Bytes in the unit --where takes (k = 1024): 0.6k, 13.8k, 2.0M, 228.9G."""
    for unit, scale in (("G", 1024 ** 3), ("M", 1024 ** 2)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n / 1024:.1f}k"


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) or (0,)


# ---------------------------------------------------------------------------- matching

@dataclass(frozen=True)
class Verdict:
    """Whether one board can run one model, and why not."""

    device: str
    ok: bool
    kernel: str = ""                                      # the kernel it would use
    reasons: tuple[str, ...] = ()                         # why it cannot
    notes: tuple[str, ...] = ()                           # unverified figures, shortcuts

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "ok": self.ok, "kernel": self.kernel,
                "reasons": list(self.reasons), "notes": list(self.notes)}


def check(card: Mapping[str, Any], d: Description) -> Verdict:
    """Can board `d` run the model of `card`? A pure function (see the module doc)."""
    req = card.get("requirements", {})
    sizes = list(card.get("architecture", {}).get("sizes", []))
    reasons: list[str] = []
    notes: list[str] = []
    if d.runtime.lower() != str(req.get("runtime", "MicroPython")).lower():
        reasons.append(f"runtime {d.runtime!r}, needs {req.get('runtime', 'MicroPython')}")
    minv = str(req.get("min_version", ""))
    if minv:
        if not d.version:
            notes.append("MicroPython version not reported")
        elif _vtuple(d.version) < _vtuple(minv):
            reasons.append(f"MicroPython {d.version} < {minv}")
    have = set(d.kernels or ((d.kernel,) if d.kernel else ("bytecode",)))
    ram_need: dict[str, int] = {k: int(v) for k, v in req.get("ram", {}).items()}
    common = [k for k in ("viper", "ulab", "bytecode") if k in have and k in ram_need]
    if not ram_need:  # the card's memory was not measured (no MicroPython where it was made)
        common = [k for k in ("viper", "ulab", "bytecode") if k in have] or sorted(have)
        notes.append("model RAM not measured")
    elif not common:
        reasons.append(f"kernel: board offers {', '.join(sorted(have)) or 'none'}, model "
                       f"measured for {', '.join(sorted(ram_need)) or 'none'}")
    sensors = {s.name for s in d.sensors} | {s.observes for s in d.sensors}
    for s in req.get("sensors", []):
        if s not in sensors:
            reasons.append(f"missing sensor {s}")
    kernel = ""
    same = bool(sizes) and list(d.model.sizes) == sizes
    if common:
        if same:
            kernel = common[0]
            notes.append("runs these layer sizes already (RAM and flash held)")
        elif not d.ram_free or not ram_need:
            kernel = common[0]
            if not d.ram_free:
                notes.append("free RAM not reported")
        else:
            fits = [k for k in common if ram_need[k] <= d.ram_free]
            if fits:
                kernel = fits[0]
            else:
                k = min(common, key=lambda k: ram_need[k])
                reasons.append(f"RAM free {_kib(d.ram_free)} < {_kib(ram_need[k])} needed ({k})")
    flash = int(req.get("flash", 0))
    if flash and not same:
        if not d.flash_free:
            notes.append("free flash not reported")
        elif d.flash_free < flash:
            reasons.append(f"flash free {_kib(d.flash_free)} < {_kib(flash)} needed")
    ok = not reasons
    return Verdict(d.id, ok, kernel if ok else "", tuple(reasons), tuple(notes))


# ---------------------------------------------------------------------------- --where

_UNITS = {"": 1, "k": 1024, "K": 1024, "m": 1024 ** 2, "M": 1024 ** 2}
_COND = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|!=|==|=|>|<)\s*"
                   r"(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.:+\-]+)\s*\Z")
_NUM = re.compile(r"(-?\d+(?:\.\d+)?)([kKmM]?)\Z")


@dataclass(frozen=True)
class Cond:
    """One `field op value` of a --where filter."""

    field: str
    op: str
    value: str | float


def parse_where(text: str, fields: Iterable[str]) -> list[Cond]:
    """'ram_free>=100k and sensor=temperature' -> conditions (joined by AND).

    Values: numbers with optional unit k (1024) or M (1024**2), or words / quoted strings.

    Raises:
        TinyFleetError: an unknown field or a condition that does not parse (one line).
    """
    known = sorted(fields)
    if len(text) > 1000:
        raise TinyFleetError("--where is too long (1000 characters at most)")
    out: list[Cond] = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        m = _COND.match(part)
        if not m:
            raise TinyFleetError(f"--where: cannot read {part.strip()[:60]!r} "
                                 f"(field op value, e.g. ram_free>=100k; ops = != < <= > >=)")
        name, op, raw = m.groups()
        if name not in known:
            raise TinyFleetError(f"--where: unknown field {name!r} (fields: {', '.join(known)})")
        op = "=" if op == "==" else op
        value: str | float
        num = _NUM.match(raw)
        if raw[0] in "\"'":
            value = raw[1:-1]
        elif num:
            value = float(num.group(1)) * _UNITS[num.group(2)]
        else:
            value = raw
        out.append(Cond(name, op, value))
    return out


def _cmp(have: Any, op: str, want: str | float) -> bool:
    if isinstance(have, (list, tuple, set)):  # sensors, kernels: contains
        got = any(_cmp(h, "=", want) for h in have)
        if op == "=":
            return got
        if op == "!=":
            return not got
        return False
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
        a, b = float(have), want
    elif isinstance(have, str) and re.fullmatch(r"\d+(\.\d+){0,2}", have) and \
            re.fullmatch(r"\d+(\.\d+){0,2}", str(want).rstrip("0").rstrip(".") or "0"):
        a, b = _vtuple(have), _vtuple(_num_text(want))  # versions: 1.25.0 >= 1.22
    else:
        a, b = str(have), _num_text(want)
    return {"=": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b,
            "<=": a <= b}[op]


def _num_text(v: str | float) -> str:
    if isinstance(v, float):
        return str(int(v)) if v == int(v) else str(v)
    return v


def where(rows: Sequence[Mapping[str, Any]], conds: Sequence[Cond]) -> list[Mapping[str, Any]]:
    """The rows (flat field dicts) meeting every condition; a missing field never matches."""
    return [r for r in rows if all(c.field in r and r[c.field] is not None
                                   and _cmp(r[c.field], c.op, c.value) for c in conds)]


def device_fields(d: Description, last_seen: float = 0.0) -> dict[str, Any]:
    """A board as the flat row --where filters and the tables print."""
    return {"id": d.id, "fleet": d.fleet, "board": d.board, "mcu": d.mcu, "port": d.port,
            "clock": d.clock,
            "runtime": d.runtime, "version": d.version, "ram": d.ram, "ram_free": d.ram_free,
            "flash": d.flash, "flash_free": d.flash_free, "kernel": d.kernel,
            "kernels": list(d.kernels),
            "sensor": sorted({s.name for s in d.sensors} | {s.observes for s in d.sensors}),
            "model": d.model.name, "sizes": "-".join(map(str, d.model.sizes)),
            "last_seen": last_seen, "age": max(0.0, time.time() - last_seen)}


DEVICE_FIELDS = tuple(device_fields(Description("x")))


def model_fields(card: Mapping[str, Any]) -> dict[str, Any]:
    """A model card as a flat row."""
    req = card.get("requirements", {})
    ram = req.get("ram", {})
    mse = card.get("quality", {}).get("heldout_mse", {})
    return {"id": card.get("id", ""), "name": card.get("name", ""),
            "version": card.get("version", 0), "fleet": card.get("fleet", ""),
            "task": card.get("task", {}).get("name", ""),
            "sizes": "-".join(map(str, card.get("architecture", {}).get("sizes", []))),
            "params": card.get("parameters", 0),
            "macs": card.get("macs", {}).get("inference", 0),
            "train_macs": card.get("macs", {}).get("train_step", 0),
            "ram": min(ram.values()) if ram else 0, "flash": req.get("flash", 0),
            "sensor": list(req.get("sensors", [])), "kernels": sorted(ram),
            "mse": mse.get("0"), "mse_adapted": mse.get(max(mse, key=int)) if mse else None,
            "rounds": len(card.get("lineage", {}).get("rounds", [])),
            "devices": len(card.get("lineage", {}).get("devices", []))}


MODEL_FIELDS = tuple(model_fields({}))


# ---------------------------------------------------------------------------- the store

@dataclass
class DeviceRecord:
    """One registered board."""

    description: Description
    td: dict[str, Any] = field(repr=False)
    first_seen: float
    last_seen: float
    updates: int


class Registry:
    """The registry database; a context manager. Thread-confined like Checkpoint.

    Raises (constructor):
        TinyFleetError: the file cannot be opened or is not a TinyFleet registry.
    """

    def __init__(self, path: str | Path = DEFAULT_PATH, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise TinyFleetError(f"no registry at {self.path} (a coordinator with a registry "
                                 f"writes one; or give --db)")
        try:
            self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
            tables = {r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and not {"meta", "devices", "models"} <= tables:
                raise TinyFleetError(f"{self.path} is an SQLite database but not a TinyFleet "
                                     f"registry (tables: {', '.join(sorted(tables))})")
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync per write: the registry is rebuilt from retained descriptions anyway.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                self._db.execute("ROLLBACK")
                raise TinyFleetError(f"{self.path} has registry schema {row[0]}, this "
                                     f"TinyFleet reads {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._close_quietly()
            raise TinyFleetError(f"{self.path} is not a usable registry database: {exc}") \
                from None
        except BaseException:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass

    # -- devices ------------------------------------------------------------------------
    def record_description(self, fleet: str, device: str, payload: bytes | str | Mapping[str, Any],
                           broker: str | None = None, now: float | None = None) -> Description:
        """Sanitize a board's self-description, expand its TD and store both.

        Raises:
            tinyfleet.td.DescriptionError: the description is rejected (nothing stored).
        """
        d = tdmod.sanitize(payload, device)
        if d.fleet and d.fleet != fleet:
            raise tdmod.DescriptionError(f"fleet {d.fleet!r} on fleet {fleet!r}'s topic")
        thing = tdmod.expand(d, fleet, broker)
        t = time.time() if now is None else now
        desc = json.dumps(d.to_json(), sort_keys=True)
        self._db.execute(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT(fleet, id) DO UPDATE "
            "SET description=excluded.description, td=excluded.td, "
            "last_seen=excluded.last_seen, updates=updates+1",
            (fleet, d.id, desc, json.dumps(thing, sort_keys=True), t, t))
        return d

    def seen(self, fleet: str, device: str, now: float | None = None) -> None:
        """Note that a registered board is alive (a status message)."""
        self._db.execute("UPDATE devices SET last_seen=? WHERE fleet=? AND id=?",
                         (time.time() if now is None else now, fleet, device))

    def devices(self, fleet: str | None = None) -> list[DeviceRecord]:
        """Registered boards, by fleet and id (rows that fail sanitizing are skipped)."""
        q = "SELECT description, td, first_seen, last_seen, updates, fleet FROM devices"
        rows = self._db.execute(q + (" WHERE fleet=?" if fleet else "") + " ORDER BY fleet, id",
                                (fleet,) if fleet else ()).fetchall()
        out = []
        for desc, thing, first, last, n, fl in rows:
            try:  # the file may have been edited by hand: sanitize what comes back too
                stored = json.loads(desc)
                d = tdmod.sanitize(stored)
                dropped = stored.get("dropped", [])
                d = dataclasses.replace(d, fleet=d.fleet or fl, dropped=tuple(
                    str(x)[:32] for x in dropped[:tdmod.MAX_LIST] if isinstance(x, str)))
            except (ValueError, TypeError, AttributeError):
                continue
            out.append(DeviceRecord(d, json.loads(thing), float(first), float(last), int(n)))
        return out

    def device(self, fleet: str, device: str) -> DeviceRecord | None:
        return next((r for r in self.devices(fleet) if r.description.id == device), None)

    # -- models -------------------------------------------------------------------------
    def add_card(self, card: Mapping[str, Any]) -> None:
        """Store (or replace) a model card, keyed by fleet, name and version."""
        self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                         (card.get("fleet", ""), card["name"], int(card["version"]),
                          json.dumps(card, sort_keys=True), float(card.get("created", 0))))

    def cards(self, name: str | None = None, fleet: str | None = None) -> list[dict[str, Any]]:
        """Model cards, oldest first within a model."""
        q, args = "SELECT card FROM models WHERE 1=1", []
        if name:
            q, args = q + " AND name=?", args + [name]
        if fleet:
            q, args = q + " AND fleet=?", args + [fleet]
        return [json.loads(r[0]) for r in
                self._db.execute(q + " ORDER BY fleet, name, version", args).fetchall()]

    def card(self, model: str, fleet: str | None = None) -> dict[str, Any]:
        """A card by 'name' (its latest version), 'name@v3' / 'name/v3', or card id.

        Raises:
            TinyFleetError: no such model in the registry.
        """
        m = re.fullmatch(r"(?:([^/@]+)/)?([^/@]+)(?:[@/]v?(\d+))?", model)
        if not m:
            raise TinyFleetError(f"bad model {model!r} (name, name@VERSION or FLEET/name/vN)")
        fl, name, ver = m.group(1) or fleet, m.group(2), m.group(3)
        cards = [c for c in self.cards(name, fl) if ver is None or c["version"] == int(ver)]
        if not cards:
            known = sorted({c["name"] for c in self.cards()})
            raise TinyFleetError(f"no model {model!r} in {self.path} "
                                 f"(models: {', '.join(known) or 'none'})")
        return cards[-1]

    # -- matching -----------------------------------------------------------------------
    def match(self, card: Mapping[str, Any], fleet: str | None = None) -> list[Verdict]:
        """A verdict for every registered board (of `fleet`), by device id."""
        return [check(card, r.description) for r in self.devices(fleet)]

    def eligible(self, card: Mapping[str, Any], fleet: str) -> Callable[[str], bool]:
        """A predicate device id -> can run the model, from the boards registered now."""
        ok = {v.device for v in self.match(card, fleet) if v.ok}
        return ok.__contains__

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- RDF

def _rdflib() -> Any:
    try:
        import rdflib
    except ImportError:
        raise TinyFleetError("RDF export and SPARQL need rdflib: "
                             "pip install 'tinyfleet[semantic]'") from None
    return rdflib


def to_graph(devices: Sequence[DeviceRecord], cards: Sequence[Mapping[str, Any]]) -> Any:
    """The registry as an rdflib Graph: boards (td:Thing, sosa:Platform, SSN sensors) and
    models (tf:Model with requirements). Built from our records, not by parsing the TDs'
    JSON-LD, which would fetch the remote TD context."""
    rdflib = _rdflib()
    from rdflib import RDF, RDFS, XSD, Literal, Namespace, URIRef

    g = rdflib.Graph()
    TD = Namespace("https://www.w3.org/2019/wot/td#")
    SOSA, SSN, TF = (Namespace(tdmod.NS[p]) for p in ("sosa", "ssn", "tf"))
    for p, ns in (("td", TD), ("sosa", SOSA), ("ssn", SSN), ("tf", TF)):
        g.bind(p, ns)

    def lit(v: Any) -> Any:
        if isinstance(v, bool):
            return Literal(v)
        if isinstance(v, int):
            return Literal(v, datatype=XSD.integer)
        if isinstance(v, float):
            return Literal(v, datatype=XSD.double)
        return Literal(str(v))

    for r in devices:
        d = r.description
        s = URIRef(tdmod.thing_id(d))
        g.add((s, RDF.type, TD.Thing))
        g.add((s, RDF.type, SOSA.Platform))
        g.add((s, TD.title, Literal(d.id)))
        for k, v in (("board", d.board), ("mcu", d.mcu), ("port", d.port),
                     ("clockHz", d.clock), ("tinyfleetVersion", d.tinyfleet),
                     ("runtime", d.runtime),
                     ("runtimeVersion", d.version), ("ram", d.ram), ("ramFree", d.ram_free),
                     ("flash", d.flash), ("flashFree", d.flash_free), ("kernel", d.kernel),
                     ("fleet", d.fleet), ("model", d.model.name),
                     ("lastSeen", r.last_seen)):
            if v not in ("", 0):
                g.add((s, TF[k], lit(v)))
        for k in d.kernels:
            g.add((s, TF.offersKernel, Literal(k)))
        for sen in d.sensors:
            n = URIRef(f"{s}:sensor:{sen.name}")
            g.add((s, SSN.hasSubSystem, n))
            g.add((n, RDF.type, SOSA.Sensor))
            g.add((n, RDFS.label, Literal(sen.name)))
            g.add((n, SOSA.observes, TF[sen.observes]))
            g.add((n, TF.virtual, Literal(sen.virtual)))
    for c in cards:
        m = URIRef(f"urn:tinyfleet:model:{c.get('id', c.get('name'))}")
        req = c.get("requirements", {})
        g.add((m, RDF.type, TF.Model))
        g.add((m, RDFS.label, Literal(c.get("name", ""))))
        for k, v in (("version", c.get("version")), ("parameters", c.get("parameters")),
                     ("macsInference", c.get("macs", {}).get("inference")),
                     ("macsTrainStep", c.get("macs", {}).get("train_step")),
                     ("flashNeeded", req.get("flash")), ("task", c.get("task", {}).get("name")),
                     ("layerSizes", "-".join(map(str, c.get("architecture", {}).get("sizes", [])))),
                     ("minRuntimeVersion", req.get("min_version"))):
            if v is not None:
                g.add((m, TF[k], lit(v)))
        for k, v in req.get("ram", {}).items():
            need = rdflib.BNode()
            g.add((m, TF.ramNeeded, need))
            g.add((need, TF.kernel, Literal(k)))
            g.add((need, TF.bytes, lit(int(v))))
        for s in req.get("sensors", []):
            g.add((m, TF.needsObservation, TF[s]))
        mse = c.get("quality", {}).get("heldout_mse", {})
        if "0" in mse:
            g.add((m, TF.heldoutMSE, lit(float(mse["0"]))))
    return g


def serialize(graph: Any, fmt: str) -> str:
    """Turtle ('turtle', 'ttl') or JSON-LD ('json-ld', 'jsonld') text.

    Raises:
        TinyFleetError: an unknown format.
    """
    f = {"turtle": "turtle", "ttl": "turtle", "json-ld": "json-ld", "jsonld": "json-ld"}.get(fmt)
    if f is None:
        raise TinyFleetError(f"unknown RDF format {fmt!r} (turtle or json-ld)")
    out = graph.serialize(format=f)
    return out.decode() if isinstance(out, bytes) else str(out)


def sparql(graph: Any, query: str) -> list[dict[str, Any]]:
    """Run a SPARQL SELECT; rows as {variable: value} (prefixes td, sosa, ssn, tf bound).

    Raises:
        TinyFleetError: the query does not parse or is not a SELECT.
    """
    try:
        res = graph.query(query)
    except Exception as exc:  # pyparsing / rdflib raise many types for a bad query
        raise TinyFleetError(f"SPARQL: {str(exc).splitlines()[0][:200]}") from None
    if res.type != "SELECT":
        raise TinyFleetError("SPARQL: only SELECT queries")
    names = [str(v) for v in res.vars]
    return [{n: (None if row[i] is None else row[i].toPython()) for i, n in enumerate(names)}
            for row in res]


# ---------------------------------------------------------------------------- CLI helpers

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def ago(t: float, now: float | None = None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago'."""
    s = max(0.0, (time.time() if now is None else now) - t)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


def size_text(n: int) -> str:
    """Bytes as '13.2k' ('-' for unknown)."""
    return _kib(n) if n else "-"
