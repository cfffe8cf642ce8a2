"""ulab kernel: the TinyFleet MLP on ulab float arrays, behind mlp.MLP's interface.

Same network and step as the fixed-point kernels (ReLU clipped at 4.0, deltas clipped at
+-4.0, learning rate 2**-s, MSE or softmax cross-entropy), but float weight matrices (ulab's
float: float32 on single-precision ports), so it learns like the float reference rather than
matching the integers. Weights enter and leave as Q24 ints; inputs/targets/outputs are Q12.
ulab has no int32 dtype and `dot` returns float, hence float throughout.

Only ulab's documented numpy subset is used (docs/manual/source: ulab-ndarray.rst for
array/zeros/reshape/indexing/in-place operators, numpy-functions.rst for dot/clip/where/max/
sum, numpy-universal.rst for exp); tests/test_ulab.py keeps that list. No `dtype=`: float is
ulab's default. Weight clamping happens on export only (floats have the range).
"""

from array import array

from ulab import numpy as np

_A = 4.0  # hidden ReLU clip and input clamp
_D = 4.0  # delta clip
_INV_Q = 1.0 / 4096
_Q24 = 16777216.0
_M_MAX = 134217727
_O_MAX = 536870911  # outputs stay below 2**29 like every fixed-point value
_MAX_FAN = 128


def _to_int(v, lim):
    """Round half away from zero and clamp to +-lim (MicroPython's int() truncates)."""
    v = int(v + 0.5) if v >= 0 else -int(0.5 - v)
    return lim if v > lim else (-lim if v < -lim else v)


class MLP:
    """mlp.MLP's interface on ulab: predict(x), train_step(x, y), weights, set_weights(arr)."""

    kernel = "ulab"

    def __init__(self, sizes, classify=False, lr_shift=6):
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least 2 layer sizes, got %d" % len(sizes))
        for n in sizes:
            if not 1 <= n <= _MAX_FAN:
                raise ValueError("layer sizes must be 1..%d, got %r" % (_MAX_FAN, tuple(sizes)))
        if lr_shift < 1:
            raise ValueError("lr_shift must be >= 1, got %d" % lr_shift)
        self.sizes = tuple(sizes)
        self.classify = classify
        self.lr_shift = lr_shift
        self.n_params = sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(sizes) - 1))
        self._lr = 1.0 / (1 << lr_shift)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        self._w = [np.zeros((n_out, n_in)) for n_in, n_out in pairs]
        self._b = [np.zeros((n_out, 1)) for _, n_out in pairs]
        self._acts = [None] * len(sizes)  # column vectors of the last forward pass
        self._out = array("i", bytes(4 * sizes[-1]))

    # -- weights as Q24 ints, in mlp.MLP's flat layout (row: n_in weights, then the bias)
    @property
    def weights(self):
        out = array("i", bytes(4 * self.n_params))
        k = 0
        for w, b in zip(self._w, self._b):
            j = 0
            for row in w:  # iterating a matrix yields its rows, a row its scalars
                for v in row:
                    out[k] = _to_int(v * _Q24, _M_MAX)
                    k += 1
                out[k] = _to_int(b[j, 0] * _Q24, _M_MAX)
                k += 1
                j += 1
        return out

    def set_weights(self, arr):
        """Load Q24 master weights; ValueError (model unchanged) on a wrong length or range."""
        if len(arr) != self.n_params:
            raise ValueError("MLP expects %d weights, got %d" % (self.n_params, len(arr)))
        for v in arr:
            if not -_M_MAX <= v <= _M_MAX:
                raise ValueError("weight %d out of range +-%d" % (v, _M_MAX))
        k = 0
        for n in range(len(self.sizes) - 1):
            n_in, n_out = self.sizes[n], self.sizes[n + 1]
            rows, bias = [], []
            for _ in range(n_out):
                rows.append([arr[k + i] / _Q24 for i in range(n_in)])
                bias.append([arr[k + n_in] / _Q24])
                k += n_in + 1
            self._w[n] = np.array(rows)
            self._b[n] = np.array(bias)

    # -- learning
    def _forward(self, x):
        n = self.sizes[0]
        if len(x) != n:
            raise ValueError("MLP expects %d inputs, got %d" % (n, len(x)))
        a = np.array(x) * _INV_Q  # Q12 ints -> float
        a = np.clip(a.reshape((n, 1)), -_A, _A)
        acts = self._acts
        acts[0] = a
        last = len(self._w) - 1
        for n in range(last + 1):
            z = np.dot(self._w[n], a)
            z += self._b[n]
            if n < last:
                z = np.clip(z, 0.0, _A)
            acts[n + 1] = z
            a = z
        return a

    def predict(self, x):
        """Forward pass; returns the output buffer (array('i'), Q12; logits if classify)."""
        z = self._forward(x)
        out = self._out
        for j in range(len(out)):
            out[j] = _to_int(z[j, 0] * 4096.0, _O_MAX)
        return out

    def train_step(self, x, y):
        """One SGD step on sample (x, y); y: array('i') Q12 targets, or an int label."""
        sizes = self.sizes
        n = sizes[-1]
        if self.classify:
            if not 0 <= y < n:
                raise ValueError("label must be 0..%d, got %d" % (n - 1, y))
        elif len(y) != n:
            raise ValueError("MLP expects %d targets, got %d" % (n, len(y)))
        z = self._forward(x)
        if self.classify:  # softmax - onehot
            d = np.exp(z - np.max(z))
            d /= np.sum(d)
            d[y] = d[y, 0] - 1.0
        else:
            t = np.array(y) * _INV_Q
            d = np.clip(z - t.reshape((n, 1)), -_D, _D)
        acts = self._acts
        lr = self._lr
        for k in range(len(self._w) - 1, -1, -1):
            w = self._w[k]
            n_in, n_out = sizes[k], sizes[k + 1]
            a_row = acts[k].reshape((1, n_in))
            below = None
            if k > 0:  # from the weights before this update; row d times W is W^T d
                g = np.clip(np.dot(d.reshape((1, n_out)), w), -_D, _D)
                below = np.where(a_row > 0.0, np.where(a_row < _A, g, 0.0), 0.0)
                below = below.reshape((n_in, 1))
            d *= lr  # d is this step's own array: scale it in place
            w -= np.dot(d, a_row)  # outer product: lr * d a^T
            self._b[k] -= d
            d = below
