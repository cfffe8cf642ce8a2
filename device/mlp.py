"""Fixed-point MLP with online SGD (batch size 1) for MicroPython boards.

Q12 activations and deltas, Q24 int32 master weights in one array('i'), clipped-ReLU
hidden layers, a linear output trained with MSE or an integer softmax with cross-entropy.
Every intermediate stays below 2**29, so one step allocates nothing, even on ports with
31-bit small ints. The arithmetic lives in a kernel module chosen at construction
(kernel_viper, kernel_ulab or kernel_bytecode); all kernels give the same integers.

    net = MLP((1, 40, 40, 1), lr_shift=6)
    net.train_step(x, y)     # x, y: array('i') in Q12
    out = net.predict(x)     # internal array('i'), Q12
"""

from array import array

from micropython import const

_M_MAX = const(134217727)
_MAX_FAN = const(128)
# 30-bit LCG: state = (1103515245 * state + 12345) mod 2**30, multiplied in 15-bit
# halves (1103515245 mod 2**30 = 908 * 2**15 + 20077) so nothing reaches 2**30.
_LCG_A_HI = const(908)
_LCG_A_LO = const(20077)
_LCG_C = const(12345)
_MASK15 = const(32767)
_MASK30 = const(1073741823)
_SEED_MIX = const(0x2545F491)

KERNELS = ("viper", "ulab", "bytecode")

# 2**(-k/256) in Q14, k = 0..255, little-endian uint16 (the integer softmax's table).
_EXP2 = (
    b"\x00\x40\xd4\x3f\xa8\x3f\x7b\x3f\x50\x3f\x24\x3f\xf8\x3e\xcc\x3e\xa1\x3e\x76\x3e\x4a\x3e"
    b"\x1f\x3e\xf4\x3d\xc9\x3d\x9f\x3d\x74\x3d\x49\x3d\x1f\x3d\xf5\x3c\xca\x3c\xa0\x3c\x76\x3c"
    b"\x4d\x3c\x23\x3c\xf9\x3b\xd0\x3b\xa6\x3b\x7d\x3b\x54\x3b\x2b\x3b\x02\x3b\xd9\x3a\xb0\x3a"
    b"\x88\x3a\x5f\x3a\x37\x3a\x0e\x3a\xe6\x39\xbe\x39\x96\x39\x6e\x39\x47\x39\x1f\x39\xf7\x38"
    b"\xd0\x38\xa9\x38\x81\x38\x5a\x38\x33\x38\x0c\x38\xe6\x37\xbf\x37\x98\x37\x72\x37\x4b\x37"
    b"\x25\x37\xff\x36\xd9\x36\xb3\x36\x8d\x36\x67\x36\x42\x36\x1c\x36\xf7\x35\xd1\x35\xac\x35"
    b"\x87\x35\x62\x35\x3d\x35\x18\x35\xf3\x34\xcf\x34\xaa\x34\x86\x34\x61\x34\x3d\x34\x19\x34"
    b"\xf5\x33\xd1\x33\xad\x33\x89\x33\x65\x33\x42\x33\x1e\x33\xfb\x32\xd8\x32\xb5\x32\x91\x32"
    b"\x6e\x32\x4c\x32\x29\x32\x06\x32\xe3\x31\xc1\x31\x9e\x31\x7c\x31\x5a\x31\x38\x31\x16\x31"
    b"\xf4\x30\xd2\x30\xb0\x30\x8e\x30\x6d\x30\x4b\x30\x2a\x30\x08\x30\xe7\x2f\xc6\x2f\xa5\x2f"
    b"\x84\x2f\x63\x2f\x42\x2f\x21\x2f\x01\x2f\xe0\x2e\xc0\x2e\x9f\x2e\x7f\x2e\x5f\x2e\x3f\x2e"
    b"\x1f\x2e\xff\x2d\xdf\x2d\xbf\x2d\xa0\x2d\x80\x2d\x61\x2d\x41\x2d\x22\x2d\x03\x2d\xe4\x2c"
    b"\xc4\x2c\xa5\x2c\x87\x2c\x68\x2c\x49\x2c\x2a\x2c\x0c\x2c\xed\x2b\xcf\x2b\xb1\x2b\x92\x2b"
    b"\x74\x2b\x56\x2b\x38\x2b\x1a\x2b\xfc\x2a\xdf\x2a\xc1\x2a\xa3\x2a\x86\x2a\x68\x2a\x4b\x2a"
    b"\x2e\x2a\x11\x2a\xf3\x29\xd6\x29\xb9\x29\x9d\x29\x80\x29\x63\x29\x46\x29\x2a\x29\x0d\x29"
    b"\xf1\x28\xd5\x28\xb8\x28\x9c\x28\x80\x28\x64\x28\x48\x28\x2c\x28\x10\x28\xf5\x27\xd9\x27"
    b"\xbd\x27\xa2\x27\x86\x27\x6b\x27\x50\x27\x35\x27\x19\x27\xfe\x26\xe3\x26\xc8\x26\xae\x26"
    b"\x93\x26\x78\x26\x5d\x26\x43\x26\x28\x26\x0e\x26\xf4\x25\xd9\x25\xbf\x25\xa5\x25\x8b\x25"
    b"\x71\x25\x57\x25\x3d\x25\x23\x25\x0a\x25\xf0\x24\xd7\x24\xbd\x24\xa4\x24\x8a\x24\x71\x24"
    b"\x58\x24\x3f\x24\x25\x24\x0c\x24\xf4\x23\xdb\x23\xc2\x23\xa9\x23\x90\x23\x78\x23\x5f\x23"
    b"\x47\x23\x2e\x23\x16\x23\xfe\x22\xe5\x22\xcd\x22\xb5\x22\x9d\x22\x85\x22\x6d\x22\x55\x22"
    b"\x3e\x22\x26\x22\x0e\x22\xf7\x21\xdf\x21\xc8\x21\xb0\x21\x99\x21\x82\x21\x6b\x21\x54\x21"
    b"\x3c\x21\x25\x21\x0f\x21\xf8\x20\xe1\x20\xca\x20\xb3\x20\x9d\x20\x86\x20\x70\x20\x59\x20"
    b"\x43\x20\x2c\x20\x16\x20"
)


def _load_kernel(name):
    if name == "viper":
        import kernel_viper as mod
    elif name == "ulab":
        import kernel_ulab as mod
    elif name == "bytecode":
        import kernel_bytecode as mod
    else:
        raise ValueError("unknown kernel %r (choose auto, %s)" % (name, ", ".join(KERNELS)))
    return mod


def pick_kernel(kernel="auto"):
    """(name, module) of the kernel to use; 'auto' tries viper, then ulab, then bytecode.

    A kernel asked for by name must import, or the error propagates.
    """
    if kernel != "auto":
        return kernel, _load_kernel(kernel)
    for name in KERNELS[:2]:
        try:
            return name, _load_kernel(name)
        except Exception:  # not importable or not compilable on this port
            pass
    return "bytecode", _load_kernel("bytecode")


def zeros(n):
    """array('i') of n zeros in ONE allocation: array('i', bytes(4 * n)) would need a
    temporary of the same size first, twice the contiguous heap a fragmented board has.
    (tfshared.weights.zeros is the same for shared code, which cannot import device code.)"""
    a = array("i", range(n))  # the length is known up front: one allocation
    for i in range(n):
        a[i] = 0
    return a


def n_params(sizes):
    n = 0
    for i in range(len(sizes) - 1):
        n += (sizes[i] + 1) * sizes[i + 1]
    return n


def check_sizes(sizes):
    if len(sizes) < 2:
        raise ValueError("an MLP needs at least 2 layer sizes, got %d" % len(sizes))
    for n in sizes:
        if not 1 <= n <= _MAX_FAN:
            raise ValueError("layer sizes must be 1..%d, got %r" % (_MAX_FAN, tuple(sizes)))


def _isqrt(n):
    x = n
    y = (x + 1) >> 1
    while y < x:
        x = y
        y = (x + n // x) >> 1
    return x


def _lcg(s):
    lo = _LCG_A_LO * (s & _MASK15) + _LCG_C
    mid = (lo >> 15) + ((_LCG_A_HI * (s & _MASK15)) & _MASK15) + ((_LCG_A_LO * (s >> 15)) & _MASK15)
    return ((mid & _MASK15) << 15) | (lo & _MASK15)


def init_weights(w, sizes, seed=0):
    """He-uniform init into `w` (Q24), deterministic for `seed`; biases 0.

    Weight = U[-lim, lim] on the Q12 grid, lim = sqrt(6 / n_in); host/reference.py
    reproduces it exactly.
    """
    s = (seed ^ _SEED_MIX) & _MASK30
    k = 0
    for n in range(len(sizes) - 1):
        n_in = sizes[n]
        lim = _isqrt((6 << 24) // n_in)
        span = 2 * lim + 1
        for _ in range(sizes[n + 1]):
            for _ in range(n_in):
                s = _lcg(s)
                w[k] = ((((s >> 15) * span) >> 15) - lim) << 12
                k += 1
            w[k] = 0
            k += 1
    return w


class MLP:
    """Fixed-point MLP trained online; see the module docstring.

    sizes: layer widths, input first (each 1..128); classify: softmax cross-entropy on an
    int label instead of MSE on Q12 targets; lr_shift: learning rate 2**-lr_shift (>= 1);
    kernel: 'auto', 'viper', 'ulab' or 'bytecode'; seed: He-uniform init seed;
    weights: an array('i') of n_params to hold the master weights (allocated early by a
    caller on a heap that imports will fragment), or None to allocate one here.
    Inputs and targets must be array('i') in Q12 (the viper kernel reads their memory).
    Raises ValueError on bad sizes, lr_shift or kernel name; ImportError when a kernel
    asked for by name is not available on this port.
    """

    def __init__(self, sizes, classify=False, lr_shift=6, kernel="auto", seed=0, weights=None):
        check_sizes(sizes)
        if lr_shift < 1:
            raise ValueError("lr_shift must be >= 1, got %d" % lr_shift)
        self.sizes = tuple(sizes)
        self.classify = classify
        self.lr_shift = lr_shift
        self.n_params = n_params(sizes)
        if weights is None:
            weights = zeros(self.n_params)
        elif len(weights) != self.n_params:
            raise ValueError("MLP expects %d weights, got %d" % (self.n_params, len(weights)))
        self._w = init_weights(weights, sizes, seed)
        self._impl = None
        self.kernel, mod = pick_kernel(kernel)
        if self.kernel == "ulab":
            self._use_ulab(mod)
            return
        self._k = mod
        self._n_in = sizes[0]
        self._n_out = sizes[-1]
        acts = [array("i", bytes(4 * n)) for n in sizes]
        deltas = [None] + [array("i", bytes(4 * n)) for n in sizes[1:]]
        self._in = acts[0]
        self._out = acts[-1]
        self._dout = deltas[-1]
        # Per layer: (weight offset, n_in, n_out, a_in, a_out, d_in, d_out, forward mode,
        # backward mode, first). Mode bits: 1 = ReLU (forward) / delta below (backward);
        # 2 = a_in holds negative values, only ever the inputs: `first` masks the bit
        # load_input returns. The input layer has no delta below (a_in stands in).
        layers = []
        off = 0
        last = len(sizes) - 2
        for n in range(last + 1):
            first = n == 0
            layers.append((off, sizes[n], sizes[n + 1], acts[n], acts[n + 1],
                           acts[0] if first else deltas[n], deltas[n + 1],
                           1 if n < last else 0, 0 if first else 1, 2 if first else 0))
            off += (sizes[n] + 1) * sizes[n + 1]
        self._layers = tuple(layers)
        layers.reverse()
        self._backward = tuple(layers)
        self._exp2 = array("H", _EXP2) if classify else None

    def _use_ulab(self, mod):
        # kernel_ulab.MLP has this class's interface; start it from the same weights.
        impl = mod.MLP(self.sizes, self.classify, self.lr_shift)
        impl.set_weights(self._w)
        self._impl = impl
        self._w = None
        self.predict = impl.predict
        self.train_step = impl.train_step
        self.set_weights = impl.set_weights

    @property
    def weights(self):
        """Q24 master weights (array('i'), the spec's layout); change them with set_weights."""
        return self._w if self._impl is None else self._impl.weights

    def predict(self, x):
        """Forward pass; returns the output buffer (array('i'), Q12; logits if classify)."""
        if len(x) != self._n_in:
            raise ValueError("MLP expects %d inputs, got %d" % (self._n_in, len(x)))
        k = self._k
        w = self._w
        sign = k.load_input(x, self._in, self._n_in)  # 2 if an input is < 0, else 0
        for off, n_in, n_out, a_in, a_out, _, _, mode, _, first in self._layers:
            k.forward(off, n_in, mode | (sign & first), w, a_in, a_out, n_out)
        return self._out

    def train_step(self, x, y):
        """One SGD step on sample (x, y); y: array('i') Q12 targets, or an int label."""
        n = self._n_out
        classify = self.classify
        if classify:
            if not 0 <= y < n:
                raise ValueError("label must be 0..%d, got %d" % (n - 1, y))
        elif len(y) != n:
            raise ValueError("MLP expects %d targets, got %d" % (n, len(y)))
        if len(x) != self._n_in:  # predict's forward pass, inlined (one call less per step)
            raise ValueError("MLP expects %d inputs, got %d" % (self._n_in, len(x)))
        k = self._k
        w = self._w
        sign = k.load_input(x, self._in, self._n_in)
        for off, n_in, n_out, a_in, a_out, _, _, mode, _, first in self._layers:
            k.forward(off, n_in, mode | (sign & first), w, a_in, a_out, n_out)
        if classify:
            k.delta_softmax(self._out, y, self._dout, n, self._exp2)
        else:
            k.delta_mse(self._out, y, self._dout, n)
        s = self.lr_shift
        for off, n_in, n_out, a_in, _, d_in, d_out, _, mode, first in self._backward:
            k.backward(off, n_in, s, w, d_out, n_out, a_in, d_in, mode | (sign & first))

    def set_weights(self, arr):
        """Copy Q24 master weights in (layout of self.weights).

        Raises ValueError (model unchanged) on a wrong length or a value beyond +-M_MAX.
        """
        n = self.n_params
        if len(arr) != n:
            raise ValueError("MLP expects %d weights, got %d" % (n, len(arr)))
        for v in arr:
            if not -_M_MAX <= v <= _M_MAX:
                raise ValueError("weight %d out of range +-%d" % (v, _M_MAX))
        w = self._w
        for i in range(n):
            w[i] = arr[i]
