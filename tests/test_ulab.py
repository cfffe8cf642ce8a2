"""device/kernel_ulab.py under CPython, with numpy standing in for ulab.numpy.

The MicroPython unix port has no ulab, so the kernel runs here on a shim (a module `ulab`
whose `numpy` is numpy). A separate test holds the kernel to ulab's documented API, so what
passes on numpy does not rely on numpy-only features.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tinyfleet import reference as ref

DEVICE = Path(__file__).resolve().parent.parent / "device"
SOURCE = DEVICE / "kernel_ulab.py"

# Every ulab call kernel_ulab.py may make, with where micropython-ulab documents it
# (github.com/v923z/micropython-ulab, docs/manual/source/).
DOCUMENTED_NP = {
    "array": "ulab-ndarray.rst, 'Initialising an array' (iterables; default dtype float)",
    "zeros": "ulab-ndarray.rst, 'ones, zeros' (shape tuple, dtype=float)",
    "dot": "numpy-functions.rst, 'dot' (matrix product; returns float)",
    "clip": "numpy-functions.rst, 'clip' (scalar bounds, upcast like binary operators)",
    "where": "numpy-functions.rst, 'where' (condition, x, y; scalars broadcast)",
    "max": "numpy-functions.rst, 'max' (axis=None: maximum of the flattened array)",
    "sum": "numpy-functions.rst, 'sum' (axis=None: flattened)",
    "exp": "numpy-universal.rst, universal functions (exp of an ndarray)",
}
DOCUMENTED_METHODS = {
    "reshape": "ulab-ndarray.rst, '.reshape' (shape tuple; header only, shares the data)",
}
# Also used, documented in ulab-ndarray.rst: the binary operators + - * / and the in-place
# += -= *= /= ('Binary operators', float upcasting), comparisons with the ndarray on the
# left ('Comparison operators'), integer and tuple indexing a[j], a[j, 0] and row
# assignment a[j] = scalar ('Slicing and indexing'), iterating a matrix by rows
# ('Iterating over arrays'). Not used on purpose: .shape/.size/.T (methods, not properties,
# on MicroPython), dtype= (numpy's float dtypes differ), out= (not in ulab's dot/clip/where).
FORBIDDEN_KEYWORDS = {"dtype", "out", "axis"}


@pytest.fixture
def ulab_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """kernel_ulab imported against the numpy stand-in for ulab.numpy; the device modules
    imported on the way are dropped afterwards, so no other test sees them."""
    shim = types.ModuleType("ulab")
    shim.numpy = np  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ulab", shim)
    monkeypatch.syspath_prepend(str(DEVICE))
    for name in ("kernel_ulab", "mlp", "datasource"):  # import fresh, against the shim
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = set(sys.modules)
    try:
        yield importlib.import_module("kernel_ulab")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _q24(w: np.ndarray) -> array:
    return array("i", [int(v) for v in w])


# ---- the learning comparison tasks -------------------------------------------------------

SINE_TASKS = [(8192, 3000), (16384, 6000), (20480, 12000)]  # (amplitude, phase), Q12


def _sine_mse(kernel_mod: types.ModuleType, amp: int, phase: int,
              steps: int = 5000) -> tuple[float, float]:
    """Test MSE of (ulab kernel, integer fixed point) after `steps` online steps on the same
    SineTask samples from the same init (device/datasource.py: y = A sin(x + phase))."""
    datasource = importlib.import_module("datasource")
    sizes = [1, 40, 40, 1]
    w0 = ref.init_weights(sizes, seed=0)
    net = kernel_mod.MLP(sizes, False, 6)
    net.set_weights(_q24(w0))
    wi = w0.copy()
    src = datasource.SineTask(seed=7, amp=amp, phase=phase)
    x, y = array("i", [0]), array("i", [0])
    for _ in range(steps):
        src.read(x, y)
        net.train_step(x, y)
        wi = ref.int_train_step(wi, sizes, x, y, classify=False, lr_shift=6)
    test = datasource.SineTask(seed=99, amp=amp, phase=phase)
    err_u = err_i = 0.0
    n = 500
    for _ in range(n):
        test.read(x, y)
        err_u += (net.predict(x)[0] - y[0]) ** 2
        err_i += (int(ref.int_predict(wi, sizes, x)[0]) - y[0]) ** 2
    return err_u / n / 4096**2, err_i / n / 4096**2


def _digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 10-class 8x8 task: fixed random binary prototypes plus heavy Gaussian noise,
    pixels 0..16 as in the digits set, scaled to Q12 [0, 4096]."""
    protos = (np.random.default_rng(5).random((10, 64)) < 0.35).astype(float)
    labels = rng.integers(0, 10, n)
    pix = np.clip(protos[labels] + rng.normal(0.0, 1.2, (n, 64)), 0.0, 1.0)
    return np.round(pix * 16).astype(int) * 256, labels


# ---- tests -------------------------------------------------------------------------------

def test_matches_float_reference(ulab_kernel: types.ModuleType) -> None:
    """Under float64 numpy the kernel is the float reference, step for step."""
    # The last case drives hidden units into the 4.0 ceiling and the deltas into their clip.
    for sizes, classify, x_max, shift in (([1, 40, 40, 1], False, 4096, 5),
                                          ([64, 32, 10], True, 4096, 5),
                                          ([4, 16, 16, 2], False, 16383, 3)):
        w0 = ref.init_weights(sizes, seed=3)
        net = ulab_kernel.MLP(sizes, classify, shift)
        net.set_weights(_q24(w0))
        wf = ref.float_weights(w0)
        rng = np.random.default_rng(1)
        for _ in range(300):
            x = [int(v) for v in rng.integers(-x_max, x_max + 1, sizes[0])]
            y = (int(rng.integers(0, sizes[-1])) if classify
                 else [int(v) for v in rng.integers(-4 * x_max, 4 * x_max + 1, sizes[-1])])
            net.train_step(array("i", x), y if classify else array("i", y))
            wf = ref.float_train_step(wf, sizes, np.array(x) / 4096,
                                      y if classify else np.array(y) / 4096, classify, shift)
        got = np.array(net.weights) / 2**24
        # Q24 export rounds to 2**-25; the reference clamps at +-8 where the kernel exports.
        np.testing.assert_allclose(got, np.clip(wf, -8, 8), rtol=0, atol=1e-7,
                                   err_msg=f"{sizes}: ulab kernel drifted from the reference")


@pytest.mark.parametrize("amp,phase", SINE_TASKS)
def test_sine_learns_as_well_as_fixed_point(ulab_kernel: types.ModuleType, amp: int,
                                            phase: int) -> None:
    mse_ulab, mse_fixed = _sine_mse(ulab_kernel, amp, phase)
    assert mse_fixed < 0.2, f"fixed point did not learn the task: {mse_fixed:.4f}"
    assert mse_ulab <= 1.05 * mse_fixed, (
        f"sine A={amp / 4096:.2f}: ulab test MSE {mse_ulab:.4f} vs fixed point "
        f"{mse_fixed:.4f} (allowed: within 5%)")


def test_digits_learns_as_well_as_fixed_point(ulab_kernel: types.ModuleType) -> None:
    sizes = [64, 32, 10]
    x_train, y_train = _digits(5000, np.random.default_rng(11))
    x_test, y_test = _digits(500, np.random.default_rng(12))
    w0 = ref.init_weights(sizes, seed=0)
    net = ulab_kernel.MLP(sizes, True, 6)
    net.set_weights(_q24(w0))
    wi = w0.copy()
    for x, label in zip(x_train, y_train, strict=True):
        xa = array("i", x.tolist())
        net.train_step(xa, int(label))
        wi = ref.int_train_step(wi, sizes, xa, int(label), classify=True, lr_shift=6)
    acc_u = np.mean([np.argmax(net.predict(array("i", x.tolist()))) == label
                     for x, label in zip(x_test, y_test, strict=True)])
    acc_i = np.mean([np.argmax(ref.int_predict(wi, sizes, x)) == label
                     for x, label in zip(x_test, y_test, strict=True)])
    assert acc_i > 0.5, f"fixed point did not learn the task: {acc_i:.3f}"
    assert acc_u >= acc_i - 0.02, f"ulab accuracy {acc_u:.3f} vs fixed point {acc_i:.3f}"


def test_interface(ulab_kernel: types.ModuleType) -> None:
    sizes = (3, 5, 2)
    net = ulab_kernel.MLP(sizes, False, 6)
    assert net.kernel == "ulab"
    w0 = ref.init_weights(sizes, seed=1)
    net.set_weights(_q24(w0))
    assert list(net.weights) == [int(v) for v in w0], "Q24 weights do not round-trip"
    x = array("i", [4096, -2048, 100000])  # the last input is clamped to 4.0
    out = net.predict(x)
    assert isinstance(out, array) and out.typecode == "i" and len(out) == 2
    assert out is net.predict(x), "predict must return the same internal buffer"
    want = ref.int_predict(w0, sizes, x)
    assert np.all(np.abs(np.array(out) - want) <= 8), f"{list(out)} vs integer {list(want)}"

    before = list(net.weights)
    with pytest.raises(ValueError, match="expects 32 weights"):
        net.set_weights(array("i", [0] * 31))
    with pytest.raises(ValueError, match="out of range"):
        net.set_weights(array("i", [2**27] * 32))
    assert list(net.weights) == before, "a rejected set_weights changed the model"
    with pytest.raises(ValueError, match="expects 3 inputs"):
        net.predict(array("i", [1, 2]))
    with pytest.raises(ValueError, match="expects 2 targets"):
        net.train_step(x, array("i", [1]))
    with pytest.raises(ValueError, match="label"):
        ulab_kernel.MLP((3, 4), True).train_step(x, 4)
    with pytest.raises(ValueError, match="1..128"):
        ulab_kernel.MLP((3, 129, 2))


def test_mlp_auto_selection_builds_it(ulab_kernel: types.ModuleType,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """device/mlp.py's kernel='ulab' path constructs kernel_ulab.MLP by the names it uses."""
    upy = types.ModuleType("micropython")
    upy.const = lambda v: v  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "micropython", upy)
    mlp = importlib.import_module("mlp")
    net = mlp.MLP((1, 8, 1), lr_shift=4, kernel="ulab", seed=2)
    assert net.kernel == "ulab"
    w0 = [int(v) for v in ref.init_weights((1, 8, 1), seed=2)]
    assert list(net.weights) == w0, "MLP(kernel='ulab') did not start from its seeded init"
    x, y = array("i", [2048]), array("i", [3000])
    first = net.predict(x)[0]
    for _ in range(50):
        net.train_step(x, y)
    assert abs(net.predict(x)[0] - 3000) < abs(first - 3000), "training through MLP did nothing"
    assert list(net.weights) != w0, "MLP.weights is stale: it must follow the ulab kernel"
    net.set_weights(array("i", w0))
    assert net.predict(x)[0] == first


def _calls(tree: ast.AST) -> tuple[set[str], set[str], set[str]]:
    """(np.<name> uses, method names called on other objects, keyword names passed to np)."""
    np_names, methods, keywords = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "np":
                np_names.add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "np":
                keywords |= {k.arg for k in node.keywords if k.arg}
            elif not (isinstance(owner, ast.Name) and owner.id in ("self", "rows", "bias")):
                methods.add(node.func.attr)
    return np_names, methods, keywords


def test_only_documented_ulab_api() -> None:
    tree = ast.parse(SOURCE.read_text())
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "from ulab import numpy as np" in imports
    np_names, methods, keywords = _calls(tree)
    assert np_names <= DOCUMENTED_NP.keys(), f"undocumented: {np_names - DOCUMENTED_NP.keys()}"
    extra = methods - DOCUMENTED_METHODS.keys()
    assert not extra, f"undocumented methods: {extra}"
    numpy_only = keywords & FORBIDDEN_KEYWORDS
    assert not numpy_only, f"numpy-only keywords: {numpy_only}"
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attrs & {"shape", "size", "T", "ndim", "astype", "flat"}, (
        "numpy properties that are methods (or absent) in ulab")
