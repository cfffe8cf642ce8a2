"""The benchmark baseline: the float MLP a typical MicroPython user writes.

Lists of float lists, nested loops, float math; the same network and SGD step as TinyFleet's
fixed-point MLP (ReLU clipped at 4.0, output delta clipped at +-4.0, learning rate 2**-s,
MSE or softmax cross-entropy), but no weight clamping: the plain loop a user would write.
Runs unchanged on MicroPython and CPython. Every float is boxed on MicroPython, so each step
allocates (that is the point of the baseline).
"""

import math

A_MAX = 4.0  # clipped ReLU ceiling, as the fixed-point A_MAX (2**14 - 1)/4096
D_MAX = 4.0  # delta clip


class NaiveMLP:
    """sizes = [n_in, hidden..., n_out]; weights: optional flat Q24 ints in TinyFleet's layout
    (row j of a layer: n_in weights then the bias) so it starts where a fixed-point MLP does."""

    def __init__(self, sizes, classify=False, lr_shift=6, weights=None):
        self.sizes = list(sizes)
        self.classify = classify
        self.lr = 1.0 / (1 << lr_shift)
        self.layers = []  # per layer: list of rows [w_0 .. w_{n_in-1}, bias]
        k = 0
        seed = 12345
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):  # noqa: B905 (MicroPython)
            layer = []
            for _ in range(n_out):
                row = []
                for _ in range(n_in + 1):
                    if weights is not None:
                        row.append(weights[k] / 16777216.0)
                        k += 1
                    else:  # a small LCG so the module needs no `random`
                        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
                        row.append((seed / 2147483648.0 - 0.5) * 2.0 / math.sqrt(n_in))
                layer.append(row)
            self.layers.append(layer)

    def forward(self, x):
        """All activations, input first; the last list is the linear output."""
        acts = [list(x)]
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            a = acts[-1]
            out = []
            for row in layer:
                s = row[-1]
                for i in range(len(a)):
                    s += row[i] * a[i]
                if n < last:
                    s = min(max(s, 0.0), A_MAX)
                out.append(s)
            acts.append(out)
        return acts

    def predict(self, x):
        return self.forward(x)[-1]

    def train_step(self, x, y):
        """One SGD step; y: list of float targets (regression) or int label. Returns the loss."""
        acts = self.forward(x)
        z = acts[-1]
        if self.classify:
            zmax = max(z)
            e = [math.exp(v - zmax) for v in z]
            total = sum(e)
            delta = [v / total for v in e]
            loss = -math.log(delta[y] + 1e-12)
            delta[y] -= 1.0
        else:
            delta = [min(max(z[j] - y[j], -D_MAX), D_MAX) for j in range(len(z))]
            loss = 0.0
            for j in range(len(z)):
                loss += 0.5 * (z[j] - y[j]) ** 2
        lr = self.lr
        for n in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[n]
            a = acts[n]
            if n > 0:  # delta of the layer below, from the weights before this update
                below = []
                for i in range(len(a)):
                    g = 0.0
                    for j in range(len(layer)):
                        g += layer[j][i] * delta[j]
                    if 0.0 < a[i] < A_MAX:
                        below.append(min(max(g, -D_MAX), D_MAX))
                    else:
                        below.append(0.0)
            for j in range(len(layer)):
                row = layer[j]
                d = lr * delta[j]
                for i in range(len(a)):
                    row[i] -= d * a[i]
                row[-1] -= d
            if n > 0:
                delta = below
        return loss
