"""Held-out evaluation of a global sine model, the way a board would use it.

Each held-out task gets 10 shots; the model starts from the global weights θ, takes
`steps` SGD steps over those shots (cycling) with the device's exact integer arithmetic,
and is scored by MSE on fresh query points of the same task. The same tasks, shots and
queries are used for every θ, so round-to-round differences are paired (DESIGN §3).

The integer step is tinyfleet.metaeval.train_, batched over tasks with numpy (tests hold
it to tinyfleet.reference's integers, which the boards' are). Tasks come from device/datasource.py itself,
run under CPython, so held-out tasks are drawn exactly like the boards' tasks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from . import reference as ref
from .upy import DEVICE_DIR

I64 = npt.NDArray[np.int64]


def datasource() -> ModuleType:
    """device/datasource.py loaded as a CPython module."""
    spec = importlib.util.spec_from_file_location("tf_device_datasource",
                                                  DEVICE_DIR / "datasource.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batch_forward(w: I64, sizes: Sequence[int], x: I64) -> list[I64]:
    """Activations for T networks at once: w (T, P) Q24, x (T, n_in) Q12."""
    a = np.clip(x, -ref.A_MAX, ref.A_MAX)
    acts = [a]
    specs = ref.layers(sizes)
    t = w.shape[0]
    for n, (off, n_in, n_out) in enumerate(specs):
        m = w[:, off:off + n_out * (n_in + 1)].reshape(t, n_out, n_in + 1)
        wq = (m + 2048) >> 12
        acc = ((wq[:, :, :n_in] * a[:, None, :]) >> 7).sum(axis=2) + (wq[:, :, n_in] << 5)
        a = acc >> 5
        if n < len(specs) - 1:
            a = np.clip(a, 0, ref.A_MAX)
        acts.append(a)
    return acts


@dataclass
class HeldOut:
    """A fixed set of held-out sine tasks: shots (T, S) and queries (T, Q), Q12."""

    shots_x: I64
    shots_y: I64
    query_x: I64
    query_y: I64

    @classmethod
    def make(cls, n_tasks: int = 100, shots: int = 10, queries: int = 50,
             seed: int = 0) -> HeldOut:
        ds = datasource()
        sx, sy, qx, qy = (np.zeros((n_tasks, k), dtype=np.int64)
                          for k in (shots, shots, queries, queries))
        xa, ya = [0], [0]
        for i in range(n_tasks):
            # Seeds far from the ones simulated boards use (small integers).
            task = ds.SineTask(seed=0x15000000 + 7919 * i + 1000003 * seed)
            for j in range(shots):
                task.read(xa, ya)
                sx[i, j], sy[i, j] = xa[0], ya[0]
            for j in range(queries):
                task.read(xa, ya)
                qx[i, j], qy[i, j] = xa[0], ya[0]
        return cls(sx, sy, qx, qy)

    def mse(self, w: I64, sizes: Sequence[int]) -> npt.NDArray[np.float64]:
        """Per-task MSE (real units) of networks w (T, P) on the query points."""
        err = np.zeros(w.shape[0])
        for j in range(self.query_x.shape[1]):
            z = batch_forward(w, sizes, self.query_x[:, j:j + 1])[-1][:, 0]
            err += ((z - self.query_y[:, j]) / ref.ONE) ** 2
        return err / self.query_x.shape[1]

    def evaluate(self, theta: Sequence[int] | I64, sizes: Sequence[int], steps: int = 32,
                 lr_shift: int = 6) -> tuple[float, float]:
        """(MSE before adaptation, MSE after `steps` steps on the shots), task means."""
        from .metaeval import train_  # here: metaeval imports this module

        t = self.shots_x.shape[0]
        w = np.tile(np.asarray(theta, dtype=np.int64), (t, 1))
        before = float(self.mse(w, sizes).mean())
        # In place, with the boards' integers (metaeval.train_ is held to the reference).
        idx = np.arange(steps) % self.shots_x.shape[1]
        train_(w, sizes, self.shots_x[:, idx, None], self.shots_y[:, idx, None], "fixed",
               lr_shift)
        return before, float(self.mse(w, sizes).mean())
