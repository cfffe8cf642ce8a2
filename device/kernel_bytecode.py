"""Plain-bytecode reference kernel of the fixed-point MLP (runs on any MicroPython).

Kernel interface (kernel_viper has the same functions; mlp.MLP calls them per layer):
  w: array('i') flat Q24 master weights; a layer at offset `off` with n_in inputs keeps
     row j at w[off + j*(n_in+1) ...], its bias last.
  a_in/a_out/d_in/d_out/z/y: array('i') Q12 buffers of the layer's units.
  load_input(x, a, n)            a[i] = clamp(x[i], +-A_MAX); returns 2 if some x[i] < 0
                                 else 0 (the mode bit below for the input layer)
  forward(off, n_in, mode, w, a_in, a_out, n_out)
                                 a_out = W a_in + b; clipped ReLU [0, A_MAX] if mode & 1
                                 (mode & 2: some a_in < 0; only the inputs can be)
  delta_mse(z, y, d, n)          d = clamp(z - y, +-D_MAX)
  delta_softmax(z, label, d, n, exp2)
                                 d = softmax(z) - onehot(label), integer softmax with
                                 exp2 = array('H') of 2**(-k/256) in Q14
  backward(off, n_in, shift, w, d_out, n_out, a_in, d_in, mode)
                                 if mode & 1: first d_in = clamp(W^T d_out, +-D_MAX) where
                                 0 < a_in < A_MAX, else 0 (from the weights before the
                                 update; d_in is also the accumulator); then the update
                                 m -= (d_out a_in + R) >> shift, clamped to +-M_MAX
                                 (mode & 2: a_in may be negative)
Rows whose delta is 0 are skipped: their update (0 + R) >> shift is exactly 0.
Mode bit 2 only matters to kernels whose loads zero-extend (viper on 64-bit ports); this
one ignores it. kernel_viper does a row's delta and update in one pass over its weights.
"""

from micropython import const

_A_MAX = const(16383)
_D_MAX = const(16383)
_M_MAX = const(134217727)
_ONE = const(4096)
_HALF = const(2048)


def load_input(x, a, n):
    sign = 0
    for i in range(n):
        v = x[i]
        if v > _A_MAX:
            v = _A_MAX
        elif v < 0:
            sign = 2
            if v < -_A_MAX:
                v = -_A_MAX
        a[i] = v
    return sign


def forward(off, n_in, mode, w, a_in, a_out, n_out):
    k = off
    for j in range(n_out):
        acc = 0
        for i in range(n_in):
            acc += (((w[k] + _HALF) >> 12) * a_in[i]) >> 7
            k += 1
        z = (acc + (((w[k] + _HALF) >> 12) << 5)) >> 5
        k += 1
        if mode & 1:
            if z < 0:
                z = 0
            elif z > _A_MAX:
                z = _A_MAX
        a_out[j] = z


def delta_mse(z, y, d, n):
    for j in range(n):
        e = z[j] - y[j]
        if e > _D_MAX:
            e = _D_MAX
        elif e < -_D_MAX:
            e = -_D_MAX
        d[j] = e


def delta_softmax(z, label, d, n, exp2):
    zmax = z[0]
    for j in range(1, n):
        if z[j] > zmax:
            zmax = z[j]
    total = 0
    for j in range(n):
        t = z[j] - zmax
        if t < -32768:
            t = -32768
        u = -((t * 5909) >> 12)  # -(t * log2 e) >= 0, Q12
        shift = u >> 12
        e = (exp2[(u & 4095) >> 4] >> shift) if shift < 15 else 0
        d[j] = e
        total += e
    for j in range(n):
        d[j] = (d[j] << 12) // total
    d[label] -= _ONE


def backward(off, n_in, shift, w, d_out, n_out, a_in, d_in, mode):
    if mode & 1:
        _backprop(w, off, d_out, n_out, a_in, d_in, n_in)
    _update(w, off, d_out, n_out, a_in, n_in, shift)


def _backprop(w, off, d_out, n_out, a_in, d_in, n_in):
    for i in range(n_in):
        d_in[i] = 0
    row = off
    for j in range(n_out):
        dj = d_out[j]
        if dj:
            k = row
            for i in range(n_in):
                d_in[i] += (((w[k] + _HALF) >> 12) * dj) >> 7
                k += 1
        row += n_in + 1
    for i in range(n_in):
        a = a_in[i]
        if 0 < a < _A_MAX:
            g = d_in[i] >> 5
            if g > _D_MAX:
                g = _D_MAX
            elif g < -_D_MAX:
                g = -_D_MAX
            d_in[i] = g
        else:
            d_in[i] = 0


def _update(w, off, d_out, n_out, a_in, n_in, shift):
    r = 1 << (shift - 1)
    row = off
    for j in range(n_out):
        dj = d_out[j]
        if dj:
            k = row
            for i in range(n_in):
                m = w[k] - ((dj * a_in[i] + r) >> shift)
                if m > _M_MAX:
                    m = _M_MAX
                elif m < -_M_MAX:
                    m = -_M_MAX
                w[k] = m
                k += 1
            m = w[k] - ((dj * _ONE + r) >> shift)  # bias: constant input 1.0
            if m > _M_MAX:
                m = _M_MAX
            elif m < -_M_MAX:
                m = -_M_MAX
            w[k] = m
        row += n_in + 1
