"""`tinyfleet train`: one simulated board learns a sine task online on MicroPython."""

from __future__ import annotations

import json

import pytest
from tinyfleet.cli import main


def test_train_loss_falls_on_32bit_board(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--steps", "1500", "--every", "500", "--json", "--seed", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    header, checkpoints = rows[0], rows[1:]
    assert code == 0
    assert header["kernel"] == "viper" and header["params"] == 1761
    assert [r["step"] for r in checkpoints] == [0, 500, 1000, 1500]
    first, last = checkpoints[0]["mse"], checkpoints[-1]["mse"]
    assert last < 0.25 * first, f"held-out MSE went {first} -> {last}"
    assert all(r["alloc"] == 0 for r in checkpoints[1:]), checkpoints


def test_train_bad_option_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--steps", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == "tinyfleet: error: --steps and --every must be positive\n"


def test_train_board_failure_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--steps", "10", "--heapsize", "2k"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("tinyfleet: error: the simulated board failed: ") and "MemoryError" in err
    assert err.count("\n") == 1
