"""Host references of the device MLP: an exact integer model and a float64 model.

The integer reference follows the fixed-point contract of the device kernels bit for bit
(int64 numpy; every product is shifted per term, so sums do not depend on their order).
The float64 reference is the same network (ReLU clipped at 4.0, deltas clipped at +-4.0,
learning rate 2**-s, softmax cross-entropy) in ordinary arithmetic, started from the same
weights, to show what the fixed point costs. Both use the device's seeded He-uniform init.

Weights are a flat vector laid out as on the device: layer after layer, row j of a layer
holds its n_in weights then the bias.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IntVec = npt.NDArray[np.int64]
FloatVec = npt.NDArray[np.float64]

Q = 12                  # inputs, activations, deltas, targets: real = int / 2**12
ONE = 1 << Q
A_MAX = (1 << 14) - 1   # clipped ReLU / input clamp (~4.0)
D_MAX = (1 << 14) - 1   # delta clamp (~4.0)
M_MAX = (1 << 27) - 1   # master weight clamp, Q24 (~8.0)
MAX_FAN = 128           # fan-in / fan-out limit that keeps sums below 2**29
LOG2E_Q12 = 5909        # log2(e) in Q12
T_MIN = -32768          # softmax logit difference floor (Q12, -8.0)

# LCG modulo 2**30 (multiplier 1103515245 mod 2**30, increment 12345); the device
# computes the product in 15-bit halves so no intermediate reaches 2**30.
LCG_A = 1103515245 % (1 << 30)
LCG_C = 12345
LCG_MASK = (1 << 30) - 1
SEED_MIX = 0x2545F491

EXP2: tuple[int, ...] = tuple(round(16384 * 2.0 ** (-k / 256)) for k in range(256))
"""EXP2[k] = 2**(-k/256) in Q14: the table behind the device's integer softmax."""


def n_params(sizes: Sequence[int]) -> int:
    """Number of master weights (weights and biases) of an MLP with layer `sizes`."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False))


def layers(sizes: Sequence[int]) -> tuple[tuple[int, int, int], ...]:
    """(offset, n_in, n_out) of each layer in the flat weight vector.

    Raises:
        ValueError: fewer than two sizes, or a size outside 1..128.
    """
    return _layers(tuple(int(n) for n in sizes))


@functools.lru_cache(maxsize=64)
def _layers(sizes: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least 2 layer sizes, got {list(sizes)}")
    if any(not 1 <= n <= MAX_FAN for n in sizes):
        raise ValueError(f"layer sizes must be 1..{MAX_FAN}, got {list(sizes)}")
    out, off = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False):
        out.append((off, n_in, n_out))
        off += (n_in + 1) * n_out
    return tuple(out)


def init_weights(sizes: Sequence[int], seed: int = 0) -> IntVec:
    """The device's deterministic He-uniform init (Q24 master weights, biases 0).

    Each weight is drawn on the Q12 grid from U[-lim, lim], lim = sqrt(6 / n_in), with
    the 30-bit LCG: r = state >> 15 (15 bits); w = ((r * (2 lim + 1)) >> 15) - lim.
    """
    w = np.zeros(n_params(sizes), dtype=np.int64)
    state = (seed ^ SEED_MIX) & LCG_MASK
    for off, n_in, n_out in layers(sizes):
        lim = math.isqrt((6 << 24) // n_in)  # sqrt(6 / n_in) in Q12
        for j in range(n_out):
            row = off + j * (n_in + 1)
            for i in range(n_in):
                state = (LCG_A * state + LCG_C) & LCG_MASK
                w[row + i] = ((((state >> 15) * (2 * lim + 1)) >> 15) - lim) << 12
    return w


def _clamp(v: npt.NDArray, lo: float, hi: float) -> npt.NDArray:
    """np.clip without its overhead (several times slower on these small vectors)."""
    return np.minimum(np.maximum(v, lo), hi)


def _matrix(w: npt.NDArray, off: int, n_in: int, n_out: int) -> npt.NDArray:
    """View of one layer as an (n_out, n_in + 1) matrix; the last column is the bias."""
    return w[off:off + n_out * (n_in + 1)].reshape(n_out, n_in + 1)


# ---------------------------------------------------------------- integer reference

def int_forward(w: IntVec, sizes: Sequence[int], x: npt.ArrayLike) -> list[IntVec]:
    """Activations of every layer (Q12), input first; the last entry is the linear output.

    `x` is one input vector or a batch of them (one per row)."""
    a = _clamp(np.asarray(x, dtype=np.int64), -A_MAX, A_MAX)
    acts = [a]
    specs = layers(sizes)
    for n, (off, n_in, n_out) in enumerate(specs):
        wq = (_matrix(w, off, n_in, n_out) + 2048) >> 12
        acc = ((wq[:, :n_in] * a[..., None, :]) >> 7).sum(axis=-1) + (wq[:, n_in] << 5)
        a = acc >> 5
        if n < len(specs) - 1:
            a = _clamp(a, 0, A_MAX)
        acts.append(a)
    return acts


def int_predict(w: IntVec, sizes: Sequence[int], x: npt.ArrayLike) -> IntVec:
    """Output of the integer network (Q12) for one input or a batch (rows)."""
    return int_forward(w, sizes, x)[-1]


def int_softmax_delta(z: IntVec, label: int) -> IntVec:
    """Output delta of softmax cross-entropy, computed with the device's integer softmax."""
    t = np.maximum(z - z.max(), T_MIN)
    u = (t * LOG2E_Q12) >> 12
    n, f = (-u) >> 12, (-u) & 4095
    table = np.asarray(EXP2, dtype=np.int64)
    e = np.where(n < 15, table[f >> 4] >> np.minimum(n, 14), 0)
    p = (e << 12) // e.sum()
    p[label] -= ONE
    return p


def int_output_delta(z: IntVec, y: Sequence[int] | int, classify: bool) -> IntVec:
    """Output delta: clamped error (MSE) or integer softmax cross-entropy."""
    if classify:
        return int_softmax_delta(z, int(y))  # type: ignore[arg-type]
    return _clamp(z - np.asarray(y, dtype=np.int64), -D_MAX, D_MAX)


def int_train_step(w: IntVec, sizes: Sequence[int], x: Sequence[int],
                   y: Sequence[int] | int, classify: bool = False,
                   lr_shift: int = 6) -> IntVec:
    """One online SGD step of the integer network; returns the new weights (`w` is kept).

    Raises:
        ValueError: lr_shift < 1.
    """
    if lr_shift < 1:
        raise ValueError(f"lr_shift must be >= 1, got {lr_shift}")
    acts = int_forward(w, sizes, x)
    delta = int_output_delta(acts[-1], y, classify)
    w = w.copy()
    r = 1 << (lr_shift - 1)
    for n in range(len(sizes) - 2, -1, -1):
        off, n_in, n_out = layers(sizes)[n]
        m = _matrix(w, off, n_in, n_out)
        a = acts[n]
        below = None
        if n > 0:  # delta of the layer below, from the weights before this update
            wq = (m[:, :n_in] + 2048) >> 12
            g = ((wq * delta[:, None]) >> 7).sum(axis=0) >> 5
            below = np.where((a > 0) & (a < A_MAX), _clamp(g, -D_MAX, D_MAX), 0)
        m[:, :n_in] -= (delta[:, None] * a[None, :] + r) >> lr_shift
        m[:, n_in] -= (delta * ONE + r) >> lr_shift
        np.maximum(m, -M_MAX, out=m)
        np.minimum(m, M_MAX, out=m)
        if below is not None:
            delta = below
    return w


def int_train(w: IntVec, sizes: Sequence[int], xs: npt.ArrayLike, ys: npt.ArrayLike,
              classify: bool = False, lr_shift: int = 6) -> IntVec:
    """Online SGD over the samples in order (one step per row of `xs`); returns new weights."""
    for x, y in zip(np.asarray(xs, dtype=np.int64), np.asarray(ys), strict=True):
        w = int_train_step(w, sizes, x, y, classify, lr_shift)
    return w


# ------------------------------------------------------------------ float reference

F_A_MAX = 4.0   # hidden ReLU clip and input clamp
F_D_MAX = 4.0   # delta clip
F_M_MAX = 8.0   # weight clamp


def float_weights(w_q24: Sequence[int] | IntVec) -> FloatVec:
    """Q24 master weights as float64 (the float reference's starting point)."""
    return np.asarray(w_q24, dtype=np.float64) / (1 << 24)


def float_forward(w: FloatVec, sizes: Sequence[int], x: npt.ArrayLike) -> list[FloatVec]:
    """Activations of every layer of the float network, input first (one input or rows)."""
    a = _clamp(np.asarray(x, dtype=np.float64), -F_A_MAX, F_A_MAX)
    acts = [a]
    specs = layers(sizes)
    for n, (off, n_in, n_out) in enumerate(specs):
        m = _matrix(w, off, n_in, n_out)
        a = a @ m[:, :n_in].T + m[:, n_in]
        if n < len(specs) - 1:
            a = _clamp(a, 0.0, F_A_MAX)
        acts.append(a)
    return acts


def float_predict(w: FloatVec, sizes: Sequence[int], x: npt.ArrayLike) -> FloatVec:
    """Output of the float network for one input or a batch (rows)."""
    return float_forward(w, sizes, x)[-1]


def float_train_step(w: FloatVec, sizes: Sequence[int], x: Sequence[float],
                     y: Sequence[float] | int, classify: bool = False,
                     lr_shift: int = 6) -> FloatVec:
    """One online SGD step of the float network; returns the new weights."""
    acts = float_forward(w, sizes, x)
    z = acts[-1]
    if classify:
        p = np.exp(z - z.max())
        delta = p / p.sum()
        delta[int(y)] -= 1.0  # type: ignore[arg-type]
    else:
        delta = _clamp(z - np.asarray(y, dtype=np.float64), -F_D_MAX, F_D_MAX)
    w = w.copy()
    lr = 2.0 ** -lr_shift
    for n in range(len(sizes) - 2, -1, -1):
        off, n_in, n_out = layers(sizes)[n]
        m = _matrix(w, off, n_in, n_out)
        a = acts[n]
        below = None
        if n > 0:
            g = m[:, :n_in].T @ delta
            below = np.where((a > 0) & (a < F_A_MAX), _clamp(g, -F_D_MAX, F_D_MAX), 0.0)
        m[:, :n_in] -= lr * np.outer(delta, a)
        m[:, n_in] -= lr * delta
        np.maximum(m, -F_M_MAX, out=m)
        np.minimum(m, F_M_MAX, out=m)
        if below is not None:
            delta = below
    return w


def float_train(w: FloatVec, sizes: Sequence[int], xs: npt.ArrayLike, ys: npt.ArrayLike,
                classify: bool = False, lr_shift: int = 6) -> FloatVec:
    """Online SGD over the samples in order (one step per row of `xs`); returns new weights."""
    for x, y in zip(np.asarray(xs, dtype=np.float64), np.asarray(ys), strict=True):
        w = float_train_step(w, sizes, x, y, classify, lr_shift)
    return w


# ------------------------------------------------------------------------- tasks
# The tasks the references are measured on; the tests feed the same samples to the
# device and to both references.

def sine_task(rng: np.random.Generator, n: int, amplitude: float | None = None,
              phase: float | None = None) -> tuple[FloatVec, FloatVec, float, float]:
    """`n` samples of one sine task (Reptile/MAML benchmark): y = A sin(x + phase),
    A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]. Returns (x, y, A, phase); the
    network's input is x / 5."""
    amp = rng.uniform(0.1, 5.0) if amplitude is None else amplitude
    ph = rng.uniform(0.0, np.pi) if phase is None else phase
    x = rng.uniform(-5.0, 5.0, n)
    return x, amp * np.sin(x + ph), amp, ph


def to_q12(v: npt.ArrayLike) -> IntVec:
    """Real values to Q12 integers (round to nearest)."""
    return np.round(np.asarray(v, dtype=np.float64) * ONE).astype(np.int64)


_GLYPHS = (  # 8x8 digits 0..9, '#' = ink
    "..###...|.#...#..|.#...#..|.#...#..|.#...#..|.#...#..|..###...|........",
    "...#....|..##....|...#....|...#....|...#....|...#....|..###...|........",
    "..###...|.#...#..|.....#..|....#...|...#....|..#.....|.#####..|........",
    "..###...|.#...#..|.....#..|...##...|.....#..|.#...#..|..###...|........",
    "....#...|...##...|..#.#...|.#..#...|.#####..|....#...|....#...|........",
    ".#####..|.#......|.####...|.....#..|.....#..|.#...#..|..###...|........",
    "..###...|.#......|.#......|.####...|.#...#..|.#...#..|..###...|........",
    ".#####..|.....#..|....#...|...#....|..#.....|..#.....|..#.....|........",
    "..###...|.#...#..|.#...#..|..###...|.#...#..|.#...#..|..###...|........",
    "..###...|.#...#..|.#...#..|..####..|.....#..|.....#..|..###...|........",
)


def digits_task(rng: np.random.Generator, n: int,
                noise: float = 0.1) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`n` synthetic 8x8 digit images (pixels 0..16, like scikit-learn's load_digits) and
    their labels: a glyph shifted by up to one pixel each way, uneven ink, a fraction
    `noise` of the ink dropped and of the background speckled."""
    glyphs = np.array([[[c == "#" for c in row] for row in g.split("|")] for g in _GLYPHS],
                      dtype=np.float64)
    labels = rng.integers(0, 10, n)
    images = np.empty((n, 64), dtype=np.int64)
    for k in range(n):
        img = np.roll(glyphs[labels[k]], (rng.integers(-1, 2), rng.integers(-1, 2)), (0, 1))
        img = img * rng.uniform(0.4, 1.0, img.shape) * (rng.random(img.shape) >= noise)
        speckle = (rng.random(img.shape) < noise) * rng.uniform(0.3, 1.0, img.shape)
        images[k] = np.round(np.minimum(img + speckle, 1.0) * 16).ravel()
    return images, labels.astype(np.int64)
