"""@micropython.viper kernel of the fixed-point MLP: same interface and same integers as
kernel_bytecode (see its docstring for what each function computes).

  load_input(x, a, n) -> 2 if some x[i] < 0 else 0
  forward(off, n_in, mode, w, a_in, a_out, n_out)
  delta_mse(z, y, d, n)
  delta_softmax(z, label, d, n, exp2)
  backward(off, n_in, shift, w, d_out, n_out, a_in, d_in, mode)

All buffers are array('i') (exp2: array('H')); offsets and sizes count elements.
Viper ints are machine words; every value stays below 2**31 in the loops and below 2**29
where the contract says so, so 32- and 64-bit ports give identical results.

How it is fast, and still exact:
- int addresses are walked instead of indexes (one add per element, no scaling); inner
  loops are unrolled (forward 8x, backward 4x or 2x) with constant offsets, and values go
  straight from load to store (a named temporary costs a stack round trip: the emitter
  keeps only the first few locals in registers, and parameters come first). So the
  interface puts the layer's ints first, and forward/backward reuse them as the loop's
  pointers and sum (~10% faster than the same code with the buffers first).
- backward updates a row in the same pass that accumulates the delta below, reading each
  weight once (the delta still comes from the weight before its update).
- On 64-bit ports ptr32 loads zero-extend. A signed value is recovered with
  ((v + 2**29) & (2**30 - 1)) - 2**29, exact for |v| < 2**29 on both word sizes.
  Activations are >= 0 except inputs (load_input reports them: mode & 2), so only a
  layer with negative inputs pays for it.
- forward turns a master weight m into wq + 2**16 with ((m + 2**28 + 2048) & (2**29 - 1))
  >> 12 (sign and rounding in three operations). The offset adds exactly 2**16 a / 2**7
  = 512 a to every term (wq+2**16) a >> 7, so each row subtracts 512 * sum(a) once.
  |(wq + 2**16) a| < 98304 * 16383 < 2**31.
- A clamp to +-M is one unsigned compare: uint(m + M) > uint(2 M).
"""

import micropython
from micropython import const

_A_MAX = const(16383)
_D_MAX = const(16383)
_M_MAX = const(134217727)
_M_SPAN = const(268435454)    # 2 * M_MAX
_ONE = const(4096)
_BIAS29 = const(0x20000000)   # 2**29: shift into [0, 2**30) before masking
_MASK30 = const(0x3FFFFFFF)
_WQ_BIAS = const(0x10000800)  # 2**28 + 2048: m -> (wq + 2**16) << 12, non-negative
_MASK29 = const(0x1FFFFFFF)
_WQ_OFF = const(0x10000)      # the 2**16 that forward's weights carry


@micropython.viper
def load_input(x, a, n: int) -> int:
    px = ptr32(x)
    pa = ptr32(a)
    sign = 0
    i = 0
    while i < n:
        v = ((px[i] + _BIAS29) & _MASK30) - _BIAS29
        if v > _A_MAX:
            v = _A_MAX
        elif v < 0:
            sign = 2
            if v < 0 - _A_MAX:
                v = 0 - _A_MAX
        pa[i] = v
        i += 1
    return sign


@micropython.viper
def forward(pw: int, pa: int, acc: int, w, a_in, a_out, n_out: int):
    # pw, pa, acc arrive as off, n_in, mode and become the loop's pointers and sum:
    # the first parameters are the locals the emitter keeps in registers.
    a0 = int(ptr32(a_in))
    aend = a0 + 4 * pa
    aend4 = a0 + 32 * (pa >> 3)
    relu = acc & 1
    signed = acc & 2
    pw = int(ptr32(w)) + 4 * pw
    po = ptr32(a_out)
    total = 0  # sum of the inputs, for the weights' 2**16 offset
    pa = a0
    while pa < aend:
        if signed:
            total += ((ptr32(pa)[0] + _BIAS29) & _MASK30) - _BIAS29
        else:
            total += ptr32(pa)[0]
        pa += 4
    total = total << 9
    j = 0
    while j < n_out:
        acc = 0 - total
        pa = a0
        if signed:
            while pa < aend:
                acc += (((ptr32(pw)[0] + _WQ_BIAS) & _MASK29) >> 12) * (
                    ((ptr32(pa)[0] + _BIAS29) & _MASK30) - _BIAS29) >> 7
                pw += 4
                pa += 4
        else:
            while pa < aend4:
                acc += ((((ptr32(pw)[0] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[0] >> 7) + (
                    (((ptr32(pw)[1] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[1] >> 7) + (
                    (((ptr32(pw)[2] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[2] >> 7) + (
                    (((ptr32(pw)[3] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[3] >> 7) + (
                    (((ptr32(pw)[4] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[4] >> 7) + (
                    (((ptr32(pw)[5] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[5] >> 7) + (
                    (((ptr32(pw)[6] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[6] >> 7) + (
                    (((ptr32(pw)[7] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[7] >> 7)
                pw += 32
                pa += 32
            while pa < aend:
                acc += (((ptr32(pw)[0] + _WQ_BIAS) & _MASK29) >> 12) * ptr32(pa)[0] >> 7
                pw += 4
                pa += 4
        bq = (((ptr32(pw)[0] + _WQ_BIAS) & _MASK29) >> 12) - _WQ_OFF
        z = (acc + (bq << 5)) >> 5
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
def backward(pw: int, pa: int, shift: int, w, d_out, n_out: int, a_in, d_in, mode: int):
    # pw, pa arrive as off, n_in and become the loop's pointers (registers, see forward)
    n_in = pa
    ps = 0                        # address of the current delta-below accumulator
    pw = int(ptr32(w)) + 4 * pw
    a0 = int(ptr32(a_in))
    aend = a0 + 4 * n_in
    aend2 = a0 + 8 * (n_in >> 1)
    aend4 = a0 + 16 * (n_in >> 2)
    s0 = int(ptr32(d_in))
    pd = ptr32(d_out)
    r = 1 << (shift - 1)
    below = mode & 1  # a_in >= 0 here (hidden layer), so its loads need no sign
    signed = mode & 2
    if below:
        ps = s0
        while ps < s0 + 4 * n_in:
            ptr32(ps)[0] = 0
            ps += 4
    j = 0
    while j < n_out:
        dj = ((pd[j] + _BIAS29) & _MASK30) - _BIAS29
        if dj == 0:  # nothing to add below, and the update (0 + r) >> shift is 0
            pw += 4 * (n_in + 1)
            j += 1
            continue
        pa = a0
        if below:
            ps = s0
            while pa < aend4:  # four weights per turn
                m = ((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29
                ptr32(ps)[0] = ptr32(ps)[0] + (((m + 2048) >> 12) * dj >> 7)
                m -= (dj * ptr32(pa)[0] + r) >> shift
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[0] = m
                m = ((ptr32(pw)[1] + _BIAS29) & _MASK30) - _BIAS29
                ptr32(ps)[1] = ptr32(ps)[1] + (((m + 2048) >> 12) * dj >> 7)
                m -= (dj * ptr32(pa)[1] + r) >> shift
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[1] = m
                m = ((ptr32(pw)[2] + _BIAS29) & _MASK30) - _BIAS29
                ptr32(ps)[2] = ptr32(ps)[2] + (((m + 2048) >> 12) * dj >> 7)
                m -= (dj * ptr32(pa)[2] + r) >> shift
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[2] = m
                m = ((ptr32(pw)[3] + _BIAS29) & _MASK30) - _BIAS29
                ptr32(ps)[3] = ptr32(ps)[3] + (((m + 2048) >> 12) * dj >> 7)
                m -= (dj * ptr32(pa)[3] + r) >> shift
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[3] = m
                pw += 16
                pa += 16
                ps += 16
            while pa < aend:
                m = ((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29
                ptr32(ps)[0] = ptr32(ps)[0] + (((m + 2048) >> 12) * dj >> 7)
                m -= (dj * ptr32(pa)[0] + r) >> shift
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[0] = m
                pw += 4
                pa += 4
                ps += 4
        elif signed:  # the input layer (no delta below), some inputs negative
            while pa < aend:
                m = (((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29) - (
                    (dj * (((ptr32(pa)[0] + _BIAS29) & _MASK30) - _BIAS29) + r) >> shift)
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[0] = m
                pw += 4
                pa += 4
        else:  # the input layer (no delta below), inputs >= 0
            while pa < aend2:
                m = (((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29) - (
                    (dj * ptr32(pa)[0] + r) >> shift)
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[0] = m
                m = (((ptr32(pw)[1] + _BIAS29) & _MASK30) - _BIAS29) - (
                    (dj * ptr32(pa)[1] + r) >> shift)
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[1] = m
                pw += 8
                pa += 8
            while pa < aend:
                m = (((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29) - (
                    (dj * ptr32(pa)[0] + r) >> shift)
                if uint(m + _M_MAX) > uint(_M_SPAN):
                    m = _M_MAX if m > 0 else 0 - _M_MAX
                ptr32(pw)[0] = m
                pw += 4
                pa += 4
        # the bias: a constant input of 1.0
        m = (((ptr32(pw)[0] + _BIAS29) & _MASK30) - _BIAS29) - ((dj * _ONE + r) >> shift)
        if uint(m + _M_MAX) > uint(_M_SPAN):
            m = _M_MAX if m > 0 else 0 - _M_MAX
        ptr32(pw)[0] = m
        pw += 4
        j += 1
    if below:  # finish the delta below: g = s >> 5, clamped, where 0 < a < A_MAX
        pa = a0
        ps = s0
        while pa < aend:
            a = ptr32(pa)[0]
            s = ptr32(ps)
            g = 0
            if 0 < a and a < _A_MAX:
                g = (((s[0] + _BIAS29) & _MASK30) - _BIAS29) >> 5
                if g > _D_MAX:
                    g = _D_MAX
                elif g < 0 - _D_MAX:
                    g = 0 - _D_MAX
            s[0] = g
            pa += 4
            ps += 4
