"""Data sources: read(x, y) fills preallocated arrays with one sample (Q12 ints).

A real board wraps a sensor behind the same interface; the simulation uses SineTask, the
sine regression benchmark (DESIGN section 3): y = A * sin(x + phase), A in [0.1, 5],
phase in [0, pi], x uniform in [-5, 5] and fed to the model as x / 5. Everything is
integer arithmetic below 2**30, so a read allocates nothing, even on 31-bit-small-int
ports (ESP32, RP2040). Also runs on CPython (host tests, simulations).
"""

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_Q = const(12)
AMP_MIN = const(410)  # 0.1 in Q12
AMP_MAX = const(20480)  # 5.0 in Q12
PHASE_MAX = const(12868)  # pi in Q12
_TWO_PI = const(25736)  # 2 pi in Q12
_X_HALF = const(4096)  # model input x / 5 in Q12 spans [-4096, 4096]

# Two multiply-with-carry generators with base 2**15: z = a*(z & 32767) + (z >> 15).
# a * 2**15 - 1 is a safe prime for both multipliers, so each has period ~2**29, and
# every intermediate stays below 2**30 (a small int everywhere).
_A1 = const(32760)
_A2 = const(32730)
_P1 = const(1073479679)  # _A1 * 2**15 - 1
_P2 = const(1072496639)  # _A2 * 2**15 - 1

# sin(k * pi / 128) in Q15 for k = 0..65 (one quarter wave, 64 segments, plus one guard).
_SIN = (0, 804, 1608, 2411, 3212, 4011, 4808, 5602, 6393, 7180, 7962, 8740, 9512, 10279,
        11039, 11793, 12540, 13279, 14010, 14733, 15447, 16151, 16846, 17531, 18205, 18868,
        19520, 20160, 20788, 21403, 22006, 22595, 23170, 23732, 24279, 24812, 25330, 25833,
        26320, 26791, 27246, 27684, 28106, 28511, 28899, 29269, 29622, 29957, 30274, 30572,
        30853, 31114, 31357, 31581, 31786, 31972, 32138, 32286, 32413, 32522, 32610, 32679,
        32729, 32758, 32768, 32758)


def sin_q15(theta):
    """sin(theta / 4096) in Q15 (theta in Q12 radians, any sign); error < 2e-4."""
    theta %= _TWO_PI
    b = (theta * 20861) >> 13  # binary angle: 65536 per turn (20861 / 8192 = 2**16 / 2pi Q12)
    w = b & 16383
    quad = b >> 14
    if quad & 1:
        w = 16384 - w
    i = w >> 8
    t0 = _SIN[i]
    s = t0 + (((_SIN[i + 1] - t0) * (w & 255) + 128) >> 8)
    return -s if quad & 2 else s


class DataSource:
    """The interface: read(x, y) writes one sample into preallocated arrays.

    Returns True when a sample was written, False when none is available (a sensor not
    ready); it never allocates. n_in / n_out give the lengths it fills.
    """

    n_in = 1
    n_out = 1

    def read(self, x, y):
        raise NotImplementedError


class SineTask(DataSource):
    """y = A sin(x + phase) with A, phase drawn (or set) per task; Q12 in and out."""

    def __init__(self, seed=1, amp=None, phase=None):
        seed &= 0x3FFFFFFF
        self.z1 = 1 + seed % (_P1 - 2)
        self.z2 = 1 + (seed ^ 0x2AAAAAAA) % (_P2 - 2)
        for _ in range(8):  # move away from the seed's neighbourhood
            self.rand30()
        self.amp = 0
        self.phase = 0
        self.drift()
        if amp is not None or phase is not None:
            self.set_task(self.amp if amp is None else amp,
                          self.phase if phase is None else phase)

    def rand30(self):
        """Next pseudo-random int in [0, 2**30)."""
        z1 = _A1 * (self.z1 & 32767) + (self.z1 >> 15)
        z2 = _A2 * (self.z2 & 32767) + (self.z2 >> 15)
        self.z1 = z1
        self.z2 = z2
        return ((z1 & 32767) << 15) | (z2 & 32767)

    def set_task(self, amp, phase):
        """Move to the task (amp, phase), both Q12: amp in [410, 20480], phase [0, 12868]."""
        if not AMP_MIN <= amp <= AMP_MAX:
            raise ValueError("datasource: amplitude %d out of [%d, %d] (Q12)" % (
                amp, AMP_MIN, AMP_MAX))
        if not 0 <= phase <= PHASE_MAX:
            raise ValueError("datasource: phase %d out of [0, %d] (Q12)" % (phase, PHASE_MAX))
        self.amp = amp
        self.phase = phase

    def drift(self):
        """Draw a new task: amplitude U[0.1, 5], phase U[0, pi] (in Q12)."""
        self.set_task(AMP_MIN + self.rand30() % (AMP_MAX - AMP_MIN + 1),
                      self.rand30() % (PHASE_MAX + 1))

    def target(self, u):
        """Q12 target for model input u = x / 5 in Q12 (x = 5u / 4096)."""
        return (self.amp * sin_q15(5 * u + self.phase) + 16384) >> 15

    def read(self, x, y):
        u = self.rand30() % (2 * _X_HALF + 1) - _X_HALF
        x[0] = u
        y[0] = (self.amp * sin_q15(5 * u + self.phase) + 16384) >> 15
        return True
