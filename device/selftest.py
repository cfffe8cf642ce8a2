"""On-board self-test: every kernel against the host's integer reference.

The host sends a small net and fixed samples; for each kernel this trains a fresh MLP
on them and reports the CRC32 of the resulting Q24 weights (the host compares it with
host/reference.py), then keeps training to measure bytes allocated and µs per step.
Prints one JSON line.

    import selftest; selftest.main(sizes, classify, lr_shift, seed, xs, ys, reps)
"""

import binascii
import gc
import json
import sys
import time
from array import array

import mlp


def _samples(sizes, classify, xs, ys):
    n_in, n_out = sizes[0], sizes[-1]
    n = len(xs) // n_in
    xa = [array("i", xs[i * n_in:(i + 1) * n_in]) for i in range(n)]
    if classify:
        ya = list(ys)
    else:
        ya = [array("i", ys[i * n_out:(i + 1) * n_out]) for i in range(n)]
    return xa, ya


def _bench(net, xa, ya, reps):
    """(bytes allocated per step, µs per step) over reps passes of the samples."""
    n = len(xa)
    step = net.train_step
    gc.collect()
    gc.disable()  # so mem_alloc only grows: the difference is what the steps allocated
    a0 = gc.mem_alloc()
    t0 = time.ticks_us()
    for _ in range(reps):
        for i in range(n):
            step(xa[i], ya[i])
    t1 = time.ticks_us()
    a1 = gc.mem_alloc()
    gc.enable()
    steps = reps * n
    return (a1 - a0) // steps, time.ticks_diff(t1, t0) // steps


def check(kernel, sizes, classify, lr_shift, seed, xs, ys, reps=2):
    """One kernel's result dict."""
    try:
        net = mlp.MLP(sizes, classify, lr_shift, kernel, seed)
    except Exception as e:  # not available on this port (e.g. no ulab)
        return {"kernel": kernel, "available": False, "error": str(e)}
    if net.kernel != kernel:
        return {"kernel": kernel, "available": False, "error": "got " + net.kernel}
    xa, ya = _samples(sizes, classify, xs, ys)
    for i in range(len(xa)):
        net.train_step(xa[i], ya[i])
    w = net.weights
    crc = binascii.crc32(w) & 0xFFFFFFFF
    head = [w[i] for i in range(min(4, len(w)))]
    alloc, us = _bench(net, xa, ya, reps)
    net = None
    gc.collect()
    return {"kernel": kernel, "available": True, "crc": crc, "head": head,
            "alloc_per_step": alloc, "us_per_step": us}


def main(sizes, classify, lr_shift, seed, xs, ys, reps=2):
    gc.collect()
    out = {"firmware": "MicroPython %d.%d.%d" % sys.implementation.version[:3],
           "machine": getattr(sys.implementation, "_machine", sys.platform),
           "sizes": list(sizes), "classify": classify, "steps": len(ys) if classify
           else len(ys) // sizes[-1], "results": []}
    for k in mlp.KERNELS:
        out["results"].append(check(k, sizes, classify, lr_shift, seed, xs, ys, reps))
    out["mem_free"] = gc.mem_free()
    print(json.dumps(out))
