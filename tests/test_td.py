"""Board self-descriptions: sanitizing hostile input, and the W3C WoT TD 1.1 they expand
into, validated against the W3C JSON Schema (tests/data/td-schema/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from tinyfleet import td
from tinyfleet.td import DescriptionError

SCHEMA = json.loads((Path(__file__).parent / "data" / "td-schema" /
                     "td-json-schema-validation.json").read_text())

BOARD = {"id": "esp-1", "fleet": "demo", "board": "esp32s3", "mcu": "ESP32S3 module",
         "runtime": "MicroPython 1.25.0", "ram": 300_000, "ram_free": 180_000,
         "flash": 4_000_000, "flash_free": 2_000_000, "kernels": ["viper", "bytecode"],
         "kernel": "viper",
         "port": "esp32", "clock": 240_000_000, "mpy": 1798, "tinyfleet": "0.1.0",
         "sensors": [{"name": "sine", "observes": "sine", "virtual": True},
                     {"name": "bme280", "observes": "temperature", "unit": "Cel"}],
         "model": {"name": "sine", "sizes": [1, 40, 40, 1], "params": 1761, "version": 3},
         "security": "basic", "broker": "10.0.0.2:1883"}


def test_sanitize_keeps_typed_fields() -> None:
    d = td.sanitize(json.dumps(BOARD).encode(), "esp-1")
    assert (d.id, d.fleet, d.board, d.runtime, d.version) == \
        ("esp-1", "demo", "esp32s3", "MicroPython", "1.25.0")
    assert (d.ram, d.ram_free, d.flash, d.flash_free) == (300_000, 180_000, 4_000_000, 2_000_000)
    assert d.kernels == ("viper", "bytecode")
    assert [(s.name, s.observes, s.unit, s.virtual) for s in d.sensors] == \
        [("sine", "sine", "", True), ("bme280", "temperature", "Cel", False)]
    assert (d.port, d.clock, d.mpy, d.tinyfleet) == ("esp32", 240_000_000, 1798, "0.1.0")
    assert d.model == td.ModelInfo("sine", (1, 40, 40, 1), 1761, 3)
    assert d.dropped == ()
    # The stored JSON form sanitizes back to the same record.
    assert td.sanitize(d.to_json()) == d


def test_aliases_and_legacy_td_form() -> None:
    # The first agent published a whole TD with its facts under "tinyfleet".
    legacy = {"@context": ["https://www.w3.org/2022/wot/td/v1.1"], "title": "b7",
              "tinyfleet": {"platform": "linux", "runtime": "MicroPython 1.25.0",
                            "heap": 131072, "kernel": "viper",
                            "model": {"name": "sine", "sizes": [1, 40, 40, 1], "params": 1761,
                                      "task": "sine regression"}}}
    d = td.sanitize(json.dumps(legacy), "b7")
    assert (d.id, d.board, d.ram, d.kernel, d.version) == ("b7", "linux", 131072, "viper",
                                                            "1.25.0")
    d2 = td.sanitize({"id": "b8", "mem_free": 5000, "fs_free": 7000, "platform": "rp2",
                      "version": [1, 24, 1], "colour": "red"})
    assert (d2.ram_free, d2.flash_free, d2.board, d2.version) == (5000, 7000, "rp2", "1.24.1")
    assert d2.dropped == ("colour",)


HOSTILE: list[tuple[str, Any]] = [
    ("not json", b"{id: 1"),
    ("not utf-8", b"\xff\xfe{}"),
    ("a list", b"[1, 2]"),
    ("huge payload", json.dumps({"id": "x", "board": "a" * 20_000}).encode()),
    ("huge string", json.dumps({"id": "x", "board": "a" * 500}).encode()),
    ("deep nesting", b'{"id": "x", "model": ' + b"[" * 50 + b"]" * 50 + b"}"),
    ("very deep nesting", b"[" * 5000 + b"]" * 5000),
    ("NaN", b'{"id": "x", "ram": NaN}'),
    ("Infinity", b'{"id": "x", "ram_free": Infinity}'),
    ("negative RAM", b'{"id": "x", "ram_free": -1}'),
    ("fractional RAM", b'{"id": "x", "ram_free": 1.5}'),
    ("bool RAM", b'{"id": "x", "ram_free": true}'),
    ("string RAM", b'{"id": "x", "ram_free": "lots"}'),
    ("huge number", b'{"id": "x", "flash": 1' + b"0" * 400 + b"}"),
    ("id with slash", b'{"id": "x/y"}'),
    ("id not the topic's", b'{"id": "other"}'),
    ("control chars", json.dumps({"id": "x", "board": "a\x1b[2Jb"}).encode()),
    ("sensor object", b'{"id": "x", "sensors": [{"name": 5}]}'),
    ("sensor injection", json.dumps({"id": "x", "sensors": ["t> . <urn:evil"]}).encode()),
    ("too many sensors", json.dumps({"id": "x", "sensors": ["s"] * 100}).encode()),
    ("kernels not a list", b'{"id": "x", "kernels": "viper"}'),
    ("model not an object", b'{"id": "x", "model": 3}'),
    ("bad sizes", b'{"id": "x", "model": {"sizes": [1, -4]}}'),
    ("bad security", b'{"id": "x", "security": "none-at-all"}'),
    ("bad broker", b'{"id": "x", "broker": "evil.example/path?x"}'),
    ("bad version", b'{"id": "x", "version": "latest"}'),
    ("virtual not a bool", b'{"id": "x", "sensors": [{"name": "s", "virtual": "yes"}]}'),
    ("clock negative", b'{"id": "x", "clock": -5}'),
]


@pytest.mark.parametrize("payload", [p for _, p in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_hostile_descriptions_are_rejected(payload: bytes) -> None:
    with pytest.raises(DescriptionError) as err:
        td.sanitize(payload, "x")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 200, msg  # one short line, whatever came in


def test_unknown_fields_are_dropped_not_stored() -> None:
    raw = dict(BOARD, id="x", evil={"a": "b" * 100}, __proto__=1)
    d = td.sanitize(raw, "x")
    assert set(d.dropped) == {"evil", "__proto__"}
    assert "bbbb" not in json.dumps(d.to_json())


@pytest.mark.parametrize("security", ["nosec", "basic"])
def test_expanded_td_validates_against_w3c_schema(security: str) -> None:
    d = td.sanitize(dict(BOARD, security=security))
    thing = td.expand(d)
    errors = td.validate(thing, SCHEMA)
    assert errors == [], "\n".join(errors)
    # Interaction affordances and their MQTT forms.
    assert set(thing["properties"]) == {"status", "model", "memory"}
    assert set(thing["actions"]) == {"startTraining", "resetWeights"}
    assert set(thing["events"]) == {"roundUpdate"}
    start = thing["actions"]["startTraining"]["forms"][0]
    assert start["href"] == "mqtt://10.0.0.2:1883/tf/demo/round/sine"
    assert (start["mqv:controlPacket"], start["mqv:topic"]) == ("publish", "tf/demo/round/sine")
    reset = thing["actions"]["resetWeights"]["forms"][0]
    assert reset["href"].endswith("/tf/demo/model/sine/global") and reset["mqv:retain"] is True
    ev = thing["events"]["roundUpdate"]["forms"][0]
    assert (ev["mqv:filter"], ev["op"]) == ("tf/demo/dev/esp-1/update", "subscribeevent")
    assert thing["securityDefinitions"][thing["security"]]["scheme"] == security
    # SOSA/SSN: each sensor is a subsystem observing a property.
    subs = thing["ssn:hasSubSystem"]
    assert [(s["@type"], s["sosa:observes"]["@id"]) for s in subs] == \
        [("sosa:Sensor", "tf:sine"), ("sosa:Sensor", "tf:temperature")]
    assert thing["@context"][0] == "https://www.w3.org/2022/wot/td/v1.1"


def test_minimal_description_validates() -> None:
    thing = td.expand(td.sanitize({"id": "bare"}))
    assert td.validate(thing, SCHEMA) == []


def test_schema_catches_broken_tds() -> None:
    # The validation has teeth: the schema rejects TDs missing what TD 1.1 requires.
    good = td.expand(td.sanitize(BOARD))
    for breakage in ("security", "@context", "title"):
        bad = copy.deepcopy(good)
        del bad[breakage]
        assert td.validate(bad, SCHEMA), f"missing {breakage} passed validation"
    bad = copy.deepcopy(good)
    bad["actions"]["startTraining"]["forms"][0].pop("href")
    assert any("href" in e for e in td.validate(bad, SCHEMA))


def test_expand_is_pure() -> None:
    d = td.sanitize(BOARD)
    assert td.expand(d) == td.expand(d)
    a = td.expand(d, fleet="other", broker="h:1")
    assert a["id"] == "urn:tinyfleet:other:esp-1"
    assert a["properties"]["status"]["forms"][0]["href"] == "mqtt://h:1/tf/other/dev/esp-1/status"
