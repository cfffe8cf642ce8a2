"""device/mlp.py on the real MicroPython unix port (64- and 32-bit builds): bit-identical
to the host integer reference, allocation-free steps, a 64 KB heap, input validation,
and learning on the sine task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tinyfleet import reference as ref

REGRESSION = ((1, 40, 40, 1), False, 5)   # sizes, classify, lr_shift
CLASSIFIER = ((64, 32, 10), True, 4)
SHAPES = {"1-40-40-1": REGRESSION, "64-32-10": CLASSIFIER}


def task_samples(sizes: tuple[int, ...], classify: bool, n: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in Q12: sine samples (x / 5 -> y) or 8x8 digits (pixel / 16 -> label)."""
    rng = np.random.default_rng(seed)
    if classify:
        images, labels = ref.digits_task(rng, n)
        return images * 256, labels[:, None]
    x, y, _, _ = ref.sine_task(rng, n)
    return ref.to_q12(x / 5)[:, None], ref.to_q12(y)[:, None]


def write_samples(root: Path, xs: np.ndarray, ys: np.ndarray) -> None:
    """samples.bin on the board: per sample its inputs then its targets (or label),
    int32 little-endian, read by the device with readinto (no allocation)."""
    rows = np.concatenate([xs, ys], axis=1).astype("<i4")
    (root / "samples.bin").write_bytes(rows.tobytes())


TRAIN_SCRIPT = """
import json, binascii
from array import array
import mlp
SIZES, CLASSIFY, SHIFT, STEPS, SEED = {sizes}, {classify}, {shift}, {steps}, {seed}
x = array('i', bytes(4 * SIZES[0]))
y = array('i', bytes(4 * (1 if CLASSIFY else SIZES[-1])))
result = {{}}
for kernel in {kernels}:
    net = mlp.MLP(SIZES, classify=CLASSIFY, lr_shift=SHIFT, kernel=kernel, seed=SEED)
    assert net.kernel == kernel, net.kernel
    init = binascii.hexlify(net.weights).decode()
    with open('samples.bin', 'rb') as f:
        for _ in range(STEPS):
            f.readinto(x)
            f.readinto(y)
            net.train_step(x, y[0] if CLASSIFY else y)
    result[kernel] = {{'init': init, 'final': binascii.hexlify(net.weights).decode(),
                      'out': list(net.predict(x))}}
print(json.dumps(result))
"""


def decode_weights(hex_text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_text), dtype="<i4").astype(np.int64)


def assert_same_weights(device: np.ndarray, host: np.ndarray, what: str) -> None:
    assert device.shape == host.shape, f"{what}: {device.shape} weights vs {host.shape}"
    bad = np.flatnonzero(device != host)
    assert bad.size == 0, (f"{what}: {bad.size} weights differ, first at index {bad[0]}: "
                           f"device {device[bad[0]]} host {host[bad[0]]}")


@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_bit_identical_to_host_reference(upy_runner, build, shape):
    # Prepare: 1,000 task samples, written for the board and kept for the host.
    sizes, classify, shift = SHAPES[shape]
    steps, seed = 1000, 7
    xs, ys = task_samples(sizes, classify, steps, seed)
    write_samples(upy_runner.root, xs, ys)
    # Execute: both kernels on the device, the integer reference on the host.
    script = TRAIN_SCRIPT.format(sizes=sizes, classify=classify, shift=shift, steps=steps,
                                 seed=seed, kernels=("bytecode", "viper"))
    result = upy_runner.run_json(script, build=build)
    w0 = ref.init_weights(sizes, seed)
    labels = ys[:, 0] if classify else ys
    w = ref.int_train(w0, sizes, xs, labels, classify, shift)
    # Assert: same init, same weights after every step's rounding, same outputs.
    for kernel, got in result.items():
        assert_same_weights(decode_weights(got["init"]), w0, f"{kernel} init")
        assert_same_weights(decode_weights(got["final"]), w, f"{kernel} after {steps} steps")
        assert got["out"] == ref.int_predict(w, sizes, xs[-1]).tolist(), kernel


EXTREME_SCRIPT = """
import json, binascii, micropython
from array import array
import mlp
SIZES, CLASSIFY, SHIFT, STEPS = {sizes}, {classify}, {shift}, {steps}
n_x, n_y = SIZES[0], (1 if CLASSIFY else SIZES[-1])
with open('weights.bin', 'rb') as f:
    w0 = array('i', f.read())
with open('samples.bin', 'rb') as f:
    data = array('i', f.read())

def train(net, x, y):
    # every step under heap_lock: a long int (beyond 31 bits) would raise MemoryError
    k = 0
    micropython.heap_lock()
    try:
        for _ in range(STEPS):
            for i in range(n_x):
                x[i] = data[k + i]
            for i in range(n_y):
                y[i] = data[k + n_x + i]
            k += n_x + n_y
            net.train_step(x, y[0] if CLASSIFY else y)
    finally:
        micropython.heap_unlock()

result = {{}}
for kernel in ('bytecode', 'viper'):
    net = mlp.MLP(SIZES, classify=CLASSIFY, lr_shift=SHIFT, kernel=kernel)
    net.set_weights(w0)
    train(net, array('i', bytes(4 * n_x)), array('i', bytes(4 * n_y)))
    result[kernel] = binascii.hexlify(net.weights).decode()
print(json.dumps(result))
"""

EXTREMES = {  # sizes, classify, lr_shift: every mode of every layer, at every clamp
    "5-3 regression": ((5, 3), False, 1),
    "3-8-8-8-2 softmax": ((3, 8, 8, 8, 2), True, 1),
    "64-32-10 softmax": ((64, 32, 10), True, 2),
    "2-128-1 regression": ((2, 128, 1), False, 3),
}


@pytest.mark.parametrize("case", EXTREMES)
def test_kernels_bit_identical_at_the_clamps(upy_runner, build, case):
    # Prepare: weights anywhere in +-M_MAX (some at the limits, where wq = +-2**15),
    # inputs beyond +-A_MAX (clamped), huge targets (delta clamp), lr up to 1/2.
    sizes, classify, shift = EXTREMES[case]
    steps = 200
    rng = np.random.default_rng(len(case))
    w0 = rng.integers(-ref.M_MAX, ref.M_MAX + 1, ref.n_params(sizes))
    w0[rng.random(w0.size) < 0.05] = ref.M_MAX
    w0[rng.random(w0.size) < 0.05] = -ref.M_MAX
    xs = rng.integers(-40000, 40000, (steps, sizes[0]))
    xs[rng.random(xs.shape) < 0.3] = 0
    if classify:
        ys = rng.integers(0, sizes[-1], (steps, 1))
    else:
        ys = rng.integers(-(1 << 22), 1 << 22, (steps, sizes[-1]))
    (upy_runner.root / "weights.bin").write_bytes(w0.astype("<i4").tobytes())
    write_samples(upy_runner.root, xs, ys)
    # Execute
    script = EXTREME_SCRIPT.format(sizes=sizes, classify=classify, shift=shift, steps=steps)
    result = upy_runner.run_json(script, build=build)
    w = ref.int_train(w0.astype(np.int64), sizes, xs, ys[:, 0] if classify else ys,
                      classify, shift)
    # Assert: the clamps were reached, and both kernels match the host to the bit.
    assert np.abs(w).max() == ref.M_MAX
    for kernel, got in result.items():
        assert_same_weights(decode_weights(got), w, f"{kernel}, {case}, {steps} steps")


ALLOC_SCRIPT = """
import gc, json, micropython
from array import array
import mlp

def locked_steps(net, x, target, n):
    # in a function: a module-level loop would store globals (a dict that may grow)
    micropython.heap_lock()
    try:
        for _ in range(n):
            net.train_step(x, target)
            net.predict(x)
    except MemoryError:
        micropython.heap_unlock()
        return 'allocated under heap_lock'
    micropython.heap_unlock()
    return None

def heap_growth(net, x, target, n):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(n):
        net.train_step(x, target)
    grown = gc.mem_alloc() - before
    gc.enable()
    return grown

result = {}
for sizes, classify in (((1, 40, 40, 1), False), ((64, 32, 10), True)):
    x = array('i', [(i * 1237) % 8192 - 4096 for i in range(sizes[0])])
    y = array('i', [3000] * sizes[-1])
    target = 3 if classify else y
    for kernel, steps in (('bytecode', 500), ('viper', 5000)):
        net = mlp.MLP(sizes, classify=classify, kernel=kernel)
        net.train_step(x, target)
        error = locked_steps(net, x, target, 100)
        result['%s %s' % (kernel, sizes)] = [error, steps, heap_growth(net, x, target, steps)]
print(json.dumps(result))
"""


def test_train_step_and_predict_allocate_nothing(upy_runner, build):
    result = upy_runner.run_json(ALLOC_SCRIPT, build=build)
    assert len(result) == 4
    for case, (error, steps, grown) in result.items():
        assert error is None, f"{case} on {build}-bit: {error}"
        assert grown == 0, f"{case} on {build}-bit: heap grew {grown} B over {steps} steps"


HEAP_SCRIPT = """
import gc, json
from array import array
import mlp
x = array('i', [0])
y = array('i', [0])
for kernel in ('viper', 'bytecode'):
    net = None
    gc.collect()
    net = mlp.MLP((1, 40, 40, 1), lr_shift=5, kernel=kernel)
    with open('samples.bin', 'rb') as f:
        while f.readinto(x):
            f.readinto(y)
            net.train_step(x, y)
gc.collect()
print(json.dumps([net.kernel, net.predict(x)[0], gc.mem_free()]))
"""


def test_training_fits_in_64k_heap_on_32bit(upy_runner):
    sizes, classify, _ = REGRESSION
    xs, ys = task_samples(sizes, classify, 300, seed=3)
    write_samples(upy_runner.root, xs, ys)
    kernel, out, free = upy_runner.run_json(HEAP_SCRIPT, build="32", heapsize="64k")
    print(f"\n1-40-40-1, 300 steps per kernel under -X heapsize=64k (32-bit): {free} B free")
    assert kernel == "bytecode" and free > 0
    w = ref.int_train(ref.init_weights(sizes, 0), sizes, xs, ys, classify, 5)
    assert out == ref.int_predict(w, sizes, xs[-1])[0]


BAD_INPUT_SCRIPT = """
import json
from array import array
import mlp
def error(f):
    try:
        f()
    except ValueError as e:
        return str(e)
    return None
reg = mlp.MLP((1, 40, 40, 1), kernel='bytecode')
cls = mlp.MLP((64, 32, 10), classify=True, kernel='viper')
print(json.dumps({
    'x_too_long': error(lambda: reg.train_step(array('i', [1, 2]), array('i', [0]))),
    'x_predict': error(lambda: cls.predict(array('i', [0] * 63))),
    'y_too_long': error(lambda: reg.train_step(array('i', [1]), array('i', [0, 0]))),
    'label': error(lambda: cls.train_step(array('i', [0] * 64), 10)),
    'kernel': error(lambda: mlp.MLP((1, 4, 1), kernel='fortran')),
    'fan_in': error(lambda: mlp.MLP((129, 4, 1))),
    'lr_shift': error(lambda: mlp.MLP((1, 4, 1), lr_shift=0)),
    'set_weights': error(lambda: reg.set_weights(array('i', [0] * 5))),
    'weight_range': error(lambda: reg.set_weights(array('i', [1 << 27] * reg.n_params))),
}))
"""


def test_bad_input_raises_value_error(upy_runner, build):
    errors = upy_runner.run_json(BAD_INPUT_SCRIPT, build=build)
    assert errors["x_too_long"] == "MLP expects 1 inputs, got 2"
    assert errors["x_predict"] == "MLP expects 64 inputs, got 63"
    assert errors["y_too_long"] == "MLP expects 1 targets, got 2"
    assert errors["label"] == "label must be 0..9, got 10"
    assert "unknown kernel 'fortran'" in errors["kernel"]
    assert "1..128" in errors["fan_in"]
    assert "lr_shift" in errors["lr_shift"]
    assert errors["set_weights"] == "MLP expects 1761 weights, got 5"
    assert "out of range" in errors["weight_range"]


def test_device_learns_sine_like_float(upy_runner):
    # Prepare: one sine task, 2,000 training samples and 200 test points.
    sizes, classify, shift = REGRESSION
    steps, seed = 2000, 11
    rng = np.random.default_rng(seed)
    x, y, amp, phase = ref.sine_task(rng, steps)
    xt, yt, _, _ = ref.sine_task(rng, 200, amp, phase)
    xs, ys = ref.to_q12(x / 5)[:, None], ref.to_q12(y)[:, None]
    xts = ref.to_q12(xt / 5)[:, None]
    write_samples(upy_runner.root, xs, ys)
    (upy_runner.root / "test.bin").write_bytes(xts.astype("<i4").tobytes())
    script = TRAIN_SCRIPT.format(sizes=sizes, classify=classify, shift=shift, steps=steps,
                                 seed=seed, kernels=("viper",))
    script = script.replace("print(json.dumps(result))", """
preds = []
with open('test.bin', 'rb') as f:
    while f.readinto(x):
        preds.append(net.predict(x)[0])
print(json.dumps(preds))
""")
    # Execute: the device trains; the float reference trains on the same samples.
    preds = np.array(upy_runner.run_json(script, build="64"))
    wf = ref.float_train(ref.float_weights(ref.init_weights(sizes, seed)), sizes,
                         xs / ref.ONE, ys / ref.ONE, classify, shift)
    mse_fixed = float(np.mean((preds / ref.ONE - yt) ** 2))
    mse_float = float(np.mean((ref.float_predict(wf, sizes, xts / ref.ONE)[:, 0] - yt) ** 2))
    mse_start = float(np.mean(yt ** 2))
    print(f"\ndevice sine, {steps} steps, A={amp:.2f}: MSE fixed {mse_fixed:.4f}, "
          f"float64 {mse_float:.4f} (predicting 0: {mse_start:.4f})")
    # Assert: it learned, as well as float does.
    assert mse_fixed < 0.2 * mse_start
    assert abs(mse_fixed - mse_float) <= 0.10 * mse_float
