"""Federated meta-learning evaluated on the host, with the boards' own arithmetic.

Simulates the fleet's rounds (DESIGN §3) for thousands of rounds in seconds: the boards'
SGD steps run with the exact integer arithmetic of the device (tinyfleet.reference's
contract, batched with numpy over seeds and boards) and, with the same samples, seed and
settings, with the float64 reference. Methods:

- TinyReptile (Ren et al. 2023, "TinyReptile: TinyML with Federated Meta-Learning"):
  serial Reptile, one board per round, `boards`x the rounds of the batched methods;
- Reptile (Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms"),
  batched: every board every round, θ ← θ + ε·mean(φᵢ − θ), ε annealed 1 → 0;
- FedAvg (McMahan et al. 2017): the same rounds with ε = 1;
- jointly trained: one model fitted by online SGD on all boards' samples pooled
  (shuffled), the same sample budget: the "one global model";
- local-only: each board learns from the init on its own stream and never shares; on a
  held-out task, board (task index mod boards) starts from its own final weights;
- random: the device's seeded init.

The aggregation is tinyfleet.strategies' (what the coordinator runs), on θ kept in
float64 like the coordinator's; with `wire=True` weights cross the "wire" as int16 Q12 in
both directions, as in the real fleet. Every method is scored on the same held-out tasks
with the same shots and query points (a paired comparison): 10 shots, 8 and 32 SGD steps
cycling over them, MSE on fresh query points; the mean over tasks, then over seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import reference as ref
from . import strategies
from .heldout import datasource

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

ARITHMETICS = ("fixed", "float")
METHODS = ("tinyreptile", "reptile", "fedavg", "joint", "local", "random")
LABELS = {
    "tinyreptile": "TinyReptile (serial, 1 board/round)",
    "reptile": "Reptile (batched, all boards/round)",
    "fedavg": "FedAvg (eps = 1)",
    "joint": "jointly trained (pooled SGD)",
    "local": "local-only (own stream)",
    "random": "random init",
}
I16_MIN, I16_MAX = -32768, 32767
HELDOUT_SEED_BASE = 0x15000000   # tinyfleet.heldout's held-out task seeds
RECOVERY_SEED_BASE = 0x16000000  # drift-recovery boards: far from both


# ------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Settings:
    """What is simulated and how it is scored (defaults: DESIGN §3's protocol)."""

    sizes: tuple[int, ...] = (1, 40, 40, 1)
    boards: int = 8
    rounds: int = 300           # batched rounds; TinyReptile runs rounds * boards
    k: int = 32                 # fresh samples (SGD steps) per board per round
    drift_rounds: int = 3       # a board's task drifts after this many of its rounds
    lr_shift: int = 6           # inner learning rate 2**-lr_shift (0.0156)
    schedule: str = "linear"    # ε schedule (1 → 0) of Reptile and TinyReptile
    seeds: int = 3
    tasks: int = 200            # held-out tasks
    shots: int = 10
    queries: int = 50
    steps: tuple[int, ...] = (8, 32)
    wire: bool = True           # int16 Q12 weights on the wire (fixed point only)
    heldout_seed: int = 0
    recovery_tasks: int = 100
    recovery_target: float = 0.5    # MSE a drifted board has to reach
    recovery_max: int = 256         # samples it gets to do so
    recovery_every: int = 4         # MSE checked every this many samples
    first_seed: int = 0             # seeds are first_seed .. first_seed + seeds - 1
    drift_samples: int | None = None  # samples between drifts (None: drift_rounds * k)
    epsilon: float = 1.0            # Reptile/TinyReptile ε at the first round (→ 0)

    def __post_init__(self) -> None:
        ref.layers(self.sizes)  # raises on a bad shape
        checks = {"boards": self.boards, "rounds": self.rounds, "k": self.k,
                  "seeds": self.seeds, "tasks": self.tasks, "shots": self.shots,
                  "queries": self.queries, "drift_rounds": self.drift_rounds,
                  "recovery_every": self.recovery_every}
        for name, v in checks.items():
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not 1 <= self.lr_shift <= 30:
            raise ValueError(f"lr_shift must be 1..30, got {self.lr_shift}")
        if self.drift_samples is not None and self.drift_samples < 0:
            raise ValueError(f"drift_samples must be >= 0, got {self.drift_samples}")
        if not self.steps or min(self.steps) < 0:
            raise ValueError(f"steps must be non-negative, got {self.steps}")
        if self.sizes[0] != 1 or self.sizes[-1] != 1:
            raise ValueError("the sine task needs one input and one output")

    @property
    def samples_per_board(self) -> int:
        """Device samples each board spends (the same for every method)."""
        return self.rounds * self.k

    @property
    def drift(self) -> int:
        """Samples between a board's task changes (0: never)."""
        if self.drift_samples is not None:
            return self.drift_samples
        return self.drift_rounds * self.k

    @property
    def seed_list(self) -> list[int]:
        """The seeds simulated (initial weights, boards' streams, the joint shuffle)."""
        return list(range(self.first_seed, self.first_seed + self.seeds))


# --------------------------------------------------------- batched SGD, in place

def _layer_views(w: npt.NDArray, sizes: Sequence[int]) -> list[npt.NDArray]:
    """Views (T, n_out, n_in + 1) of each layer of T flat weight vectors w (T, P)."""
    t = w.shape[0]
    views = []
    for off, n_in, n_out in ref.layers(sizes):
        v = w[:, off:off + n_out * (n_in + 1)].reshape(t, n_out, n_in + 1)
        assert np.shares_memory(v, w)  # updates must land in w
        views.append(v)
    return views


def _int_step(mats: list[I64], x: I64, y: I64, s: int) -> None:
    """One device SGD step (SPEC's fixed-point contract) for T networks, in place.

    x (T, n_in) and y (T, n_out) are Q12; mats are the layer views of Q24 weights.
    """
    last = len(mats) - 1
    a = np.minimum(np.maximum(x, -ref.A_MAX), ref.A_MAX)
    acts, wqs = [a], []
    for n, m in enumerate(mats):
        n_in = m.shape[2] - 1
        wq = (m + 2048) >> 12   # the forward's working weights are also the backward's
        wqs.append(wq)
        acc = ((wq[:, :, :n_in] * a[:, None, :]) >> 7).sum(axis=2) + (wq[:, :, n_in] << 5)
        a = acc >> 5
        if n < last:
            a = np.minimum(np.maximum(a, 0), ref.A_MAX)
        acts.append(a)
    delta = np.minimum(np.maximum(acts[-1] - y, -ref.D_MAX), ref.D_MAX)
    r = 1 << (s - 1)
    for n in range(last, -1, -1):
        m = mats[n]
        n_in = m.shape[2] - 1
        a = acts[n]
        below = None
        if n > 0:  # from the weights before this layer's update
            g = ((wqs[n][:, :, :n_in] * delta[:, :, None]) >> 7).sum(axis=1) >> 5
            g = np.minimum(np.maximum(g, -ref.D_MAX), ref.D_MAX)
            below = np.where((a > 0) & (a < ref.A_MAX), g, 0)
        m[:, :, :n_in] -= (delta[:, :, None] * a[:, None, :] + r) >> s
        m[:, :, n_in] -= (delta * ref.ONE + r) >> s
        np.maximum(m, -ref.M_MAX, out=m)
        np.minimum(m, ref.M_MAX, out=m)
        if below is not None:
            delta = below


def _float_step(mats: list[F64], x: F64, y: F64, lr: float) -> None:
    """One SGD step of the float64 reference network for T networks, in place."""
    last = len(mats) - 1
    a = np.minimum(np.maximum(x, -ref.F_A_MAX), ref.F_A_MAX)
    acts = [a]
    for n, m in enumerate(mats):
        n_in = m.shape[2] - 1
        a = (m[:, :, :n_in] @ a[:, :, None])[:, :, 0] + m[:, :, n_in]
        if n < last:
            a = np.minimum(np.maximum(a, 0.0), ref.F_A_MAX)
        acts.append(a)
    delta = np.minimum(np.maximum(acts[-1] - y, -ref.F_D_MAX), ref.F_D_MAX)
    for n in range(last, -1, -1):
        m = mats[n]
        n_in = m.shape[2] - 1
        a = acts[n]
        below = None
        if n > 0:
            g = (delta[:, None, :] @ m[:, :, :n_in])[:, 0, :]
            g = np.minimum(np.maximum(g, -ref.F_D_MAX), ref.F_D_MAX)
            below = np.where((a > 0) & (a < ref.F_A_MAX), g, 0.0)
        m[:, :, :n_in] -= lr * (delta[:, :, None] * a[:, None, :])
        m[:, :, n_in] -= lr * delta
        np.maximum(m, -ref.F_M_MAX, out=m)
        np.minimum(m, ref.F_M_MAX, out=m)
        if below is not None:
            delta = below


def train_(w: npt.NDArray, sizes: Sequence[int], xs: npt.NDArray, ys: npt.NDArray,
           arith: str, lr_shift: int) -> None:
    """Online SGD, in place: network t takes one step per sample xs[t, j], ys[t, j] in order.

    w (T, P): int64 Q24 ("fixed") or float64 real ("float"), C-contiguous. xs (T, N, n_in)
    and ys (T, N, n_out): Q12 ints for "fixed", reals for "float".

    Raises:
        ValueError: unknown arithmetic, or a dtype that does not match it.
    """
    _check_arith(w, arith)
    if not w.flags.c_contiguous:
        raise ValueError("weights must be C-contiguous (they are updated in place)")
    mats = _layer_views(w, sizes)
    if arith == "fixed":
        for j in range(xs.shape[1]):
            _int_step(mats, xs[:, j], ys[:, j], lr_shift)
    else:
        lr = 2.0 ** -lr_shift
        for j in range(xs.shape[1]):
            _float_step(mats, xs[:, j], ys[:, j], lr)


def _check_arith(w: npt.NDArray, arith: str) -> None:
    if arith == "fixed":
        if w.dtype != np.int64:
            raise ValueError(f"fixed-point weights must be int64 (Q24), got {w.dtype}")
    elif arith == "float":
        if w.dtype != np.float64:
            raise ValueError(f"float weights must be float64, got {w.dtype}")
    else:
        raise ValueError(f"unknown arithmetic {arith!r} (choose {', '.join(ARITHMETICS)})")


def predict(w: npt.NDArray, sizes: Sequence[int], xs: npt.NDArray, arith: str) -> npt.NDArray:
    """Outputs (T, B, n_out) of T networks w (T, P) for B inputs each, xs (T, B, n_in)."""
    _check_arith(w, arith)
    t, b = xs.shape[:2]
    out = np.empty((t, b, sizes[-1]), dtype=w.dtype)
    mats = _layer_views(w, sizes)
    last = len(mats) - 1
    chunk = max(1, 200_000 // (t * max(sizes)))  # bounds the (T, chunk, o, i) temporary
    for c0 in range(0, b, chunk):
        x = xs[:, c0:c0 + chunk]
        if arith == "fixed":
            a = np.minimum(np.maximum(x, -ref.A_MAX), ref.A_MAX)
            for n, m in enumerate(mats):
                n_in = m.shape[2] - 1
                wq = (m + 2048) >> 12
                acc = (((wq[:, None, :, :n_in] * a[:, :, None, :]) >> 7).sum(axis=3)
                       + (wq[:, None, :, n_in] << 5))
                a = acc >> 5
                if n < last:
                    a = np.minimum(np.maximum(a, 0), ref.A_MAX)
        else:
            a = np.minimum(np.maximum(x, -ref.F_A_MAX), ref.F_A_MAX)
            for n, m in enumerate(mats):
                n_in = m.shape[2] - 1
                a = a @ m[:, :, :n_in].transpose(0, 2, 1) + m[:, None, :, n_in]
                if n < last:
                    a = np.minimum(np.maximum(a, 0.0), ref.F_A_MAX)
        out[:, c0:c0 + chunk] = a
    return out


def mse(w: npt.NDArray, sizes: Sequence[int], qx: I64, qy: I64, arith: str) -> F64:
    """Per-network MSE in real units on Q12 query points qx, qy (T, Q) (one output)."""
    if arith == "fixed":
        z = predict(w, sizes, qx[:, :, None], arith)[:, :, 0]
        return (((z - qy) / ref.ONE) ** 2).mean(axis=1)
    z = predict(w, sizes, (qx / ref.ONE)[:, :, None], arith)[:, :, 0]
    return ((z - qy / ref.ONE) ** 2).mean(axis=1)


# ----------------------------------------------------------------- weights, wire

def to_arith(w_q24: npt.ArrayLike, arith: str) -> npt.NDArray:
    """Q24 master weights as the given arithmetic's weights (int64 Q24 or float64 real)."""
    w = np.asarray(w_q24)
    if arith == "fixed":
        return np.ascontiguousarray(w, dtype=np.int64)
    _check_arith(np.zeros(1), arith)
    return np.asarray(w, dtype=np.float64) / (1 << 24)


def wire_q12(m: I64) -> I64:
    """Q24 masters after a trip over the wire as int16 Q12: to_q12 then to_q24 (shared/weights)."""
    q = np.minimum(np.maximum((m + 2048) >> 12, I16_MIN), I16_MAX)
    return np.minimum(np.maximum(q << 12, -ref.M_MAX), ref.M_MAX)


def to_master(theta: F64) -> I64:
    """The coordinator's float θ (Q24 units) as master integers: rounded, clamped."""
    return np.clip(np.rint(theta), -ref.M_MAX, ref.M_MAX).astype(np.int64)


def _send(theta: F64, arith: str, wire: bool) -> npt.NDArray:
    """What a board starts a round from, given the coordinator's θ."""
    if arith == "float":
        return np.array(theta, dtype=np.float64)
    m = to_master(theta)
    return wire_q12(m) if wire else m


def _receive(phi: npt.NDArray, arith: str, wire: bool) -> F64:
    """What the coordinator gets back from a board holding φ (float64, θ's units)."""
    if arith == "fixed" and wire:
        phi = wire_q12(phi)
    return np.asarray(phi, dtype=np.float64)


# --------------------------------------------------------------------- data

def board_seed(seed: int, board: int) -> int:
    """A board's data seed, as `tinyfleet simulate` configures its devices."""
    return 1000 * seed + board + 1


def sine_stream(task_seed: int, n: int, drift: int = 0,
                drifts: int | None = None) -> tuple[I64, I64]:
    """n samples (Q12 x, y) of device/datasource.SineTask(task_seed), drifting to a new
    task after every `drift` samples (0: never), as a board's stream; at most `drifts`
    times if given."""
    task = datasource().SineTask(seed=task_seed)
    xs, ys = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    xa, ya = [0], [0]
    left = n if drifts is None else drifts
    for j in range(n):
        task.read(xa, ya)
        xs[j], ys[j] = xa[0], ya[0]
        if drift and left and (j + 1) % drift == 0:
            task.drift()
            left -= 1
    return xs, ys


def board_streams(settings: Settings, seed: int) -> tuple[I64, I64]:
    """Every board's samples for one seed: x, y (boards, samples_per_board), Q12."""
    n = settings.samples_per_board
    pairs = [sine_stream(board_seed(seed, b), n, settings.drift) for b in range(settings.boards)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@dataclass
class HeldOutSet:
    """Held-out sine tasks: shots and query points (T, S) / (T, Q), Q12. The same object
    scores every method, so comparisons between methods are paired."""

    shots_x: I64
    shots_y: I64
    query_x: I64
    query_y: I64

    @classmethod
    def make(cls, tasks: int, shots: int = 10, queries: int = 50, seed: int = 0) -> HeldOutSet:
        """Tasks drawn by the boards' data source, seeded as tinyfleet.heldout's."""
        sx, sy, qx, qy = (np.empty((tasks, k), dtype=np.int64)
                          for k in (shots, shots, queries, queries))
        for i in range(tasks):
            x, y = sine_stream(HELDOUT_SEED_BASE + 7919 * i + 1000003 * seed, shots + queries)
            sx[i], sy[i], qx[i], qy[i] = x[:shots], y[:shots], x[shots:], y[shots:]
        return cls(sx, sy, qx, qy)

    def __len__(self) -> int:
        return int(self.shots_x.shape[0])


def _samples(x: I64, y: I64, arith: str) -> tuple[npt.NDArray, npt.NDArray]:
    """Q12 samples (..., N) as train_'s (..., N, 1) inputs and targets for `arith`."""
    if arith == "fixed":
        return x[..., None], y[..., None]
    return (x / ref.ONE)[..., None], (y / ref.ONE)[..., None]


# ---------------------------------------------------------------- evaluation

def adapt(inits: npt.NDArray, held: HeldOutSet, sizes: Sequence[int], arith: str,
          steps: Sequence[int], lr_shift: int) -> dict[int, F64]:
    """Per-task MSE after each number of `steps` of SGD on the task's shots (cycling).

    inits: one weight vector (P,) for every task, or one per task (T, P).
    Returns {steps: per-task MSE (T,)}.
    """
    t = len(held)
    w = np.array(np.broadcast_to(inits, (t, inits.shape[-1])), dtype=inits.dtype, order="C")
    sx, sy = _samples(held.shots_x, held.shots_y, arith)
    out: dict[int, F64] = {}
    done = 0
    for n in sorted(set(steps)):
        idx = np.arange(done, n) % held.shots_x.shape[1]
        train_(w, sizes, sx[:, idx], sy[:, idx], arith, lr_shift)
        done = n
        out[n] = mse(w, sizes, held.query_x, held.query_y, arith)
    return out


def evaluate_init(w_q24: Sequence[int] | I64, sizes: Sequence[int], tasks: int = 200,
                  steps: Sequence[int] = (0, 8, 32), lr_shift: int = 6, seed: int = 0,
                  arith: str = "fixed", held: HeldOutSet | None = None) -> dict[int, float]:
    """Mean held-out MSE of an init (e.g. a fleet's final global weights) after `steps`
    adaptation steps on 10 shots, with the boards' arithmetic by default.

    w_q24: Q24 master weights (ints, or floats in Q24 units, rounded as to_master does).
    Pass `held` to score several inits on the same tasks without rebuilding them.

    Returns {steps: MSE averaged over tasks}; steps 0 is before adaptation.

    Raises:
        ValueError: weights of the wrong length for `sizes`, or a bad arithmetic.
    """
    w = np.asarray(w_q24)
    if w.shape != (ref.n_params(sizes),):
        raise ValueError(f"weights have shape {w.shape}, {list(sizes)} needs "
                         f"({ref.n_params(sizes)},)")
    if w.dtype.kind == "f":  # a coordinator's float θ in Q24 units: as it would send it
        w = to_master(w)
    held = held or HeldOutSet.make(tasks, seed=seed)
    res = adapt(to_arith(w, arith), held, sizes, arith, steps, lr_shift)
    return {n: float(v.mean()) for n, v in res.items()}


# -------------------------------------------------------------------- methods

def _epsilons(method: str, rounds: int, schedule: str, eps0: float = 1.0) -> list[float]:
    if method == "fedavg":
        return [1.0] * rounds
    return [strategies.epsilon_at(schedule, i, rounds, eps0) for i in range(rounds)]


def federated(theta0: F64, xs: I64, ys: I64, method: str, settings: Settings,
              arith: str) -> F64:
    """Run `method` ("tinyreptile", "reptile", "fedavg") over the boards' streams.

    theta0 (S, P): one initial θ per seed (Q24 units for "fixed", real for "float");
    xs, ys (S, boards, samples): each board's samples. Round r of the batched methods
    gives every board its next k samples; TinyReptile's round r gives them to board
    r mod boards only, so every method spends the same samples. Returns the final θ (S, P).
    """
    n_s, n_b = xs.shape[:2]
    k = settings.k
    serial = method == "tinyreptile"
    rounds = settings.rounds * (n_b if serial else 1)
    agg = strategies.AGGREGATORS[method]
    theta = np.array(theta0, dtype=np.float64)
    for r, eps in enumerate(_epsilons(method, rounds, settings.schedule, settings.epsilon)):
        sel = [r % n_b] if serial else list(range(n_b))
        c = r // n_b if serial else r
        start = _send(theta, arith, settings.wire)  # (S, P)
        w = np.ascontiguousarray(np.repeat(start, len(sel), axis=0))
        bx, by = _samples(xs[:, sel, c * k:(c + 1) * k], ys[:, sel, c * k:(c + 1) * k], arith)
        train_(w, settings.sizes, bx.reshape(n_s * len(sel), k, 1),
               by.reshape(n_s * len(sel), k, 1), arith, settings.lr_shift)
        phi = _receive(w, arith, settings.wire).reshape(n_s, len(sel), -1)
        for s in range(n_s):
            replies = [strategies.Reply(f"board{b}", phi[s, j], k) for j, b in enumerate(sel)]
            theta[s] = agg(theta[s], replies, eps)
    return theta


def joint(w0: npt.NDArray, xs: I64, ys: I64, settings: Settings, arith: str,
          seeds: Sequence[int]) -> npt.NDArray:
    """One model per seed fitted by online SGD on all boards' samples pooled and shuffled
    (the same sample budget as the federated methods). Returns weights (S, P)."""
    n_s = xs.shape[0]
    px, py = xs.reshape(n_s, -1), ys.reshape(n_s, -1)
    order = np.stack([np.random.default_rng(s).permutation(px.shape[1]) for s in seeds])
    px, py = np.take_along_axis(px, order, 1), np.take_along_axis(py, order, 1)
    w = np.array(w0)
    bx, by = _samples(px, py, arith)
    train_(w, settings.sizes, bx, by, arith, settings.lr_shift)
    return w


def local(w0: npt.NDArray, xs: I64, ys: I64, settings: Settings, arith: str) -> npt.NDArray:
    """Each board learns from the init on its own stream only. Returns (S, boards, P)."""
    n_s, n_b = xs.shape[:2]
    w = np.ascontiguousarray(np.repeat(w0, n_b, axis=0))
    bx, by = _samples(xs.reshape(n_s * n_b, -1), ys.reshape(n_s * n_b, -1), arith)
    train_(w, settings.sizes, bx, by, arith, settings.lr_shift)
    return w.reshape(n_s, n_b, -1)


def train_method(method: str, settings: Settings, arith: str, seeds: Sequence[int],
                 init_q24: I64, xs: I64, ys: I64) -> npt.NDArray:
    """The init a method hands to a held-out task: (S, P), or (S, boards, P) for local.

    Raises:
        ValueError: unknown method or arithmetic.
    """
    w0 = np.ascontiguousarray(to_arith(init_q24, arith))
    if method == "random":
        return w0
    if method in ("tinyreptile", "reptile", "fedavg"):
        theta = federated(w0.astype(np.float64), xs, ys, method, settings, arith)
        return to_master(theta) if arith == "fixed" else theta
    if method == "joint":
        return joint(w0, xs, ys, settings, arith, seeds)
    if method == "local":
        return local(w0, xs, ys, settings, arith)
    raise ValueError(f"unknown method {method!r} (choose {', '.join(METHODS)})")


def task_inits(init: npt.NDArray, tasks: int) -> npt.NDArray:
    """Per-task starting weights: the init itself, or for local-only (boards, P) the
    final weights of board (task index mod boards)."""
    if init.ndim == 1:
        return init
    return init[np.arange(tasks) % init.shape[0]]


# ------------------------------------------------------------------ recovery

def drift_recovery(theta: npt.NDArray, settings: Settings, arith: str,
                   seed: int = 0) -> dict[str, Any]:
    """Samples a board needs after its task drifts to reach `recovery_target` MSE.

    A board starts from the meta-learned θ and learns its old task for as long as a task
    lasts (drift_rounds * k samples), so it holds φ_old; then the task drifts. It learns
    online from the new task's stream, starting either from θ (the global init it keeps)
    or from φ_old (its previous weights). MSE on the new task's query points is checked
    every `recovery_every` samples up to `recovery_max`. Returns, per start, the median
    samples to the target (None if most never get there), the mean (a task that never
    gets there counts as recovery_max), the fraction that got there, the mean MSE curve.
    """
    st = settings
    n, every, cap, k = st.recovery_tasks, st.recovery_every, st.recovery_max, st.drift
    ox, oy = np.empty((n, k), np.int64), np.empty((n, k), np.int64)
    nx, ny = np.empty((n, cap), np.int64), np.empty((n, cap), np.int64)
    qx, qy = np.empty((n, st.queries), np.int64), np.empty((n, st.queries), np.int64)
    for i in range(n):  # old-task samples, one drift, then the new task's samples
        x, y = sine_stream(RECOVERY_SEED_BASE + 7919 * i + 1000003 * seed,
                           k + cap + st.queries, drift=k, drifts=1)
        ox[i], oy[i], nx[i], ny[i] = x[:k], y[:k], x[k:k + cap], y[k:k + cap]
        qx[i], qy[i] = x[k + cap:], y[k + cap:]
    w = np.array(np.broadcast_to(theta, (2 * n, theta.shape[-1])), dtype=theta.dtype, order="C")
    bx, by = _samples(ox, oy, arith)
    train_(w[n:], st.sizes, bx, by, arith, st.lr_shift)  # rows n..: the previous weights
    bx, by = _samples(np.concatenate([nx, nx]), np.concatenate([ny, ny]), arith)
    qx2, qy2 = np.concatenate([qx, qx]), np.concatenate([qy, qy])
    checks = list(range(0, cap + 1, every))
    curve = np.empty((len(checks), 2 * n))
    for c, m in enumerate(checks):
        if c:
            train_(w, st.sizes, bx[:, checks[c - 1]:m], by[:, checks[c - 1]:m], arith,
                   st.lr_shift)
        curve[c] = mse(w, st.sizes, qx2, qy2, arith)
    hit = curve <= st.recovery_target
    first = np.where(hit.any(axis=0), np.argmax(hit, axis=0), -1)
    need = np.where(first >= 0, np.asarray(checks)[first], np.inf)
    out: dict[str, Any] = {"target": st.recovery_target, "tasks": n, "max_samples": cap,
                           "every": every, "checks": checks}
    for name, sl in (("from_init", slice(0, n)), ("from_previous", slice(n, 2 * n))):
        med = float(np.median(need[sl]))
        out[name] = {"median_samples": None if math.isinf(med) else med,
                     "mean_samples_capped": float(np.minimum(need[sl], cap).mean()),
                     "reached": float(np.isfinite(need[sl]).mean()),
                     "mean_mse": [float(v) for v in curve[:, sl].mean(axis=1)]}
    return out


# ------------------------------------------------------------------ the study

@dataclass
class Report:
    """Everything `tinyfleet evaluate` prints and writes."""

    settings: dict[str, Any]
    # mse[arith][method][steps] = mean over seeds of the task-mean MSE; per_seed the same
    # per seed; 0 steps is before adaptation.
    mse: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    per_seed: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    recovery: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mse", "per_seed"):  # JSON keys are strings
            d[key] = {a: {m: {str(s): v for s, v in per.items()} for m, per in by.items()}
                      for a, by in d[key].items()}
        return d


def check_targets(mse: dict[str, dict[str, dict[int, float]]], at: int) -> list[dict[str, Any]]:
    """DESIGN §3's targets on the `at`-step adapted MSE, each with its measured ratio.

    - meta-learned init (TinyReptile, Reptile) >= 1.5x lower than jointly trained and
      >= 4x lower than random;
    - TinyReptile no more than 10% worse than batched Reptile (same device samples);
    - fixed point no more than 15% worse than the float reference, per method.
    Ratios are "how many times lower" (>= goal) or "relative to" (<= goal).
    """
    out: list[dict[str, Any]] = []

    def add(name: str, ratio: float, goal: float, higher: bool) -> None:
        tol = 1e-9 * goal  # 1.2 / 0.8 is 1.4999999999999998 in binary
        ok = ratio >= goal - tol if higher else ratio <= goal + tol
        out.append({"target": name, "ratio": ratio, "goal": goal,
                    "sense": ">=" if higher else "<=", "met": bool(ok)})

    for arith in (a for a in ARITHMETICS if a in mse):
        m = {name: per[at] for name, per in mse[arith].items()}
        for meta in ("tinyreptile", "reptile"):
            if meta in m and "joint" in m:
                add(f"{arith}: joint / {meta}", m["joint"] / m[meta], 1.5, True)
            if meta in m and "random" in m:
                add(f"{arith}: random / {meta}", m["random"] / m[meta], 4.0, True)
        if "tinyreptile" in m and "reptile" in m:
            add(f"{arith}: tinyreptile / reptile", m["tinyreptile"] / m["reptile"], 1.10, False)
    if "fixed" in mse and "float" in mse:
        for name in mse["fixed"]:
            if name in mse["float"]:
                add(f"fixed / float: {name}", mse["fixed"][name][at] / mse["float"][name][at],
                    1.15, False)
    return out


def run_arith(settings: Settings, arith: str, methods: Sequence[str] = METHODS,
              recovery: bool = True,
              progress: Callable[[str], None] | None = None,
              recovery_methods: Sequence[str] = ("tinyreptile", "reptile")) -> dict[str, Any]:
    """Train every method for every seed with one arithmetic and score them.

    Drift recovery runs from the first seed's init of each of `recovery_methods` trained.
    Returns {"per_seed": {method: {steps: [MSE per seed]}}, "recovery": {...},
    "seconds": {method: s}}.
    """
    st = settings
    seeds = st.seed_list
    steps = sorted({0, *st.steps})
    held = HeldOutSet.make(st.tasks, st.shots, st.queries, st.heldout_seed)
    init = np.stack([ref.init_weights(st.sizes, s) for s in seeds])
    streams = [board_streams(st, s) for s in seeds]
    xs, ys = np.stack([p[0] for p in streams]), np.stack([p[1] for p in streams])
    per_seed: dict[str, dict[int, list[float]]] = {}
    seconds: dict[str, float] = {}
    finals: dict[str, npt.NDArray] = {}
    for method in methods:
        t0 = time.perf_counter()
        inits = train_method(method, st, arith, seeds, init, xs, ys)
        finals[method] = inits
        per_seed[method] = {n: [] for n in steps}
        for i in range(len(seeds)):
            res = adapt(task_inits(inits[i], len(held)), held, st.sizes, arith, steps,
                        st.lr_shift)
            for n in steps:
                per_seed[method][n].append(float(res[n].mean()))
        seconds[method] = time.perf_counter() - t0
        if progress:
            progress(f"{arith}: {method} {per_seed[method][max(steps)]} "
                     f"({seconds[method]:.1f} s)")
    rec: dict[str, Any] = {}
    if recovery:
        t0 = time.perf_counter()
        for meta in recovery_methods:
            if meta in finals:
                rec[meta] = drift_recovery(finals[meta][0], st, arith)
        seconds["recovery"] = time.perf_counter() - t0
    return {"per_seed": per_seed, "recovery": rec, "seconds": seconds}


def _run_arith_star(a: tuple[Settings, str, tuple[str, ...], bool]) -> dict[str, Any]:
    return run_arith(*a)


def run(settings: Settings, ariths: Sequence[str] = ARITHMETICS,
        methods: Sequence[str] = METHODS, recovery: bool = True, jobs: int = 1,
        progress: Callable[[str], None] | None = None) -> Report:
    """The whole study: every method, with each arithmetic, scored on the held-out set.

    jobs > 1 runs the arithmetics in separate processes (numpy is single-threaded here).

    Raises:
        ValueError: unknown method or arithmetic.
    """
    for a in ariths:
        _check_arith(np.zeros(1, np.int64 if a == "fixed" else np.float64), a)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} (choose {', '.join(METHODS)})")
    t0 = time.perf_counter()
    if jobs > 1 and len(ariths) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(jobs, len(ariths))) as pool:
            results = list(pool.map(_run_arith_star,
                                    [(settings, a, tuple(methods), recovery) for a in ariths]))
        if progress:
            for a, r in zip(ariths, results, strict=True):
                progress(f"{a}: done in {sum(r['seconds'].values()):.1f} s")
    else:
        results = [run_arith(settings, a, methods, recovery, progress) for a in ariths]
    rep = make_report(settings, ariths, results)
    rep.timing["total"] = time.perf_counter() - t0
    return rep


def make_report(settings: Settings, ariths: Sequence[str],
                results: Sequence[dict[str, Any]]) -> Report:
    """A Report from run_arith's results, one per arithmetic (timing["total"] unset)."""
    sdict = asdict(settings)
    sdict["samples_per_board"] = settings.samples_per_board
    sdict["drift_samples"] = settings.drift
    rep = Report(settings=sdict)
    for a, r in zip(ariths, results, strict=True):
        rep.per_seed[a] = r["per_seed"]
        rep.mse[a] = {m: {n: float(np.mean(v)) for n, v in per.items()}
                      for m, per in r["per_seed"].items()}
        rep.recovery[a] = r["recovery"]
        rep.timing.update({f"{a}:{m}": s for m, s in r["seconds"].items()})
    rep.targets = check_targets(rep.mse, max(settings.steps))
    return rep


# ------------------------------------------------------------------ formatting

def _f(v: float | None, nd: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def table_rows(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (method, MSE per steps and arithmetic)."""
    steps = [int(s) for s in rep.settings["steps"]]
    ariths = list(rep.mse)
    head = ["method"] + [f"{a} {n}" for n in [0, *steps] for a in ariths]
    if "fixed" in rep.mse and "float" in rep.mse:
        head.append(f"fixed/float {max(steps)}")
    rows = []
    for m in METHODS:
        if not all(m in rep.mse[a] for a in ariths):
            continue
        row = [LABELS[m]] + [_f(rep.mse[a][m][n]) for n in [0, *steps] for a in ariths]
        if "fixed" in rep.mse and "float" in rep.mse:
            row.append(_f(rep.mse["fixed"][m][max(steps)] / rep.mse["float"][m][max(steps)], 2))
        rows.append(row)
    return head, rows


def format_text(rep: Report) -> str:
    """The plain-text report `tinyfleet evaluate` prints."""
    s = rep.settings
    head, rows = table_rows(rep)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"held-out MSE on {s['tasks']} sine tasks, {s['shots']} shots, mean of "
             f"{s['seeds']} seeds ({s['boards']} boards, {s['rounds']} rounds x k = {s['k']}, "
             f"lr 2^-{s['lr_shift']}, drift every {s['drift_rounds']} rounds)",
             "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("")
    for t in rep.targets:
        lines.append(f"{t['target']:<34} {t['ratio']:6.2f}  (goal {t['sense']} "
                     f"{t['goal']:.2f})  {'yes' if t['met'] else 'NO'}")
    for a, rec in rep.recovery.items():
        for meta, r in rec.items():
            lines.append(f"drift recovery ({a}, {meta}): samples to MSE <= {r['target']} "
                         f"from the meta init {_samples_text(r['from_init'])}, from the "
                         f"previous weights {_samples_text(r['from_previous'])}")
    lines.append(f"{rep.timing.get('total', 0.0):.0f} s")
    return "\n".join(lines)


def _samples_text(r: dict[str, Any]) -> str:
    med = r["median_samples"]
    return (f"{'>max' if med is None else int(med)} median, {r['mean_samples_capped']:.1f} "
            f"mean ({r['reached'] * 100:.0f}% reach it)")


def format_markdown(rep: Report) -> str:
    """The markdown report written next to the JSON."""
    s = rep.settings
    head, rows = table_rows(rep)
    md = ["# TinyFleet meta-learning evaluation", "",
          f"Sine {'-'.join(map(str, s['sizes']))}, {s['boards']} boards whose tasks drift "
          f"every {s['drift_rounds']} rounds, k = {s['k']} fresh samples per round, inner lr "
          f"2^-{s['lr_shift']}, {s['rounds']} batched rounds ({s['rounds'] * s['boards']} "
          f"TinyReptile rounds), ε {s['schedule']} 1 → 0, wire Q12: {s['wire']}. Held-out: "
          f"{s['tasks']} tasks, {s['shots']} shots, {s['queries']} query points, the same for "
          f"every method; MSE after N adaptation steps, mean of {s['seeds']} seeds.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "| target | ratio | goal | met |", "|---|---|---|---|"]
    md += [f"| {t['target']} | {t['ratio']:.2f} | {t['sense']} {t['goal']:.2f} | "
           f"{'yes' if t['met'] else 'no'} |" for t in rep.targets]
    if rep.recovery:
        md += ["", "Drift recovery: samples a board needs after its task drifts to reach the "
               "target MSE on the new task (median and mean over tasks; a task that never "
               "gets there counts as the maximum).", "",
               "| arithmetic | init | target | from meta init | from previous weights |",
               "|---|---|---|---|---|"]
        for a, rec in rep.recovery.items():
            for meta, r in rec.items():
                md.append(f"| {a} | {meta} | {r['target']} | "
                          f"{_samples_text(r['from_init'])} | "
                          f"{_samples_text(r['from_previous'])} |")
    md += ["", f"{rep.timing.get('total', 0.0):.0f} s."]
    return "\n".join(md) + "\n"
