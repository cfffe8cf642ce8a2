"""Kernel benchmark: µs and bytes per SGD step of each MLP kernel on the MicroPython unix port,
against the naive float baseline (tools/bench/naive_mlp.py) and the same fixed-point step in C
(tools/bench/fixed_step.c, gcc -O2), all measured in one run so the ratios are comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import reference, upy
from .errors import TinyFleetError

BENCH_DIR = upy.REPO / "tools" / "bench"
C_SOURCE = BENCH_DIR / "fixed_step.c"
C_CACHE = upy.CACHE / "bench"
KERNELS = ("naive", "bytecode", "viper", "ulab")
N_SAMPLES = 16  # the on-device script cycles through 16 samples (a power of two)
LR_SHIFT = 6
# Timed runs: a board-sized heap (RP2040 ~190 KB, ESP32 100-150 KB of 32-bit objects; the
# 64-bit port's objects are larger and the harness holds both cases' data).
DEFAULT_HEAP = "512K"

# The targets the README promises for the viper kernel.
TARGET_X_FASTER = 40.0
TARGET_X_OF_C = 5.0


@dataclass
class Case:
    """One benchmark network: sizes, task, initial Q24 weights and Q12 samples."""

    name: str
    sizes: list[int]
    classify: bool
    lr_shift: int
    weights: list[int]
    xs: list[list[int]]
    ys: list  # list[list[int]] (Q12 targets) or list[int] (labels)


@dataclass
class Row:
    """One line of the result table."""

    case: str
    kernel: str
    available: bool
    us_per_step: float | None = None  # CPU time per step, median of the repeats
    min_us_per_step: float | None = None  # best repeat
    wall_us_per_step: float | None = None  # wall-clock time per step, median
    bytes_per_step: float | None = None
    x_faster_than_naive: float | None = None
    x_of_c: float | None = None
    note: str = ""
    steps: int | None = None  # steps per timed repeat (at least --steps, --min-time long)
    clock: str = "cpu"  # "wall" where the process CPU time is not available
    repeats_us: list[float] = field(default_factory=list)
    repeats_wall_us: list[float] = field(default_factory=list)


@dataclass
class Report:
    """Everything one `tinyfleet bench kernels` run measured."""

    build: str
    micropython: str
    steps: int
    repeats: int
    min_time: float
    heap: str
    c_steps: int
    compiler: str
    cpus: int
    load_avg: tuple[float, float]  # 1-minute load average at the start and at the end
    rows: list[Row]
    targets: dict[str, dict[str, object]]


def _init(sizes: list[int], seed: int) -> list[int]:
    return [int(v) for v in reference.init_weights(sizes, seed)]


def make_cases(seed: int = 1) -> list[Case]:
    """1-40-40-1 sine regression and 64-32-10 digit-like classification, starting from the
    device's seeded He-uniform init (host/reference.py reproduces device/mlp.py's)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, size=N_SAMPLES)
    sine = Case("1-40-40-1", [1, 40, 40, 1], False, LR_SHIFT, _init([1, 40, 40, 1], seed),
                [[int(round(v * 4096))] for v in x],
                [[int(round(np.sin(v) * 4096))] for v in x])
    # 8x8 "images" with pixel values in [0, 1] (digits scaled by 1/16) and a label each.
    pix = rng.integers(0, 17, size=(N_SAMPLES, 64))
    digits = Case("64-32-10", [64, 32, 10], True, LR_SHIFT, _init([64, 32, 10], seed),
                  [[int(v) * 256 for v in row] for row in pix],
                  [int(v) for v in rng.integers(0, 10, size=N_SAMPLES)])
    return [sine, digits]


# ---- the C baseline -------------------------------------------------------------------------

def c_binary() -> Path:
    """Compile fixed_step.c with the machine's gcc -O2 into the cache (once per source hash).

    Raises:
        TinyFleetError: gcc is missing or the compile fails.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise TinyFleetError("gcc not found: the C baseline needs it (apt-get install gcc)")
    digest = hashlib.sha256(C_SOURCE.read_bytes()).hexdigest()[:16]
    exe = C_CACHE / f"fixed_step-{digest}"
    if not exe.exists():
        C_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        proc = subprocess.run([gcc, "-O2", "-o", str(tmp), str(C_SOURCE), "-lm"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise TinyFleetError(f"gcc -O2 {C_SOURCE.name} failed: {proc.stderr.strip()[-300:]}")
        tmp.replace(exe)  # atomic: a concurrent run never sees half a binary
    return exe


def _c_input(case: Case) -> str:
    head = [len(case.sizes), *case.sizes, int(case.classify), case.lr_shift, len(case.xs)]
    body: list[int] = list(case.weights)
    for x, y in zip(case.xs, case.ys, strict=True):
        body += list(x) + ([y] if case.classify else list(y))
    return " ".join(map(str, head + body)) + "\n"


def _run_c(case: Case, args: list[str]) -> dict:
    proc = subprocess.run([str(c_binary()), *args], input=_c_input(case), capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise TinyFleetError(f"C baseline failed on {case.name}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def c_weights_after(case: Case, steps: int) -> list[int]:
    """Master weights after `steps` C steps over the case's samples (sample k % n at step k)."""
    return _run_c(case, [str(steps), "1", "--dump"])["weights"]


def c_us_per_step(case: Case, steps: int, repeats: int) -> tuple[float, list[float], float]:
    """C baseline: median CPU µs per step, each repeat's CPU µs, mean wall µs per step."""
    out = _run_c(case, [str(steps), str(repeats)])
    return (float(out["us_per_step"]), [float(v) for v in out["repeats_us"]],
            float(out["wall_us_per_step"]))


# ---- the MicroPython side --------------------------------------------------------------------

def _run_upy(cases: list[Case], build: str, steps: int, min_time: float, alloc: bool,
             alloc_steps: int, heap: str) -> tuple[dict, list[dict]]:
    """One MicroPython process: one timed repeat of every kernel on every case, or (alloc)
    the bytes each allocates per step."""
    cfg = {"steps": steps, "min_time": min_time, "alloc": alloc, "alloc_steps": alloc_steps,
           "kernels": list(KERNELS), "cases": [asdict(c) for c in cases]}
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        root = upy.stage_board_fs(Path(tmp) / "board")
        for name in ("naive_mlp.py", "upy_bench.py"):
            shutil.copyfile(BENCH_DIR / name, root / name)
        (root / "bench_cfg.json").write_text(json.dumps(cfg))
        # Counting allocations needs a big heap: with the GC off the naive baseline piles up
        # ~100s of KB per step. Timing uses a board-sized heap, so GC costs what it would.
        proc = upy.run(root, "upy_bench.py", build=build, heapsize="64M" if alloc else heap,
                       timeout=1800)
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise TinyFleetError(f"MicroPython bench failed (exit {proc.returncode}): {err[-400:]}")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not lines or "version" not in lines[0]:
        raise TinyFleetError(f"MicroPython bench printed no header: {out[-300:]!r}")
    return lines[0], lines[1:]


def _same_clock(a: Row, b: Row) -> tuple[float | None, float | None]:
    """(a, b) µs per step, both CPU time, or both wall time if either lacks CPU time."""
    if a.clock == b.clock == "cpu":
        return a.us_per_step, b.us_per_step
    return a.wall_us_per_step, b.wall_us_per_step


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run(steps: int = 200, repeats: int = 5, build: str = "64", min_time: float = 0.2,
        heap: str = DEFAULT_HEAP, c_steps: int | None = None,
        cases: list[Case] | None = None) -> Report:
    """Benchmark every kernel on every case, plus the C baseline, in one run.

    Each repeat is one MicroPython process timing every kernel once, then one C run per
    case: interleaved, so load on a shared machine hits all of them alike. Reported: the
    median over the repeats. Allocation is counted in one more process, on a big heap.

    Raises:
        TinyFleetError: MicroPython or gcc is missing, or a benchmark process fails.
    """
    if steps < 1 or repeats < 1 or min_time < 0:
        raise TinyFleetError("--steps and --repeats must be at least 1, --min-time >= 0")
    cases = cases or make_cases()
    c_steps = c_steps or max(steps, 20000)  # C is ~100x faster: time more steps
    alloc_steps = max(1, min(steps, 8))  # the naive kernel fills the heap with the GC off
    load_start = os.getloadavg()[0]
    header, alloc_rows = _run_upy(cases, build, steps, min_time, True, alloc_steps, heap)
    rows: dict[tuple[str, str], Row] = {
        (u["case"], u["kernel"]): Row(u["case"], u["kernel"], u["available"],
                                      bytes_per_step=u.get("bytes_per_step"),
                                      note=u.get("note", ""))
        for u in alloc_rows}
    for _ in range(repeats):
        _, upy_rows = _run_upy(cases, build, steps, min_time, False, alloc_steps, heap)
        for u in upy_rows:
            row = rows[u["case"], u["kernel"]]
            if u["available"] and row.available:
                row.repeats_us.append(u["us_per_step"])
                row.repeats_wall_us.append(u["wall_us_per_step"])
                row.steps = u["steps"]
                row.clock = u["clock"]
            elif row.available:  # worked while counting bytes, failed while timing
                row.available, row.note = False, u.get("note", "failed while timing")
        for case in cases:
            row = rows.setdefault((case.name, "C -O2"), Row(
                case.name, "C -O2", True, bytes_per_step=0.0, steps=c_steps,
                note="gcc -O2, same integers"))
            _, cpu, wall = c_us_per_step(case, c_steps, 1)
            row.repeats_us += cpu
            row.repeats_wall_us.append(wall)
    out: list[Row] = []
    targets: dict[str, dict[str, object]] = {}
    for case in cases:
        mine = [row for (name, _), row in rows.items() if name == case.name]
        for row in mine:
            if row.repeats_us:
                row.us_per_step = statistics.median(row.repeats_us)
                row.min_us_per_step = min(row.repeats_us)
                row.wall_us_per_step = statistics.median(row.repeats_wall_us)
        naive = rows.get((case.name, "naive"))
        c = rows[case.name, "C -O2"]
        for row in mine:  # ratios on one clock: a short run falls back to wall time
            if naive is not None:
                row.x_faster_than_naive = _ratio(*_same_clock(naive, row))
            row.x_of_c = _ratio(*_same_clock(row, c))
        out += mine
        viper = rows.get((case.name, "viper"))
        if viper is not None and viper.available:
            targets[case.name] = {
                "x_faster_than_naive": viper.x_faster_than_naive,
                "x_of_c": viper.x_of_c,
                "x_of_c_best": _ratio(viper.min_us_per_step, c.min_us_per_step),
                "bytes_per_step": viper.bytes_per_step,
                "met": bool((viper.x_faster_than_naive or 0) >= TARGET_X_FASTER
                            and (viper.x_of_c or 1e9) <= TARGET_X_OF_C
                            and viper.bytes_per_step == 0),
            }
        else:
            targets[case.name] = {"met": False, "note": "viper kernel not available"}
    load_end = os.getloadavg()[0]
    return Report(build, header["version"], steps, repeats, min_time, heap, c_steps,
                  _gcc_version(), os.cpu_count() or 1, (load_start, load_end), out, targets)


def _gcc_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc (missing)"
    first = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout
    return first.splitlines()[0] if first else "gcc"


# ---- output ----------------------------------------------------------------------------------

def to_json(report: Report) -> str:
    """The report as JSON (what `--json` prints)."""
    return json.dumps(asdict(report), indent=2)


def _fmt(v: object, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def format_table(report: Report) -> str:
    """The report as an aligned text table with ratios vs naive and vs C."""
    lines = [f"MicroPython {report.micropython} unix port, {report.build}-bit build; "
             f"heap {report.heap}; >= {report.steps} steps and >= {report.min_time:g} s "
             "per timed repeat, "
             f"median of {report.repeats} interleaved repeats; "
             f"C: {report.compiler}, {report.c_steps} steps per repeat; "
             "µs/step is CPU time (schedstat / CLOCK_PROCESS_CPUTIME_ID)",
             f"machine: {report.cpus} CPUs, load average {report.load_avg[0]:.1f} -> "
             f"{report.load_avg[1]:.1f}" + (" (busy: timings are noisy)"
                                            if max(report.load_avg) > 0.5 * report.cpus else ""),
             f"{'shape':<10} {'kernel':<9} {'µs/step':>10} {'bytes/step':>11} "
             f"{'vs naive':>15} {'vs C':>13}"]
    for r in report.rows:
        if not r.available:
            lines.append(f"{r.case:<10} {r.kernel:<9} {'n/a':>10}   ({r.note})")
            continue
        lines.append(f"{r.case:<10} {r.kernel:<9} {_fmt(r.us_per_step, '.1f'):>10} "
                     f"{_fmt(r.bytes_per_step, ',.0f'):>11} "
                     f"{_fmt(r.x_faster_than_naive, '.1f', 'x faster'):>15} "
                     f"{_fmt(r.x_of_c, '.1f', 'x of C'):>13}"
                     + ("  (wall clock)" if r.clock == "wall" else ""))
    for name, t in report.targets.items():
        if "note" in t:
            lines.append(f"target {name}: {t['note']}")
            continue
        lines.append(
            f"target {name}: viper {_fmt(t['x_faster_than_naive'], '.1f', 'x')} faster than "
            f"naive (target >= {TARGET_X_FASTER:.0f}x); {_fmt(t['x_of_c'], '.1f', 'x')} of C, "
            f"best repeats {_fmt(t['x_of_c_best'], '.1f', 'x')} (target <= {TARGET_X_OF_C:.0f}x); "
            f"{_fmt(t['bytes_per_step'], '.0f')} B/step (target 0): "
            f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
