"""`tinyfleet bench rounds`: a short real fleet (Mosquitto, coordinator, MicroPython
devices), round latency and bytes on the wire. No timing is asserted (a shared machine)."""

from __future__ import annotations

import json

import pytest
from tinyfleet import bench_rounds, cli


def test_mqtt_publish_size_by_hand() -> None:
    # 1 fixed header byte + remaining length (1 byte below 128, 2 below 16384)
    # + 2 topic length bytes + topic + 2 packet id bytes (QoS 1) + payload
    assert bench_rounds.mqtt_publish_size("a/b", 10, 0) == 1 + 1 + 2 + 3 + 10
    assert bench_rounds.mqtt_publish_size("a/b", 10, 1) == 1 + 1 + 2 + 3 + 2 + 10
    assert bench_rounds.mqtt_publish_size("a/b", 200, 1) == 1 + 2 + 2 + 3 + 2 + 200
    assert bench_rounds.mqtt_publish_size("t", 20000, 1) == 1 + 3 + 2 + 1 + 2 + 20000


def test_json_weights_are_float32_reprs() -> None:
    assert bench_rounds.json_weights([1 << 24, -(1 << 23), 0]) == b"[1.0, -0.5, 0.0]"
    # 1677722 / 2**24 = 0.1000000238...: the shortest text that reads back as the same
    # float32 (9 significant digits here), not CPython's 17-digit float64 repr
    assert bench_rounds.json_weights([1677722]) == b"[0.100000024]"


def test_cli_json_small_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: 2 devices, 3 rounds, through the tinyfleet CLI
    assert cli.main(["bench", "rounds", "--json", "--devices", "2", "--rounds", "3",
                     "--k", "16"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # Assert: every round timed; bytes counted on the broker equal what the codec says
    # a frame costs; int16 frames are smaller than float32 JSON of the same weights.
    assert doc["devices"] == 2 and doc["rounds"] == 3 and len(doc["per_round"]) == 3
    assert all(r["replies"] == 2 and r["duration"] > 0 for r in doc["per_round"])
    lat = doc["latency"]
    assert 0 < lat["round_median"] <= lat["round_p90"]
    assert 0 < lat["first_update_median"] <= lat["last_update_median"]
    rows = {r["model"]: r for r in doc["wire"]}
    assert set(rows) == {"sine", "digits"}
    sine = rows["sine"]
    assert sine["measured"] and not rows["digits"]["measured"]
    want = bench_rounds.computed_row("sine", (1, 40, 40, 1))
    assert (sine["down_bytes"], sine["up_bytes"], sine["round_start_bytes"]) == (
        want.down_bytes, want.up_bytes, want.round_start_bytes)
    for r in rows.values():
        assert r["params"] * 2 < r["down_bytes"] < r["json_down_bytes"], r
        assert r["params"] * 2 < r["up_bytes"] < r["json_up_bytes"], r
        assert r["json_over_binary"] > 1


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "rounds", "--devices", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "round (start -> aggregation): median" in out
    assert "measured on the broker" in out and "computed from the codec" in out


def test_bad_option_is_a_user_error() -> None:
    from tinyfleet.errors import TinyFleetError

    with pytest.raises(TinyFleetError, match="must be >= 1"):
        bench_rounds.run(devices=0)
