"""Exponential backoff with jitter for reconnecting to the broker."""

try:
    import random
except ImportError:  # pragma: no cover - every port we target has random
    random = None


class Backoff:
    """delay() doubles from `first` up to `cap` seconds; reset() after a success.

    Jitter (up to +50%) keeps a fleet that lost the broker at the same moment from
    reconnecting in lockstep."""

    def __init__(self, first=0.2, cap=10.0):
        self.first = first
        self.cap = cap
        self.attempt = 0

    def reset(self):
        self.attempt = 0

    def delay(self):
        d = min(self.cap, self.first * (1 << min(self.attempt, 16)))
        self.attempt += 1
        if random is not None:
            d += d * 0.5 * (random.getrandbits(8) / 255)
        return d
