"""`tinyfleet selftest`: run device/selftest.py's kernels on a board against the exact
integer reference (host/reference.py) and report bit-exactness, allocation and speed."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import board_mp, reference


@dataclass(frozen=True)
class Case:
    """A small fixed net and fixed samples (Q12) the board trains on."""
    name: str
    sizes: tuple[int, ...]
    classify: bool
    lr_shift: int
    seed: int
    steps: int

    def samples(self) -> tuple[list[int], list[int]]:
        """(xs flat, ys flat or labels), deterministic; inputs span past the clamps."""
        rng = random.Random(f"{self.name}/{self.seed}")
        xs = [rng.randint(-20000, 20000) for _ in range(self.steps * self.sizes[0])]
        if self.classify:
            ys = [rng.randrange(self.sizes[-1]) for _ in range(self.steps)]
        else:
            ys = [rng.randint(-12000, 12000) for _ in range(self.steps * self.sizes[-1])]
        return xs, ys

    def expected(self) -> tuple[int, list[int]]:
        """(CRC32 of the int32 little-endian weights, first 4 weights) after training."""
        xs, ys = self.samples()
        n_in, n_out = self.sizes[0], self.sizes[-1]
        w = reference.init_weights(self.sizes, self.seed)
        for i in range(self.steps):
            x = xs[i * n_in:(i + 1) * n_in]
            y: Any = ys[i] if self.classify else ys[i * n_out:(i + 1) * n_out]
            w = reference.int_train_step(w, self.sizes, x, y, self.classify, self.lr_shift)
        return zlib.crc32(np.asarray(w, dtype="<i4").tobytes()), [int(v) for v in w[:4]]


# Kernels allowed to allocate per step (reported, not failed).
ALLOCATING_KERNELS = frozenset({"ulab"})

CASES = (Case("regression", (2, 16, 8, 2), False, 4, 7, 12),
         Case("classification", (6, 12, 4), True, 5, 11, 12))


def run_case(port: str, case: Case, reps: int = 2) -> dict[str, Any]:
    """The board's answer for `case`, with each kernel marked bit-exact or not.

    Raises:
        TinyFleetError: board I/O failed or selftest.py is missing (deploy first).
    """
    xs, ys = case.samples()
    code = (f"import selftest; selftest.main({case.sizes!r}, {case.classify!r}, "
            f"{case.lr_shift}, {case.seed}, {xs!r}, {ys!r}, {reps})")
    answer = board_mp.exec_device(port, "selftest", code, timeout=300)
    crc, head = case.expected()
    for r in answer["results"]:
        judge(r, crc, head)
    answer["case"] = case.name
    return answer


def judge(r: dict[str, Any], crc: int, head: list[int] | None = None) -> None:
    """Mark one kernel's result: bit-exact (CRC of the weights) and ok."""
    r["expected_crc"] = crc
    if not r.get("available"):
        return
    r["bit_exact"] = r["crc"] == crc
    # SPEC: bytecode and viper steps allocate nothing; ulab makes temporaries.
    r["ok"] = r["bit_exact"] and (r["alloc_per_step"] == 0
                                  or r["kernel"] in ALLOCATING_KERNELS)
    if not r["bit_exact"] and head is not None:
        r["expected_head"] = head


def passed(answers: list[dict[str, Any]]) -> bool:
    """Every available kernel bit-exact with zero allocation, and at least one ran."""
    ran = [r for a in answers for r in a["results"] if r.get("available")]
    return bool(ran) and all(r["ok"] for r in ran)


def table(answers: list[dict[str, Any]]) -> str:
    """A plain-text table of the results."""
    rows = [("case", "kernel", "bit-exact", "alloc B/step", "µs/step", "result")]
    for a in answers:
        for r in a["results"]:
            if not r.get("available"):
                rows.append((a["case"], r["kernel"], "-", "-", "-", "n/a"))
                continue
            rows.append((a["case"], r["kernel"], "yes" if r["bit_exact"] else "NO",
                         str(r["alloc_per_step"]), str(r["us_per_step"]),
                         "ok" if r["ok"] else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
