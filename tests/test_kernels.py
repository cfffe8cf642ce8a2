"""Kernel choice and kernel speed of device/mlp.py on the real MicroPython unix port."""

from __future__ import annotations

import numpy as np
from tinyfleet import reference as ref

CHOICE_SCRIPT = """
import json
import mlp
try:
    import kernel_ulab, ulab
    ulab_ok = True
except ImportError:
    ulab_ok = False
try:
    mlp.MLP((1, 4, 1), kernel='ulab')
    forced_ulab = 'built'
except ImportError:
    forced_ulab = 'ImportError'
print(json.dumps([mlp.MLP((1, 4, 1)).kernel, ulab_ok, forced_ulab]))
"""

# A port whose viper cannot compile this module: the import raises (ViperTypeError).
BROKEN_VIPER = """
import micropython

@micropython.viper
def forward(x: int) -> int:
    return x + 1.5
"""


def test_auto_prefers_viper_and_falls_back(upy_runner, build):
    kernel, ulab_ok, forced_ulab = upy_runner.run_json(CHOICE_SCRIPT, build=build)
    assert kernel == "viper"
    assert forced_ulab == ("built" if ulab_ok else "ImportError")
    (upy_runner.root / "kernel_viper.py").write_text(BROKEN_VIPER)
    kernel, ulab_ok, _ = upy_runner.run_json(CHOICE_SCRIPT, build=build)
    assert kernel == ("ulab" if ulab_ok else "bytecode")


def test_device_softmax_table_matches_host(upy_runner):
    script = "import json, mlp\nfrom array import array\n"
    script += "print(json.dumps(list(array('H', mlp._EXP2))))\n"
    assert tuple(upy_runner.run_json(script)) == ref.EXP2


SPEED_SCRIPT = """
import json, time
from array import array
import mlp

def load(path, n_in, n_y, count):
    xs, ys = [], []
    with open(path, 'rb') as f:
        for _ in range(count):
            x = array('i', bytes(4 * n_in))
            y = array('i', bytes(4 * n_y))
            f.readinto(x)
            f.readinto(y)
            xs.append(x)
            ys.append(y)
    return xs, ys

def us_per_step(net, xs, ys, steps, classify):
    # best of 5 repeats: the machine is shared, the fastest run is the least disturbed
    n = len(xs)
    best = None
    for _ in range(5):
        t = time.ticks_us()
        for k in range(steps):
            net.train_step(xs[k % n], ys[k % n][0] if classify else ys[k % n])
        us = time.ticks_diff(time.ticks_us(), t) / steps
        best = us if best is None else min(best, us)
    return best

result = {}
for name, sizes, classify, shift in (('1-40-40-1', (1, 40, 40, 1), False, 5),
                                     ('64-32-10', (64, 32, 10), True, 4)):
    xs, ys = load(name + '.bin', sizes[0], 1 if classify else sizes[-1], 64)
    for kernel, steps in (('bytecode', 100), ('viper', 1000)):
        net = mlp.MLP(sizes, classify=classify, lr_shift=shift, kernel=kernel)
        result[name + ' ' + kernel] = us_per_step(net, xs, ys, steps, classify)
print(json.dumps(result))
"""


def test_viper_step_is_much_faster_than_bytecode(upy_runner, build):
    rng = np.random.default_rng(2)
    x, y, _, _ = ref.sine_task(rng, 64)
    sine = np.stack([ref.to_q12(x / 5), ref.to_q12(y)], axis=1)
    images, labels = ref.digits_task(rng, 64)
    digits = np.concatenate([images * 256, labels[:, None]], axis=1)
    (upy_runner.root / "1-40-40-1.bin").write_bytes(sine.astype("<i4").tobytes())
    (upy_runner.root / "64-32-10.bin").write_bytes(digits.astype("<i4").tobytes())
    us = upy_runner.run_json(SPEED_SCRIPT, build=build)
    print(f"\nMicroPython {build}-bit, us per train_step: "
          + ", ".join(f"{case} {t:.1f}" for case, t in sorted(us.items())))
    for shape in ("1-40-40-1", "64-32-10"):
        speedup = us[f"{shape} bytecode"] / us[f"{shape} viper"]
        assert speedup >= 10, f"{shape} on {build}-bit: viper only {speedup:.1f}x bytecode"
