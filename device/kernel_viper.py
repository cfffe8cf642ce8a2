"""@micropython.viper kernel of the fixed-point MLP: same interface and same integers as
kernel_bytecode (see its docstring for what each function computes).

  load_input(x, a, n)
  forward(w, off, a_in, n_in, a_out, n_out, relu)
  delta_mse(z, y, d, n)
  delta_softmax(z, label, d, n, exp2)
  backprop(w, off, d_out, n_out, a_in, d_in, n_in)
  update(w, off, d_out, n_out, a_in, n_in, shift)

All buffers are array('i') (exp2: array('H')); offsets and sizes count elements.
Viper ints are machine words; every value stays below 2**29 as the fixed-point contract
requires, so 32- and 64-bit ports give identical results. On 64-bit ports ptr32 loads
zero-extend, so signed loads are sign-extended by hand with
((v + 2**29) & (2**30 - 1)) - 2**29, exact for |v| < 2**29 on both word sizes; the
weight's Q12 rounding (m + 2048) >> 12 is folded into the same masking.
Speed: walk int addresses instead of indexes (one add per element, no scaling) and
declare the loop's hot locals first (the emitter keeps the first few in registers).
"""

import micropython
from micropython import const

_A_MAX = const(16383)
_D_MAX = const(16383)
_M_MAX = const(134217727)
_ONE = const(4096)
_BIAS29 = const(0x20000000)   # 2**29: shift into [0, 2**30) before masking
_MASK30 = const(0x3FFFFFFF)
_WQ_BIAS = const(0x20000800)  # 2**29 + 2048: sign-extend and round Q24 -> Q12 at once
_WQ_UNBIAS = const(0x20000)   # 2**29 >> 12


@micropython.viper
def load_input(x, a, n: int):
    px = ptr32(x)
    pa = ptr32(a)
    i = 0
    while i < n:
        v = ((px[i] + _BIAS29) & _MASK30) - _BIAS29
        if v > _A_MAX:
            v = _A_MAX
        elif v < 0 - _A_MAX:
            v = 0 - _A_MAX
        pa[i] = v
        i += 1


@micropython.viper
def forward(w, off: int, a_in, n_in: int, a_out, n_out: int, relu: int):
    pw = int(ptr32(w)) + 4 * off  # address of the current weight
    pa = 0                        # address of the current input
    acc = 0
    a0 = int(ptr32(a_in))
    aend = a0 + 4 * n_in
    po = ptr32(a_out)
    j = 0
    while j < n_out:
        acc = 0
        pa = a0
        while pa < aend:
            acc += (((((ptr32(pw)[0] + _WQ_BIAS) & _MASK30) >> 12) - _WQ_UNBIAS)
                    * (((ptr32(pa)[0] + _BIAS29) & _MASK30) - _BIAS29)) >> 7
            pw += 4
            pa += 4
        z = (acc + (((((ptr32(pw)[0] + _WQ_BIAS) & _MASK30) >> 12) - _WQ_UNBIAS) << 5)) >> 5
        pw += 4
        if relu:
            if z < 0:
                z = 0
            elif z > _A_MAX:
                z = _A_MAX
        po[j] = z
        j += 1


@micropython.viper
def delta_mse(z, y, d, n: int):
    pz = ptr32(z)
    py = ptr32(y)
    pd = ptr32(d)
    j = 0
    while j < n:
        e = (((pz[j] + _BIAS29) & _MASK30) - _BIAS29) - (((py[j] + _BIAS29) & _MASK30) - _BIAS29)
        if e > _D_MAX:
            e = _D_MAX
        elif e < 0 - _D_MAX:
            e = 0 - _D_MAX
        pd[j] = e
        j += 1


@micropython.viper
def delta_softmax(z, label: int, d, n: int, exp2):
    pz = ptr32(z)
    pd = ptr32(d)
    pe = ptr16(exp2)
    zmax = ((pz[0] + _BIAS29) & _MASK30) - _BIAS29
    j = 1
    while j < n:
        v = ((pz[j] + _BIAS29) & _MASK30) - _BIAS29
        if v > zmax:
            zmax = v
        j += 1
    total = 0
    j = 0
    while j < n:
        t = (((pz[j] + _BIAS29) & _MASK30) - _BIAS29) - zmax
        if t < -32768:
            t = -32768
        u = 0 - ((t * 5909) >> 12)  # -(t * log2 e) >= 0, Q12
        shift = u >> 12
        e = 0
        if shift < 15:
            e = int(pe[(u & 4095) >> 4]) >> shift
        pd[j] = e
        total += e
        j += 1
    j = 0
    while j < n:
        pd[j] = (pd[j] << 12) // total  # e <= 2**14: zero-extended loads are exact
        j += 1
    pd[label] = pd[label] - _ONE


@micropython.viper
def backprop(w, off: int, d_out, n_out: int, a_in, d_in, n_in: int):
    pw = int(ptr32(w)) + 4 * off
    ps = 0                       # address of the current accumulator s_i in d_in
    dj = 0
    s0 = int(ptr32(d_in))
    send = s0 + 4 * n_in
    pd = ptr32(d_out)
    pa = ptr32(a_in)
    ps = s0
    while ps < send:
        ptr32(ps)[0] = 0
        ps += 4
    j = 0
    while j < n_out:
        dj = ((pd[j] + _BIAS29) & _MASK30) - _BIAS29
        if dj:
            ps = s0
            while ps < send:
                s = ptr32(ps)
                s[0] = s[0] + (((((ptr32(pw)[0] + _WQ_BIAS) & _MASK30) >> 12) - _WQ_UNBIAS)
                               * dj >> 7)
                pw += 4
                ps += 4
            pw += 4
        else:
            pw += 4 * (n_in + 1)
        j += 1
    sd = ptr32(d_in)
    i = 0
    while i < n_in:
        a = int(pa[i])  # a_in >= 0 where it matters: zero-extension is harmless
        g = 0
        if 0 < a and a < _A_MAX:
            g = (((sd[i] + _BIAS29) & _MASK30) - _BIAS29) >> 5
            if g > _D_MAX:
                g = _D_MAX
            elif g < 0 - _D_MAX:
                g = 0 - _D_MAX
        sd[i] = g
        i += 1


@micropython.viper
def update(w, off: int, d_out, n_out: int, a_in, n_in: int, shift: int):
    pw = int(ptr32(w)) + 4 * off
    pa = 0
    dj = 0
    a0 = int(ptr32(a_in))
    aend = a0 + 4 * n_in
    pd = ptr32(d_out)
    r = 1 << (shift - 1)
    j = 0
    while j < n_out:
        dj = ((pd[j] + _BIAS29) & _MASK30) - _BIAS29
        if dj:
            pa = a0
            while pa < aend + 4:
                # the bias (one past the inputs) sees a constant input of 1.0
                a = _ONE
                if pa < aend:
                    a = ((ptr32(pa)[0] + _BIAS29) & _MASK30) - _BIAS29
                p = ptr32(pw)
                m = (((p[0] + _BIAS29) & _MASK30) - _BIAS29) - ((dj * a + r) >> shift)
                if m > _M_MAX:
                    m = _M_MAX
                elif m < 0 - _M_MAX:
                    m = 0 - _M_MAX
                p[0] = m
                pw += 4
                pa += 4
        else:
            pw += 4 * (n_in + 1)
        j += 1
