"""The semantic registry: model cards (measured on MicroPython), matching models to a
fleet of different boards, --where filters, the devices/models/match commands, RDF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tinyfleet import cli, modelcard
from tinyfleet import registry as R
from tinyfleet.errors import TinyFleetError
from tinyfleet.td import DescriptionError

SINE = (1, 40, 40, 1)

# A fleet of different kinds; the expected verdict for the sine model is in the comment.
BOARDS: dict[str, dict[str, Any]] = {
    "s3-big": {"board": "esp32s3", "runtime": "MicroPython 1.25.0", "ram": 320_000,
               "ram_free": 200_000, "flash": 8 << 20, "flash_free": 6 << 20,
               "kernels": ["viper", "bytecode"], "sensors": ["sine", "temperature"]},  # yes
    "pico": {"board": "rp2", "version": "1.24.1", "ram": 190_000, "ram_free": 120_000,
             "flash_free": 800_000, "kernels": ["viper", "bytecode"], "sensors": ["sine"]},  # yes
    "c3-tight": {"board": "esp32c3", "version": "1.25.0", "ram": 60_000,  # viper does not fit,
                 "ram_free": 13_500, "flash_free": 900_000,           # bytecode would: viper
                 "kernels": ["viper", "bytecode"], "sensors": ["sine"]},  # needs less -> yes
    "tiny": {"board": "esp8266", "version": "1.25.0", "ram": 40_000, "ram_free": 9_000,
             "flash_free": 900_000, "kernels": ["bytecode"], "sensors": ["sine"]},  # RAM
    "old": {"board": "rp2", "version": "1.19.1", "ram": 190_000, "ram_free": 150_000,
            "flash_free": 800_000, "kernels": ["viper", "bytecode"], "sensors": ["sine"]},  # ver
    "thermo": {"board": "esp32", "version": "1.25.0", "ram": 110_000, "ram_free": 80_000,
               "flash_free": 800_000, "kernels": ["viper", "bytecode"],
               "sensors": [{"name": "bme280", "observes": "temperature", "unit": "Cel"}]},  # sensor
    "full": {"board": "esp32", "version": "1.25.0", "ram": 110_000, "ram_free": 80_000,
             "flash_free": 6_000, "kernels": ["bytecode"], "sensors": ["sine"]},  # flash
    "ulab": {"board": "esp32", "version": "1.25.0", "ram": 110_000, "ram_free": 80_000,
             "flash_free": 800_000, "kernels": ["ulab"], "sensors": ["sine"]},  # kernel
    "cpython": {"board": "linux", "runtime": "CPython 3.12.1", "ram_free": 1 << 30,
                "flash_free": 1 << 30, "kernels": ["bytecode"], "sensors": ["sine"]},  # runtime
}
COMPATIBLE = {"s3-big", "pico", "c3-tight"}
WHY = {"tiny": "RAM free", "old": "MicroPython 1.19.1 < 1.22", "thermo": "missing sensor sine",
       "full": "flash free", "ulab": "kernel", "cpython": "runtime"}


@pytest.fixture(scope="module")
def memory() -> dict[str, dict[str, Any]]:
    """The sine model measured once on the MicroPython 32-bit build (no cache)."""
    return {k: modelcard.measure(SINE, kernel=k, use_cache=False) for k in modelcard.KERNELS}


@pytest.fixture
def card(memory: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return modelcard.build_card("sine", SINE, 4, fleet="demo", memory=memory,
                                quality={"heldout_mse": {"0": 2.5, "32": 0.75}},
                                created=1_700_000_000.0)


@pytest.fixture
def reg(tmp_path: Path, card: dict[str, Any]) -> R.Registry:
    r = R.Registry(tmp_path / "reg.sqlite")
    for dev, desc in BOARDS.items():
        r.record_description("demo", dev, json.dumps(dict(desc, id=dev)).encode(),
                             broker="localhost:1883")
    r.add_card(card)
    return r


# ------------------------------------------------------------------- model cards

def test_counts_by_hand() -> None:
    # 1-40-40-1: (1+1)*40 + (40+1)*40 + (40+1)*1 = 80 + 1640 + 41
    assert modelcard.param_count(SINE) == 1761
    # inference 1*40 + 40*40 + 40*1 = 1680; training adds backprop below the output
    # (40*40 + 40*1 = 1640) and the update (1680 weights + 81 biases) = 5081.
    assert modelcard.macs(SINE) == {"inference": 1680, "train_step": 5081}
    assert [layer["activation"] for layer in modelcard.layers(SINE)] == \
        ["relu clipped at 4.0", "relu clipped at 4.0", "linear"]
    assert modelcard.layers((64, 32, 10), classify=True)[-1]["activation"] == "softmax"


def test_memory_is_measured_on_micropython(memory: dict[str, dict[str, Any]]) -> None:
    for kernel, m in memory.items():
        ram = m["ram"]
        # The master weights alone are an array('i') of 1761 int32; the step allocates
        # nothing (SPEC); the code is the imported .mpy modules.
        assert 4 * 1761 <= ram["model"] < 4 * 1761 + 4096, (kernel, ram)
        assert ram["step"] == 0, (kernel, ram)
        assert 1000 < ram["code"] < 20_000, (kernel, ram)
        assert ram["total"] == ram["code"] + ram["model"] + ram["first_step"] + ram["step"]
        # int32 Q24 blob: header + 4 bytes per weight + CRC; two copies while saving.
        assert 4 * 1761 < m["flash"]["weights"] < 4 * 1761 + 200
        assert m["flash"]["weights_store"] == 2 * m["flash"]["weights"]
        assert m["flash"]["model_code"] > 1000 and m["runtime"].startswith("MicroPython 1.")


def test_measurement_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelcard, "CACHE_DIR", tmp_path)
    first = modelcard.measure((2, 3, 1), kernel="bytecode")
    cache = json.loads((tmp_path / modelcard.CACHE_FILE).read_text())
    assert len(cache) == 1 and next(iter(cache.values())) == first

    def no_run(*a: object, **k: object) -> None:
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(modelcard.upy, "run", no_run)
    assert modelcard.measure((2, 3, 1), kernel="bytecode") == first


def test_card_contents(card: dict[str, Any]) -> None:
    assert card["id"] == "demo/sine/v4" and card["parameters"] == 1761
    assert card["input"]["scaling"].startswith("x / 5 in Q12")
    req = card["requirements"]
    assert req["sensors"] == ["sine"] and set(req["ram"]) == {"viper", "bytecode"}
    assert req["ram"]["viper"] == card["memory"]["viper"]["ram"]["total"]
    assert req["flash"] == card["memory"]["viper"]["flash"]["weights_store"]


def test_lineage_from_checkpoint_history(tmp_path: Path) -> None:
    import numpy as np
    from tinyfleet.checkpoint import Checkpoint

    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        w = np.zeros(3)
        ck.save_round(0, w, strategy="reptile", status="init")
        ck.save_round(1, w, strategy="reptile", selected=["a", "b"], replied=["a", "b"])
        ck.save_round(2, w, strategy="reptile", selected=["c"], replied=[], status="skipped")
        ck.save_round(3, w, strategy="reptile", epsilon=0.5, selected=["b", "c"], replied=["c"])
        lin = modelcard.lineage(ck.history(), 3)
    assert lin["rounds"] == [1, 3] and lin["skipped"] == [2]
    assert lin["devices"] == ["a", "b", "c"] and lin["strategy"] == "reptile"
    assert lin["last_round"] == {"round": 3, "replied": ["c"], "epsilon": 0.5}


# ------------------------------------------------------------------- matching

def test_match_returns_exactly_the_compatible_boards(reg: R.Registry,
                                                     card: dict[str, Any]) -> None:
    verdicts = {v.device: v for v in reg.match(card, "demo")}
    assert set(verdicts) == set(BOARDS)
    assert {d for d, v in verdicts.items() if v.ok} == COMPATIBLE
    for dev, why in WHY.items():
        v = verdicts[dev]
        assert len(v.reasons) == 1 and why in v.reasons[0], (dev, v.reasons)
    # The tight board fits with viper (less RAM than bytecode), not with bytecode.
    ram = card["requirements"]["ram"]
    assert ram["viper"] <= BOARDS["c3-tight"]["ram_free"] < ram["bytecode"]
    assert verdicts["c3-tight"].kernel == "viper"
    pred = reg.eligible(card, "demo")
    assert [d for d in sorted(BOARDS) if pred(d)] == sorted(COMPATIBLE)
    assert not pred("never-seen")


def test_board_running_the_model_already_and_unreported_figures(card: dict[str, Any]) -> None:
    from tinyfleet import td

    # Little free RAM, but it runs these very layer sizes: the model's RAM is its own.
    busy = td.sanitize({"id": "busy", "version": "1.25.0", "ram_free": 2000, "flash_free": 10,
                        "sensors": ["sine"], "model": {"name": "sine", "sizes": list(SINE)}})
    v = R.check(card, busy)
    assert v.ok and "already" in v.notes[0]
    bare = td.sanitize({"id": "bare", "sensors": ["sine"]})
    v = R.check(card, bare)
    assert v.ok and set(v.notes) == {"MicroPython version not reported",
                                     "free RAM not reported", "free flash not reported"}


# ------------------------------------------------------------------- --where

def test_where_parser() -> None:
    conds = R.parse_where("ram_free>=100k and sensor=temperature AND board != 'rp2'",
                          R.DEVICE_FIELDS)
    assert conds == [R.Cond("ram_free", ">=", 102400.0), R.Cond("sensor", "=", "temperature"),
                     R.Cond("board", "!=", "rp2")]
    assert R.parse_where("ram<1.5M", R.DEVICE_FIELDS) == [R.Cond("ram", "<", 1.5 * 2**20)]
    for bad, msg in (("colour=red", "unknown field 'colour'"), ("ram_free>>3", "cannot read"),
                     ("ram_free>=1k or id=x", "cannot read"), ("", "cannot read"),
                     ("id=x; DROP TABLE devices", "cannot read")):
        with pytest.raises(TinyFleetError, match=msg) as err:
            R.parse_where(bad, R.DEVICE_FIELDS)
        assert "\n" not in str(err.value)


def test_where_filters(reg: R.Registry) -> None:
    rows = [R.device_fields(r.description) for r in reg.devices()]

    def ids(text: str) -> list[str]:
        return sorted(r["id"] for r in R.where(rows, R.parse_where(text, R.DEVICE_FIELDS)))

    assert ids("ram_free>=100k and sensor=temperature") == ["s3-big"]
    assert ids("sensor=temperature") == ["s3-big", "thermo"]
    assert ids("version<1.22") == ["old"]
    assert ids("kernels=ulab") == ["ulab"]
    assert ids("kernels!=viper and runtime=MicroPython") == ["full", "tiny", "ulab"]
    assert ids("board=rp2 and ram_free>120000") == ["old"]


# ------------------------------------------------------------------- the store

def test_registry_refuses_hostile_descriptions(reg: R.Registry) -> None:
    before = [(r.description, r.updates) for r in reg.devices()]
    for payload in (b'{"id": "pico", "ram_free": NaN}', b"[" * 3000, b"\x00" * 10_000,
                    json.dumps({"id": "pico", "board": "x" * 1000}).encode(),
                    b'{"id": "pico", "fleet": "other"}', b'{"id": "not-pico"}'):
        with pytest.raises(DescriptionError):
            reg.record_description("demo", "pico", payload)
    assert [(r.description, r.updates) for r in reg.devices()] == before
    # A later good description replaces the old one; unknown fields are not stored.
    reg.record_description("demo", "pico", json.dumps(
        dict(BOARDS["pico"], id="pico", ram_free=1000, secret="x" * 100)).encode())
    rec = reg.device("demo", "pico")
    assert rec is not None and rec.description.ram_free == 1000 and rec.updates == 2
    assert "xxxx" not in json.dumps(rec.td) and rec.description.dropped == ("secret",)


def test_registry_refuses_other_databases(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(TinyFleetError, match="not a TinyFleet registry"):
        R.Registry(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(TinyFleetError, match="not a usable registry"):
        R.Registry(junk)


def test_card_lookup(reg: R.Registry, card: dict[str, Any]) -> None:
    reg.add_card(dict(card, version=5, id="demo/sine/v5"))
    assert reg.card("sine")["version"] == 5
    assert reg.card("sine@4")["version"] == 4 and reg.card("demo/sine/v4")["version"] == 4
    with pytest.raises(TinyFleetError, match="no model 'digits'.*models: sine"):
        reg.card("digits")


# ------------------------------------------------------------------- the commands

def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_devices_models_match(reg: R.Registry, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(reg.path)
    reg.close()
    code, out, _ = run_cli(capsys, "devices", "--db", db,
                           "--where", "ram_free>=100k and sensor=temperature")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "FLEET", "BOARD"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["s3-big"]
    code, out, _ = run_cli(capsys, "devices", "--db", db, "--json")
    got = json.loads(out)
    assert code == 0 and sorted(d["id"] for d in got) == sorted(BOARDS)
    assert got[0]["td"]["@context"][0] == "https://www.w3.org/2022/wot/td/v1.1"
    code, out, _ = run_cli(capsys, "devices", "--db", db, "--td", "pico")
    assert code == 0 and json.loads(out)["id"] == "urn:tinyfleet:demo:pico"

    code, out, _ = run_cli(capsys, "models", "--db", db)
    assert code == 0 and "sine@v4" in out and "1761" in out and "0.750" in out
    code, out, _ = run_cli(capsys, "models", "--db", db, "--json", "--where", "params>2000")
    assert code == 0 and json.loads(out) == []

    code, out, _ = run_cli(capsys, "match", "--model", "sine", "--db", db, "--json")
    res = json.loads(out)
    assert code == 0 and res["model"] == "demo/sine/v4"
    assert {b["device"] for b in res["boards"] if b["ok"]} == COMPATIBLE
    code, out, _ = run_cli(capsys, "match", "--model", "sine", "--db", db)
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "RAM free" in lines["tiny"] and " no " in lines["tiny"]
    assert " yes " in lines["pico"]
    code, out, _ = run_cli(capsys, "match", "--model", "sine", "--db", db, "--ok",
                           "--where", "board=rp2")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["pico"]


@pytest.mark.parametrize("argv, msg", [
    (["devices", "--where", "colour=red"], "unknown field 'colour'"),
    (["match", "--model", "nope"], "no model 'nope'"),
    (["models", "--card", "sine@9"], "no model 'sine@9'"),
    (["devices", "--td", "ghost"], "no board 'ghost'"),
    (["devices", "--sparql", "SELEKT ?x"], "SPARQL"),
])
def test_cli_errors_are_one_line(reg: R.Registry, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], msg: str) -> None:
    db = str(reg.path)
    reg.close()
    code, _, err = run_cli(capsys, *argv, "--db", db)
    assert code == 1 and msg in err and err.count("\n") == 1, err


def test_cli_missing_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "devices", "--db", str(tmp_path / "none.sqlite"))
    assert code == 1 and "no registry at" in err
    assert not (tmp_path / "none.sqlite").exists()


# ------------------------------------------------------------------- RDF

def test_rdf_export_parses_and_sparql_matches(reg: R.Registry, card: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rdflib = pytest.importorskip("rdflib", reason="tinyfleet[semantic] extra not installed")
    g = R.to_graph(reg.devices(), reg.cards())
    ttl = R.serialize(g, "turtle")
    jsonld = R.serialize(g, "json-ld")
    # Both serializations parse back into the same graph.
    g1 = rdflib.Graph().parse(data=ttl, format="turtle")
    g2 = rdflib.Graph().parse(data=jsonld, format="json-ld")
    assert len(g1) == len(g) == len(g2) > 50
    # SeLoC-ML-style query: boards that observe temperature with >= 100 KiB free RAM.
    rows = R.sparql(g1, """
        PREFIX sosa: <http://www.w3.org/ns/sosa/>
        PREFIX ssn: <http://www.w3.org/ns/ssn/>
        PREFIX tf: <https://tinyfleet.example/ns#>
        SELECT ?board WHERE {
          ?board a sosa:Platform ; tf:ramFree ?free ; ssn:hasSubSystem ?s .
          ?s a sosa:Sensor ; sosa:observes tf:temperature .
          FILTER(?free >= 102400) }""")
    assert [r["board"] for r in rows] == ["urn:tinyfleet:demo:s3-big"]
    # The model's needs are in the graph too: boards whose free RAM covers viper's.
    rows = R.sparql(g, """
        PREFIX tf: <https://tinyfleet.example/ns#>
        SELECT DISTINCT ?board WHERE {
          ?m a tf:Model ; tf:ramNeeded [ tf:kernel "viper" ; tf:bytes ?need ] .
          ?board tf:ramFree ?free ; tf:offersKernel "viper" . FILTER(?free >= ?need) }
        ORDER BY ?board""")
    assert [r["board"].rsplit(":", 1)[1] for r in rows] == \
        ["c3-tight", "old", "pico", "s3-big", "thermo"]
    db = str(reg.path)
    reg.close()
    code, out, _ = run_cli(capsys, "models", "--db", db, "--rdf", "turtle")
    assert code == 0 and "tf:Model" in out
    assert len(rdflib.Graph().parse(data=out, format="turtle")) == len(g)


def test_rdf_without_rdflib_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "rdflib", None)  # import rdflib -> ImportError
    with pytest.raises(TinyFleetError, match=r"pip install 'tinyfleet\[semantic\]'"):
        R.to_graph([], [])


def test_sizes_print_in_the_unit_that_reads() -> None:
    # a board's heap in k, a host disk (the unix port's "flash") in G, not 240052040.0k
    assert [R._kib(n) for n in (600, 14146, 2 * 1024 ** 2, 240052040 * 1024)] == [
        "0.6k", "13.8k", "2.0M", "228.9G"]
