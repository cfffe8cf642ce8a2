"""SQLite checkpoints: round trip, resume, corrupt files, and kill -9 in the middle of writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tinyfleet.checkpoint import Checkpoint, DeviceMetric
from tinyfleet.errors import TinyFleetError


def test_round_trip_history_metrics_and_resume(tmp_path: Path):
    # Prepare
    db = tmp_path / "ck.sqlite"
    w0 = np.array([0.5, -1.25, 3.0])
    w1 = np.array([0.75, -1.0, 2.5])
    # Execute
    with Checkpoint(db) as ck:
        assert ck.resume() is None
        ck.ensure_meta(model="sine", fleet="f1")
        ck.save_round(0, w0, status="init")
        ck.save_round(1, w1, strategy="reptile", epsilon=0.5, selected=["a", "b", "c"],
                      replied=["a", "b"], duration=1.5,
                      metrics=[DeviceMetric("a", 0.25, 32), DeviceMetric("b", float("nan"), 0)])
    with Checkpoint(db) as ck:
        last = ck.resume()
        hist = ck.history()
        mets = ck.metrics(1)
        model = ck.get_meta("model")
    # Assert
    assert last is not None and last[0] == 1
    np.testing.assert_array_equal(last[1], w1)
    assert [h.round for h in hist] == [0, 1]
    np.testing.assert_array_equal(hist[0].weights, w0)
    assert hist[1].strategy == "reptile" and hist[1].epsilon == 0.5
    assert hist[1].selected == ["a", "b", "c"] and hist[1].replied == ["a", "b"]
    assert hist[1].duration == 1.5 and hist[1].status == "done"
    assert mets[0] == DeviceMetric("a", 0.25, 32)
    assert mets[1].device == "b" and np.isnan(mets[1].loss) and mets[1].samples == 0
    assert model == "sine"


def test_meta_mismatch_and_duplicate_round_are_one_line_errors(tmp_path: Path):
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        ck.ensure_meta(model="sine")
        ck.ensure_meta(model="sine")  # same value: fine
        with pytest.raises(TinyFleetError, match="model=sine, not digits"):
            ck.ensure_meta(model="digits")
        ck.save_round(0, np.zeros(2), status="init")
        with pytest.raises(TinyFleetError, match="round 0 already"):
            ck.save_round(0, np.ones(2))
        # the failed insert left the stored round as it was
        np.testing.assert_array_equal(ck.resume()[1], np.zeros(2))


def test_not_a_database_is_tinyfleet_error_and_file_untouched(tmp_path: Path):
    # Prepare
    path = tmp_path / "garbage.sqlite"
    content = b"this is not a database\n" * 200
    path.write_bytes(content)
    # Execute / Assert
    with pytest.raises(TinyFleetError, match="not a usable checkpoint") as info:
        Checkpoint(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content
    assert not (tmp_path / "garbage.sqlite-wal").exists()


def test_foreign_sqlite_database_is_refused(tmp_path: Path):
    import sqlite3
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(TinyFleetError, match="not a TinyFleet checkpoint"):
        Checkpoint(path)
    assert path.read_bytes() == before


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from tinyfleet.checkpoint import Checkpoint, DeviceMetric
    ck = Checkpoint(sys.argv[1])
    p = 20000  # a 160 KB blob per round, so a kill often lands inside a write
    r = 0
    while True:
        w = np.full(p, float(r))
        ck.save_round(r, w, strategy="reptile", epsilon=0.5, selected=["a", "b"],
                      replied=["a", "b"], metrics=[DeviceMetric("a", r, r),
                                                   DeviceMetric("b", r, r)])
        print(r, flush=True)
        r += 1
""")


@pytest.mark.parametrize("kill_after", [3, 17])
def test_kill_9_mid_write_loses_no_completed_round(tmp_path: Path, kill_after: int):
    # Prepare: a real writer process committing rounds as fast as it can
    db = tmp_path / "ck.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True)
    # Execute: once it has reported `kill_after` completed rounds, SIGKILL it mid-stream
    reported = -1
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while reported < kill_after and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "writer exited early"
        reported = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Assert: every reported round is there, whole, and nothing half-written
    with Checkpoint(db) as ck:
        last = ck.resume()
        hist = ck.history()
        assert last is not None and last[0] >= reported
        assert [h.round for h in hist] == list(range(last[0] + 1))
        for h in hist:
            np.testing.assert_array_equal(h.weights, np.full(20000, float(h.round)))
            mets = ck.metrics(h.round)
            assert [(m.device, m.samples) for m in mets] == [("a", h.round), ("b", h.round)]
        # and the checkpoint still takes the next round
        ck.save_round(last[0] + 1, np.zeros(3))
        assert ck.resume()[0] == last[0] + 1
