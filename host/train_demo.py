"""One simulated board learning a sine task online, on the real MicroPython unix port.

The board runs the real device code (device/mlp.py, device/datasource.py) and reports
its held-out MSE every few hundred steps; the host prints the loss as it falls.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import upy
from .errors import TinyFleetError

# Runs on the board: train online, evaluate on a fixed grid of 64 held-out inputs of the
# same task, print one JSON line per checkpoint. Evaluation is outside the timed loop.
_BOARD_SCRIPT = """
import sys, time, gc
from array import array
from mlp import MLP
from datasource import SineTask
steps, every, seed, lr_shift = [int(v) for v in sys.argv[1:5]]
kernel = sys.argv[5]
net = MLP((1, 40, 40, 1), lr_shift=lr_shift, kernel=kernel, seed=seed)
task = SineTask(seed=seed)
grid = [-4096 + (8192 * i) // 63 for i in range(64)]
x = array('i', [0])
y = array('i', [0])

def mse():
    total = 0.0
    for u in grid:
        x[0] = u
        e = (net.predict(x)[0] - task.target(u)) / 4096
        total += e * e
    return total / len(grid)

print('{"kernel": "%s", "amplitude": %d, "phase": %d, "params": %d}' % (
    net.kernel, task.amp, task.phase, net.n_params))
print('{"step": 0, "mse": %f, "us": 0}' % mse())

def main():  # a function: module-level loops grow the globals dict (allocation)
    done = 0
    while done < steps:
        n = min(every, steps - done)
        gc.collect()
        a0 = gc.mem_alloc()
        t0 = time.ticks_us()
        for _ in range(n):
            task.read(x, y)
            net.train_step(x, y)
        dt = time.ticks_diff(time.ticks_us(), t0)
        alloc = gc.mem_alloc() - a0  # read before anything below allocates
        done += n
        print('{"step": %d, "mse": %f, "us": %.1f, "alloc": %d}' % (done, mse(), dt / n, alloc))

time.ticks_diff(time.ticks_us(), time.ticks_us())  # their first calls allocate: warm up
main()
"""


@dataclass
class Checkpoint:
    """The board's held-out MSE after `step` online SGD steps."""

    step: int
    mse: float
    us_per_step: float
    bytes_allocated: int


def run(steps: int = 5000, every: int = 500, seed: int = 1, lr_shift: int = 5,
        kernel: str = "auto", build: str = "32",
        heapsize: str = "64k") -> Iterator[dict[str, object]]:
    """Train one simulated board; yield its header, then one dict per checkpoint.

    Raises:
        TinyFleetError: bad arguments, MicroPython missing, or the board failed.
    """
    if steps < 1 or every < 1:
        raise TinyFleetError("--steps and --every must be positive")
    binary = upy.micropython(build)
    with tempfile.TemporaryDirectory(prefix="tinyfleet-train-") as tmp:
        root = upy.stage_board_fs(Path(tmp))
        (root / "_train.py").write_text(_BOARD_SCRIPT)
        argv = [str(binary), "-X", f"heapsize={heapsize}", "_train.py",
                str(steps), str(every), str(seed), str(lr_shift), kernel]
        with subprocess.Popen(argv, cwd=root, env=upy.env_for(root), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                yield json.loads(line)
            err = proc.stderr.read().strip()
            if proc.wait() != 0:
                last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
                raise TinyFleetError(f"the simulated board failed: {last}")
