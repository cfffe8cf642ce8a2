"""Coordinator checkpoints in SQLite: global weights per round, round history, device metrics.

One transaction per completed round (WAL mode, synchronous=FULL), so a crash at any
moment leaves the last completed round and everything before it intact; `resume()`
returns that round and its weights.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TinyFleetError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round      INTEGER PRIMARY KEY,
    strategy   TEXT NOT NULL,
    epsilon    REAL NOT NULL,
    selected   TEXT NOT NULL,      -- JSON list of device ids
    replied    TEXT NOT NULL,      -- JSON list of device ids whose replies were aggregated
    duration   REAL NOT NULL,      -- seconds from round start to aggregation
    status     TEXT NOT NULL,      -- 'init' | 'done' | 'skipped'
    weights    BLOB NOT NULL,      -- float64 little-endian, the global weights after the round
    finished   REAL NOT NULL       -- unix time
);
CREATE TABLE IF NOT EXISTS device_metrics (
    round   INTEGER NOT NULL REFERENCES rounds(round),
    device  TEXT NOT NULL,
    loss    REAL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (round, device)
);
"""


@dataclass(frozen=True)
class RoundRecord:
    """One completed round as stored."""

    round: int
    strategy: str
    epsilon: float
    selected: list[str]
    replied: list[str]
    duration: float
    status: str
    weights: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class DeviceMetric:
    """One device's reported metrics for one round."""

    device: str
    loss: float
    samples: int


def _blob(weights: np.ndarray) -> bytes:
    return np.ascontiguousarray(weights, dtype="<f8").tobytes()


def _unblob(blob: bytes) -> np.ndarray:
    if len(blob) % 8:
        raise TinyFleetError(f"checkpoint weights blob has {len(blob)} bytes, not a multiple of 8")
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


class Checkpoint:
    """A coordinator's SQLite checkpoint; use as a context manager or call close().

    Raises (constructor):
        TinyFleetError: the file is not a TinyFleet checkpoint database (nothing is written).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            # check_same_thread=False: opened by a caller, used by the coordinator's thread
            # (one thread at a time; the connection is never shared concurrently).
            self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise TinyFleetError(f"cannot open checkpoint {self.path}: {exc}") from None
        try:
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise TinyFleetError(f"{self.path} is not a usable checkpoint database: {exc}") \
                from None
        except BaseException:
            self._db.close()
            raise

    def _check_and_init(self) -> None:
        db = self._db
        # Reading the schema first fails on a non-database file before anything is written.
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise TinyFleetError(f"{self.path} is an SQLite database but not a TinyFleet "
                                 f"checkpoint (tables: {', '.join(sorted(tables))})")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a completed round survives power loss
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            # executescript() would COMMIT implicitly, so the statements run one by one.
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise TinyFleetError(f"{self.path} has checkpoint schema {row[0]}, "
                                     f"this TinyFleet reads {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A stored metadata value (model name, strategy, ...) or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def ensure_meta(self, **values: str) -> None:
        """Store metadata on first use; later runs must agree (same model, fleet, ...).

        Raises:
            TinyFleetError: a stored value differs from the one given.
        """
        with self._tx():
            for key, value in values.items():
                old = self.get_meta(key)
                if old is None:
                    self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, str(value)))
                elif old != str(value):
                    raise TinyFleetError(f"checkpoint {self.path} was made with {key}={old}, "
                                         f"not {value}; use another --db")

    def set_meta(self, key: str, value: str) -> None:
        """Store or replace one metadata value (e.g. the coordinator's version epoch)."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    # -- rounds ---------------------------------------------------------------------------
    def save_round(self, round_no: int, weights: np.ndarray, *, strategy: str = "",
                   epsilon: float = 0.0, selected: Sequence[str] = (),
                   replied: Sequence[str] = (), duration: float = 0.0, status: str = "done",
                   metrics: Sequence[DeviceMetric] = (), finished: float = 0.0) -> None:
        """Store one completed round (weights, history and device metrics) atomically.

        Round 0 holds the initial weights (status 'init').

        Raises:
            TinyFleetError: the round is already stored (rounds are written once).
        """
        try:
            with self._tx():
                self._db.execute(
                    "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (round_no, strategy, float(epsilon), json.dumps(list(selected)),
                     json.dumps(list(replied)), float(duration), status, _blob(weights),
                     float(finished)))
                self._db.executemany(
                    "INSERT INTO device_metrics VALUES (?, ?, ?, ?)",
                    [(round_no, m.device, None if m.loss != m.loss else float(m.loss),
                      int(m.samples)) for m in metrics])
        except sqlite3.IntegrityError as exc:
            raise TinyFleetError(f"round {round_no} already in checkpoint {self.path}: {exc}") \
                from None

    def resume(self) -> tuple[int, np.ndarray] | None:
        """The last completed round and its global weights, or None for an empty checkpoint."""
        row = self._db.execute(
            "SELECT round, weights FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), _unblob(row[1])

    def history(self) -> list[RoundRecord]:
        """Every stored round, oldest first."""
        rows = self._db.execute(
            "SELECT round, strategy, epsilon, selected, replied, duration, status, weights "
            "FROM rounds ORDER BY round").fetchall()
        return [RoundRecord(int(r[0]), r[1], float(r[2]), json.loads(r[3]), json.loads(r[4]),
                            float(r[5]), r[6], _unblob(r[7])) for r in rows]

    def metrics(self, round_no: int) -> list[DeviceMetric]:
        """The device metrics stored for one round, by device id."""
        rows = self._db.execute(
            "SELECT device, loss, samples FROM device_metrics WHERE round=? ORDER BY device",
            (round_no,)).fetchall()
        return [DeviceMetric(r[0], float("nan") if r[1] is None else float(r[1]), int(r[2]))
                for r in rows]

    # -- plumbing -------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
