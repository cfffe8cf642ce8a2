"""Kernel benchmark, run ON MicroPython by `tinyfleet bench kernels` (host/bench_kernels.py).

Reads bench_cfg.json from the staged board root. For each case and kernel prints one JSON
line: either one timed repeat, CPU (and wall) µs per SGD step over at least `steps` steps
and `min_time` seconds (GC enabled, as in real use, on a board-sized heap), or, when `alloc` is
set, bytes allocated per step (gc.mem_alloc delta over `alloc_steps` steps with the GC
disabled, on a big heap). The host runs
this once per repeat, interleaved with the C baseline, so a burst of machine load hits every
kernel alike.
"""

import gc
import json
import sys
import time
from array import array

from micropython import const

_MASK = const(15)  # the case's 16 samples are used round-robin


def _run(step, xs, ys, n):
    i = 0
    while i < n:
        j = i & _MASK
        step(xs[j], ys[j])
        i += 1


def _alloc_per_step(step, xs, ys, n):
    gc.collect()
    gc.disable()
    try:
        a0 = gc.mem_alloc()
        _run(step, xs, ys, n)
        a1 = gc.mem_alloc()
    finally:
        gc.enable()
    return (a1 - a0) / n


def _cpu_us():
    """This process's CPU time in µs (Linux schedstat, ns resolution), or None."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[0]) // 1000
    except (OSError, ValueError, IndexError):
        return None


def _us_per_step(step, xs, ys, steps, min_time):
    """One timed repeat of at least `steps` steps and `min_time` s (the step count grows
    until a run is long enough; only that run counts): (CPU µs/step, wall µs/step, steps).
    CPU time is what a busy shared machine distorts least; it is None where
    /proc/self/schedstat is missing or the run was too short for it."""
    n = (steps + 15) & ~15
    while True:
        gc.collect()
        c0 = _cpu_us()
        t0 = time.ticks_us()
        _run(step, xs, ys, n)
        wall = time.ticks_diff(time.ticks_us(), t0)
        c1 = _cpu_us()
        if wall >= min_time * 1e6:
            break
        n = (int(n * max(2.0, 1.2 * min_time * 1e6 / max(wall, 1))) + 15) & ~15
    # Linux accounts a running task's CPU time per scheduler tick (1-10 ms): below 50 ms
    # the wall clock is the better figure.
    cpu = None if c0 is None or c1 is None or wall < 50000 else (c1 - c0) / n
    return cpu, wall / n, n


def _model(kernel, case):
    """(train_step, xs, ys) for `kernel`, all starting from the case's weights and samples."""
    sizes, classify, s = case["sizes"], case["classify"], case["lr_shift"]
    if kernel == "naive":
        from naive_mlp import NaiveMLP

        m = NaiveMLP(sizes, classify, s, case["weights"])
        xs = [[v / 4096 for v in x] for x in case["xs"]]
        ys = case["ys"] if classify else [[v / 4096 for v in y] for y in case["ys"]]
        return m.train_step, xs, ys
    if kernel == "ulab":
        try:
            import ulab  # noqa: F401
        except ImportError:
            raise _Unavailable("ulab is not importable on this MicroPython build") from None
    import mlp

    m = mlp.MLP(sizes, classify=classify, lr_shift=s, kernel=kernel)
    if m.kernel != kernel:
        raise _Unavailable(f"MLP chose kernel {m.kernel!r} instead")
    m.set_weights(array("i", case["weights"]))
    xs = [array("i", x) for x in case["xs"]]
    ys = case["ys"] if classify else [array("i", y) for y in case["ys"]]
    return m.train_step, xs, ys


class _Unavailable(Exception):
    pass


def main():
    with open("bench_cfg.json") as f:
        cfg = json.load(f)
    impl = sys.implementation
    version = ".".join(str(v) for v in impl.version[:3])
    print(json.dumps({"platform": sys.platform, "version": version,
                      "maxsize_bits": 64 if sys.maxsize > 2**32 else 32}))
    steps, min_time = cfg["steps"], cfg["min_time"]
    for case in cfg["cases"]:
        for kernel in cfg["kernels"]:
            row = {"case": case["name"], "kernel": kernel, "available": False}
            try:
                step, xs, ys = _model(kernel, case)
                _run(step, xs, ys, 16)  # warm up (first-call allocations, caches)
                if cfg["alloc"]:
                    row["bytes_per_step"] = _alloc_per_step(step, xs, ys, cfg["alloc_steps"])
                else:
                    cpu, wall, row["steps"] = _us_per_step(step, xs, ys, steps, min_time)
                    row["us_per_step"] = wall if cpu is None else cpu
                    row["wall_us_per_step"] = wall
                    row["clock"] = "wall" if cpu is None else "cpu"
                row["available"] = True
            except _Unavailable as exc:
                row["note"] = str(exc)
            except Exception as exc:  # report, keep benchmarking the others
                row["note"] = f"{type(exc).__name__}: {exc}"
            step = xs = ys = None
            gc.collect()
            print(json.dumps(row))


main()
