"""Board tooling without a board: bytecode-format matching, deploy plans and config,
and the device-side inspect/selftest modules on the MicroPython unix port."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tinyfleet import board_deploy as bd
from tinyfleet import board_selftest as st
from tinyfleet.commands import deploy as deploy_cmd
from tinyfleet.errors import TinyFleetError

C125 = bd.Compiler(Path("/x/mpy-cross-1.25"), "1.25.0", (6, 3))
C119 = bd.Compiler(Path("/x/mpy-cross-1.19"), "1.19.1", (6, 0))


def mpy_word(version: int, sub: int, arch: int) -> int:
    """sys.implementation._mpy as py/persistentcode.h builds it."""
    return version | ((sub | (arch << 2)) << 8)


def board(version=(1, 25, 0), mpy: int | None = mpy_word(6, 3, 6), files=None,
          bfree=4000) -> bd.Board:
    return bd.Board(version, mpy, "qemu", "test", 512, bfree, dict(files or {}))


@pytest.mark.parametrize("word,fmt,arch", [
    (6918, (6, 3), "armv7em"),                    # the emulated Cortex-M3 board
    (mpy_word(6, 3, 10), (6, 3), "xtensawin"),    # ESP32 / ESP32-S3
    (mpy_word(6, 3, 4), (6, 3), "armv6m"),        # RP2040
    (mpy_word(6, 3, 0), (6, 3), None),            # no native emitter
])
def test_board_bytecode_format_and_arch(word: int, fmt: tuple[int, int], arch: str | None) -> None:
    b = board(mpy=word)
    assert (b.mpy_format, b.arch) == (fmt, arch)


def test_compiler_picked_by_format_then_release() -> None:
    c124 = bd.Compiler(Path("/x/mpy-cross-1.24"), "1.24.1", (6, 3))
    assert bd.pick_compiler(board(), [c124, C125]) is C125
    assert bd.pick_compiler(board((1, 24, 1)), [C125, c124]) is c124
    assert bd.pick_compiler(board((1, 23, 0)), [C119, C125]) is C125  # same format 6.3


def test_incompatible_board_is_refused() -> None:
    old = board((1, 19, 1), mpy=mpy_word(6, 0, 10))
    with pytest.raises(TinyFleetError) as exc:
        bd.pick_compiler(old, [C125])
    msg = str(exc.value)
    assert "incompatible board: MicroPython 1.19.1 loads mpy v6.0" in msg
    assert "1.25.0 (mpy v6.3)" in msg and "\n" not in msg
    with pytest.raises(TinyFleetError, match="without .mpy support"):
        bd.pick_compiler(board(mpy=None), [C125])


def test_cached_mpy_cross_is_found() -> None:
    found = bd._compilers()
    assert any(c.version == "1.25.0" and c.mpy_format == (6, 3) for c in found), found


def test_items_compiled_except_boot_files(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import mod\n")
    (tmp_path / "mod.py").write_text("X = 1\n")
    (tmp_path / "w.py").write_text("W = 2\n")
    compiler = bd.pick_compiler(board())
    files = [(tmp_path / "main.py", "main.py"), (tmp_path / "mod.py", "mod.py"),
             (tmp_path / "w.py", "lib/tfshared/w.py")]

    items = bd.build_items(files, compiler, "armv7em", {"id": "a", "password": "pw"})

    by_path = {i.board_path: i for i in items}
    assert set(by_path) == {"main.py", "mod.mpy", "lib/tfshared/w.mpy", "config.json"}
    assert by_path["main.py"].data == b"import mod\n"
    assert by_path["mod.mpy"].data[:2] == b"M\x06"  # .mpy magic, format 6
    assert by_path["config.json"].secret
    assert json.loads(by_path["config.json"].data) == {"id": "a", "password": "pw"}


def test_plan_copies_only_changed_and_removes_shadowing_py() -> None:
    a, b, c = bd.Item("a.mpy", b"A"), bd.Item("b.mpy", b"B"), bd.Item("main.py", b"M")
    on_board = {"a.mpy": a.sha256, "b.mpy": "0" * 64, "main.py": c.sha256, "a.py": "x"}

    plan = bd.make_plan(board(files=on_board), [a, b, c], C125)

    assert [i.board_path for i in plan.copy] == ["b.mpy"]
    assert plan.remove == ["a.py"]  # a stale a.py would be imported instead of a.mpy
    assert plan.bytes_needed == 3 * 512  # 1 data block + 2 for metadata


def test_space_check_before_any_write() -> None:
    plan = bd.make_plan(board(bfree=5), [bd.Item("big.mpy", bytes(4000))], C125)
    with pytest.raises(TinyFleetError, match="filesystem on P is full: deploy needs 5120 "
                                             "bytes, 2560 free"):
        bd.check_space(plan, "P")


def deploy_ns(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    deploy_cmd.add_arguments(parser)
    argv = ["--port", "P", "--device-id", "dev-1", "--broker", "10.0.0.2"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_config_secrets_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PW", "hunter2")
    monkeypatch.setenv("WIFI_PW", "wifipass")
    cfg = deploy_cmd.config_from_args(deploy_ns(password_env="MQTT_PW", user="u",
                                                wifi_ssid="net", wifi_password_env="WIFI_PW",
                                                fleet="f1", broker_port=8883))
    assert cfg == {"id": "dev-1", "fleet": "f1", "broker": "10.0.0.2", "port": 8883,
                   "user": "u", "password": "hunter2", "ssid": "net",
                   "wifi_password": "wifipass", "tinyfleet_version": cfg["tinyfleet_version"]}
    shown = json.dumps(bd.masked_config(cfg))
    assert "hunter2" not in shown and "wifipass" not in shown and '"***"' in shown


def test_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(TinyFleetError, match="environment variable NOPE_PW is not set"):
        deploy_cmd.config_from_args(deploy_ns(password_env="NOPE_PW"))
    with pytest.raises(TinyFleetError, match="--device-id 'a/b' must be"):
        deploy_cmd.config_from_args(deploy_ns(device_id="a/b"))


def test_selftest_on_unix_port_matches_reference(upy_runner, build: str) -> None:
    """device/selftest.py on the unix port (64 and 32-bit) against host/reference.py."""
    for case in st.CASES:
        xs, ys = case.samples()
        answer = upy_runner.run_json(
            f"import selftest\nselftest.main({case.sizes!r}, {case.classify!r}, "
            f"{case.lr_shift}, {case.seed}, {xs!r}, {ys!r}, 2)", build=build)
        crc, _ = case.expected()
        ran = [r for r in answer["results"] if r["available"]]
        assert ran, answer
        for r in ran:
            assert r["crc"] == crc, (case.name, r)
            if r["kernel"] not in st.ALLOCATING_KERNELS:
                assert r["alloc_per_step"] == 0, (case.name, r)


def test_selftest_judges_exactness_and_allocation() -> None:
    def judged(kernel: str, crc: int, alloc: int) -> dict:
        r = {"kernel": kernel, "available": True, "crc": crc, "alloc_per_step": alloc}
        st.judge(r, 77, [1, 2])
        return r
    assert judged("viper", 77, 0)["ok"]
    assert not judged("viper", 78, 0)["ok"]
    assert judged("viper", 78, 0)["expected_head"] == [1, 2]
    assert not judged("bytecode", 77, 16)["ok"]  # must not allocate
    assert judged("ulab", 77, 15000)["ok"]  # ulab may (reported only)
    assert not judged("ulab", 78, 0)["ok"]


def test_selftest_verdict_and_table() -> None:
    good = {"kernel": "viper", "available": True, "crc": 1, "bit_exact": True,
            "alloc_per_step": 0, "us_per_step": 280, "ok": True}
    bad = dict(good, kernel="bytecode", bit_exact=False, ok=False)
    na = {"kernel": "ulab", "available": False}
    assert st.passed([{"case": "r", "results": [good, na]}])
    assert not st.passed([{"case": "r", "results": [good, bad]}])
    assert not st.passed([{"case": "r", "results": [na]}])
    text = st.table([{"case": "r", "results": [good, bad, na]}])
    assert text.splitlines()[2].split() == ["r", "bytecode", "NO", "0", "280", "FAIL"]
    assert text.splitlines()[3].split() == ["r", "ulab", "-", "-", "-", "n/a"]


def test_inspect_module_on_unix_port(upy_runner, board_root: Path) -> None:
    (board_root / "config.json").write_text(json.dumps(
        {"id": "d7", "password": "pw", "fleet_key": "", "tinyfleet_version": "9.9"}))
    r = upy_runner.run_json("import tfinspect\ntfinspect.main()", build="32")
    assert r["device_id"] == "d7" and r["tinyfleet"] == "9.9"
    assert r["config"]["password"] == "***" and r["config"]["fleet_key"] == ""
    assert r["model"] is None and r["samples"] is None
    assert r["firmware"].startswith("MicroPython 1.")
