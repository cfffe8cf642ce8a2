"""Board self-descriptions: sanitizing what a board publishes, and expanding it into a
W3C WoT Thing Description 1.1 (JSON-LD, with SOSA/SSN terms for the board's sensors and
the WoT MQTT binding vocabulary for its forms).

A board publishes a compact self-description (retained, on tf/<fleet>/dev/<id>/td; see
device/describe.py) rather than a full TD: a few hundred bytes instead of a few KB of
RAM. Anything on the wire is untrusted, so `sanitize()` parses it with hard limits
(size, nesting, string length, number ranges, no NaN/Infinity), keeps only the fields
below and returns a typed `Description`; `expand()` turns that into the TD, a pure
function. Accepted keys (aliases in brackets; unknown keys are dropped and named):

    id          device id (topic segment, [A-Za-z0-9_.:-]{1,64})         required
    fleet       fleet name                                               optional
    board       board name [platform]        e.g. 'Generic ESP32 module', 'linux'
    mcu         MCU / machine string [machine]             e.g. 'ESP32', 'Cortex-M3'
    port        MicroPython port (sys.platform);  clock  CPU Hz;  mpy  .mpy format number
    tinyfleet   TinyFleet version deployed (a string)
    runtime     'MicroPython 1.25.0' or 'MicroPython'; version [micropython] '1.25.0'
    ram         heap size, bytes [heap];  ram_free bytes free [mem_free]
    flash       filesystem size, bytes [fs, fs_size];  flash_free [fs_free]
    kernels     kernels the board offers, e.g. ['viper', 'bytecode'];  kernel (in use)
    sensors     ['temperature', ...] or [{'name':, 'observes':, 'unit':, 'virtual':}]
    model       {'name', 'sizes', 'params', 'version'} of the model it runs
    security    'nosec' | 'basic';  broker 'host:port' (the forms' authority)

A whole TD carrying these under a "tinyfleet" object (the first agent's format) is
accepted too. device/describe.py's docstring is the board side of this contract.
Reference: W3C WoT Thing Description 1.1, https://www.w3.org/TR/wot-thing-description11/;
SOSA/SSN, https://www.w3.org/TR/vocab-ssn/; WoT MQTT binding,
https://w3c.github.io/wot-binding-templates/bindings/protocols/mqtt/.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TD_CONTEXT = "https://www.w3.org/2022/wot/td/v1.1"
NS = {
    "sosa": "http://www.w3.org/ns/sosa/",
    "ssn": "http://www.w3.org/ns/ssn/",
    "mqv": "https://www.w3.org/2019/wot/mqtt#",
    "tf": "https://tinyfleet.example/ns#",  # TinyFleet's own terms (RAM, kernels, ...)
}

MAX_PAYLOAD = 8192     # bytes: a compact description is ~300; a legacy TD ~1 KB
MAX_DEPTH = 6          # JSON nesting accepted
MAX_STR = 128          # characters in any accepted string
MAX_LIST = 32          # items in kernels / sensors / sizes
MAX_BYTES = 1 << 40    # sanity bound on RAM/flash figures
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")
_WORD = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
_VERSION = re.compile(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")

_ALIASES = {"platform": "board", "machine": "mcu", "heap": "ram", "mem_free": "ram_free",
            "fs": "flash", "fs_size": "flash", "fs_free": "flash_free",
            "micropython": "version"}
_KNOWN = {"id", "fleet", "board", "mcu", "port", "clock", "mpy", "tinyfleet", "runtime",
          "version", "ram", "ram_free", "flash", "flash_free", "kernels", "kernel", "sensors",
          "model", "security", "broker"}


class DescriptionError(ValueError):
    """A self-description that cannot be accepted (the message says why, in one line)."""


@dataclass(frozen=True)
class Sensor:
    """One sensor of a board: what it is called and the property it observes."""

    name: str
    observes: str
    unit: str = ""
    virtual: bool = False  # simulated (the sine task's data source), not hardware


@dataclass(frozen=True)
class ModelInfo:
    """The model a board says it runs."""

    name: str = ""
    sizes: tuple[int, ...] = ()
    params: int = 0
    version: int = 0


@dataclass(frozen=True)
class Description:
    """A sanitized board self-description: every field typed and bounded."""

    id: str
    fleet: str = ""
    board: str = ""
    mcu: str = ""
    port: str = ""             # sys.platform: 'esp32', 'rp2', 'linux'
    clock: int = 0             # CPU clock, Hz (0: unknown)
    mpy: int = 0               # sys.implementation._mpy (0: unknown)
    tinyfleet: str = ""        # TinyFleet version deployed on the board
    runtime: str = "MicroPython"
    version: str = ""          # runtime version, 'major.minor.patch'
    ram: int = 0               # bytes (0: unknown)
    ram_free: int = 0
    flash: int = 0
    flash_free: int = 0
    kernels: tuple[str, ...] = ()
    kernel: str = ""
    sensors: tuple[Sensor, ...] = ()
    model: ModelInfo = field(default_factory=ModelInfo)
    security: str = "nosec"
    broker: str = ""
    dropped: tuple[str, ...] = ()  # unknown keys that were ignored (names, truncated)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Description:
        """Inverse of to_json (for what the registry stored; re-sanitized anyway)."""
        return sanitize(obj)


# ---------------------------------------------------------------------------- sanitizing

def _reject_constant(name: str) -> float:
    raise DescriptionError(f"{name} is not a number JSON allows")


def parse_payload(payload: bytes | str) -> Any:
    """Parse an MQTT payload as JSON with the limits above.

    Raises:
        DescriptionError: too big, not UTF-8 JSON, NaN/Infinity, or nested too deeply.
    """
    if len(payload) > MAX_PAYLOAD:
        raise DescriptionError(f"description of {len(payload)} bytes (limit {MAX_PAYLOAD})")
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        obj = json.loads(text, parse_constant=_reject_constant)
    except DescriptionError:
        raise
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise DescriptionError(f"not JSON: {str(exc)[:80]}") from None
    _check_depth(obj, 0)
    return obj


def _check_depth(obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DescriptionError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_depth(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_depth(v, depth + 1)


def _str(v: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(v, str):
        raise DescriptionError(f"{what}: expected a string, got {type(v).__name__}")
    if len(v) > MAX_STR or any(ord(c) < 32 for c in v):
        raise DescriptionError(f"{what}: string too long or with control characters")
    if pattern is not None and not pattern.match(v):
        raise DescriptionError(f"{what}: {v[:40]!r} is not allowed here")
    return v


def _int(v: Any, what: str, hi: int = MAX_BYTES) -> int:
    # bool is an int in Python; a float is accepted only when integral and finite.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DescriptionError(f"{what}: expected a number, got {type(v).__name__}")
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        raise DescriptionError(f"{what}: {v!r} is not a whole number")
    n = int(v)
    if not 0 <= n <= hi:
        shown = str(n) if len(str(n)) <= 20 else f"a {len(str(n))}-digit number"
        raise DescriptionError(f"{what}: {shown} out of range 0..{hi}")
    return n


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise DescriptionError(f"{what}: expected a list, got {type(v).__name__}")
    if len(v) > MAX_LIST:
        raise DescriptionError(f"{what}: {len(v)} items (limit {MAX_LIST})")
    return v


def _sensor(v: Any, i: int) -> Sensor:
    if isinstance(v, str):
        name = _str(v, f"sensors[{i}]", _WORD)
        return Sensor(name, name)
    if not isinstance(v, dict):
        raise DescriptionError(f"sensors[{i}]: expected a name or an object")
    name = _str(v.get("name"), f"sensors[{i}].name", _WORD)
    observes = _str(v.get("observes", name), f"sensors[{i}].observes", _WORD)
    unit = _str(v.get("unit", ""), f"sensors[{i}].unit") if v.get("unit") else ""
    virtual = v.get("virtual", False)
    if not isinstance(virtual, bool):
        raise DescriptionError(f"sensors[{i}].virtual: expected true or false")
    return Sensor(name, observes, unit, virtual)


def _model(v: Any) -> ModelInfo:
    if not isinstance(v, dict):
        raise DescriptionError("model: expected an object")
    sizes = tuple(_int(s, "model.sizes", 4096) for s in _list(v.get("sizes", []), "model.sizes"))
    return ModelInfo(name=_str(v.get("name", ""), "model.name") if v.get("name") else "",
                     sizes=sizes, params=_int(v.get("params", 0), "model.params", 1 << 31),
                     version=_int(v.get("version", 0), "model.version", 1 << 32))


def sanitize(raw: bytes | str | Mapping[str, Any], device: str | None = None) -> Description:
    """A board's self-description (payload bytes or parsed JSON) as a `Description`.

    device: the id from the topic it came on; the description must agree with it.

    Raises:
        DescriptionError: anything that cannot be accepted as is (never a crash, never a
            partial record): oversize, bad JSON, NaN, deep nesting, wrong types, out-of-range
            numbers, hostile strings, an id that differs from the topic's.
    """
    obj = parse_payload(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    if not isinstance(obj, Mapping):
        raise DescriptionError(f"expected a JSON object, got {type(obj).__name__}")
    _check_depth(obj, 0)
    src: dict[str, Any] = {}
    if isinstance(obj.get("tinyfleet"), Mapping):  # a whole TD with a tinyfleet member
        src.update(obj["tinyfleet"])
        src.setdefault("id", obj.get("title"))
    else:
        src.update(obj)
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in src.items():
        k = _ALIASES.get(key, key)
        if k == "dropped":
            continue  # our own record of what was dropped before (to_json round trip)
        if k not in _KNOWN:
            dropped.append(str(key)[:32])
        elif value is not None:
            out[k] = value
    if "id" not in out and device is not None:
        out["id"] = device
    if "id" not in out:
        raise DescriptionError("no device id")
    did = _str(out["id"], "id", _ID)
    if device is not None and did != device:
        raise DescriptionError(f"id {did!r} is not the topic's device {device!r}")
    runtime, version = "MicroPython", ""
    if "runtime" in out:
        runtime = _str(out["runtime"], "runtime")
        m = _VERSION.search(runtime)
        if m:
            version = m.group(0)
            runtime = runtime[:m.start()].strip() or "MicroPython"
    if "version" in out:
        v = out["version"]
        if isinstance(v, list):  # sys.implementation.version as a list
            v = ".".join(str(_int(x, "version", 999)) for x in _list(v, "version")[:3])
        m = _VERSION.fullmatch(_str(v, "version"))
        if not m:
            raise DescriptionError(f"version: {v[:20]!r} is not major.minor[.patch]")
        version = m.group(0)
    sensors = tuple(_sensor(s, i) for i, s in enumerate(_list(out.get("sensors", []),
                                                              "sensors")))
    security = _str(out.get("security", "nosec"), "security")
    if security not in ("nosec", "basic"):
        raise DescriptionError(f"security: {security[:20]!r} (expected nosec or basic)")
    broker = _str(out.get("broker", ""), "broker")
    if broker and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}(:\d{1,5})?", broker):
        raise DescriptionError(f"broker: {broker[:40]!r} is not host[:port]")
    return Description(
        id=did,
        fleet=_str(out.get("fleet", ""), "fleet", _WORD) if out.get("fleet") else "",
        board=_str(out.get("board", ""), "board"),
        mcu=_str(out.get("mcu", ""), "mcu"),
        port=_str(out.get("port", ""), "port", _WORD) if out.get("port") else "",
        clock=_int(out.get("clock", 0), "clock", 1 << 34),
        mpy=_int(out.get("mpy", 0), "mpy", 1 << 32),
        tinyfleet=_str(out.get("tinyfleet", ""), "tinyfleet"),
        runtime=runtime, version=version,
        ram=_int(out.get("ram", 0), "ram"), ram_free=_int(out.get("ram_free", 0), "ram_free"),
        flash=_int(out.get("flash", 0), "flash"),
        flash_free=_int(out.get("flash_free", 0), "flash_free"),
        kernels=tuple(_str(k, "kernels", _WORD) for k in _list(out.get("kernels", []),
                                                                "kernels")),
        kernel=_str(out.get("kernel", ""), "kernel"),
        sensors=sensors,
        model=_model(out["model"]) if "model" in out else ModelInfo(),
        security=security, broker=broker, dropped=tuple(dropped[:MAX_LIST]))


# ---------------------------------------------------------------------------- expansion

def _topic(fleet: str, *parts: str) -> str:
    return "/".join(("tf", fleet) + parts)


def _form(base: str, topic: str, op: str | list[str], packet: str, retain: bool = False,
          content: str = "application/json") -> dict[str, Any]:
    f: dict[str, Any] = {"href": f"{base}/{topic}", "op": op, "contentType": content,
                         "mqv:controlPacket": packet, "mqv:qos": "1"}
    f["mqv:topic" if packet == "publish" else "mqv:filter"] = topic
    if retain:
        f["mqv:retain"] = True
    return f


def thing_id(d: Description, fleet: str | None = None) -> str:
    """The TD's id: urn:tinyfleet:<fleet>:<device>."""
    return f"urn:tinyfleet:{fleet or d.fleet or 'fleet'}:{d.id}"


def expand(d: Description, fleet: str | None = None, broker: str | None = None) -> dict[str, Any]:
    """The W3C WoT TD 1.1 of a board (a pure function of its description).

    Properties: status, model, memory; actions: startTraining (the fleet's round-start
    topic), resetWeights (the retained global-weights topic); event: roundUpdate (the
    board's update topic). Sensors become ssn:hasSubSystem sosa:Sensor nodes with
    sosa:observes. fleet / broker override the description's own.
    """
    fl = fleet or d.fleet or "fleet"
    base = f"mqtt://{broker or d.broker or 'broker'}"
    model = d.model.name or "model"
    tid = thing_id(d, fl)
    sec = "basic_sc" if d.security == "basic" else "nosec_sc"
    scheme: dict[str, Any] = ({"scheme": "basic", "in": "auto"} if d.security == "basic"
                              else {"scheme": "nosec"})
    status_t = _topic(fl, "dev", d.id, "status")
    td_t = _topic(fl, "dev", d.id, "td")
    mem = {k: {"type": "integer", "minimum": 0, "unit": "byte"}
           for k in ("ram", "ram_free", "flash", "flash_free")}
    td: dict[str, Any] = {
        "@context": [TD_CONTEXT, dict(NS)],
        "@type": ["sosa:Platform", "tf:Board"],
        "id": tid,
        "title": d.id,
        "description": f"TinyFleet board {d.id}: {d.board or 'unknown board'}, "
                       f"{d.runtime} {d.version}".strip(),
        "securityDefinitions": {sec: scheme},
        "security": sec,
        "tf:board": d.board, "tf:mcu": d.mcu, "tf:port": d.port, "tf:clockHz": d.clock,
        "tf:runtime": d.runtime, "tf:runtimeVersion": d.version,
        "tf:ram": d.ram, "tf:ramFree": d.ram_free,
        "tf:flash": d.flash, "tf:flashFree": d.flash_free,
        "tf:kernels": list(d.kernels), "tf:kernel": d.kernel,
        "ssn:hasSubSystem": [
            {"@id": f"{tid}:sensor:{s.name}", "@type": "sosa:Sensor", "title": s.name,
             "sosa:observes": {"@id": f"tf:{s.observes}"}, "tf:virtual": s.virtual,
             **({"tf:unit": s.unit} if s.unit else {})}
            for s in d.sensors],
        "properties": {
            "status": {
                "title": "learning status", "type": "object", "readOnly": True,
                "observable": True,
                "forms": [_form(base, status_t, ["readproperty", "observeproperty"],
                                "subscribe")]},
            "model": {
                "title": "model on the board", "type": "object", "readOnly": True,
                "properties": {"name": {"type": "string", "const": d.model.name},
                               "sizes": {"type": "array", "items": {"type": "integer"}},
                               "params": {"type": "integer", "minimum": 0},
                               "version": {"type": "integer", "minimum": 0}},
                "forms": [_form(base, td_t, "readproperty", "subscribe")]},
            "memory": {
                "title": "RAM and flash, bytes", "type": "object", "readOnly": True,
                "properties": mem,
                "forms": [_form(base, td_t, "readproperty", "subscribe")]},
        },
        "actions": {
            "startTraining": {
                "title": "start a federated round (k local SGD steps, then an update)",
                "input": {"type": "object", "description": "tfshared.wire round start "
                          "(round, k, lr shift, deadline ms, devices), binary"},
                "forms": [_form(base, _topic(fl, "round", model), "invokeaction", "publish",
                                content="application/octet-stream")]},
            "resetWeights": {
                "title": "replace the board's weights with a global model (retained)",
                "input": {"type": "object", "description": "tfshared.wire global frame "
                          "(int16 Q12 weights blob), binary"},
                "forms": [_form(base, _topic(fl, "model", model, "global"), "invokeaction",
                                "publish", retain=True, content="application/octet-stream")]},
        },
        "events": {
            "roundUpdate": {
                "title": "adapted weights after a round",
                "data": {"type": "object", "description": "tfshared.wire update frame"},
                "forms": [_form(base, _topic(fl, "dev", d.id, "update"), "subscribeevent",
                                "subscribe", content="application/octet-stream")]},
        },
    }
    return td


# ---------------------------------------------------------------------------- validation

def validate(td: Mapping[str, Any], schema: Mapping[str, Any] | str | Path) -> list[str]:
    """Errors of `td` against the W3C WoT TD 1.1 JSON Schema (empty list: valid).

    Needs the `jsonschema` package (a test dependency; the schema itself is in
    tests/data/td-schema/).

    Raises:
        ImportError: jsonschema is not installed.
    """
    import jsonschema

    if not isinstance(schema, Mapping):
        schema = json.loads(Path(schema).read_text())
    v = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
            for e in sorted(v.iter_errors(td), key=lambda e: list(map(str, e.path)))]
