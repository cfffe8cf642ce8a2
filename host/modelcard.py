"""Model cards for the global models a coordinator produces (DESIGN §5).

A card says what a model is (task, architecture, parameters, MACs), what it needs to run
(RAM and flash, measured, not estimated: the device's own mlp.py and kernels run on the
MicroPython unix 32-bit build, which has a board's 31-bit small ints and 4-byte
pointers), what it takes as input, how good it is (held-out MSE with the boards'
arithmetic, tinyfleet.metaeval.evaluate_init) and where it came from (the rounds and
devices in the coordinator's checkpoint). Measurements are cached per (shape, kernel,
MicroPython build, device code) in <cache>/modelcard-mem.json.
After Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import upy
from .errors import TinyFleetError

CARD_VERSION = 1
MEASURE_BUILD = "32"      # board-like: 31-bit small ints, 4-byte pointers
MEASURE_HEAP = "2m"       # big enough for any shape MLP accepts (fan <= 128)
KERNELS = ("viper", "bytecode")  # what the unix port can measure (ulab: not built in)
CACHE_FILE = "modelcard-mem.json"
CACHE_DIR: Path | None = None  # None: tinyfleet.upy.CACHE (~/.cache/tinyfleet)

# What each known model takes as input (the sine task: x in [-5, 5] fed as x / 5, Q12).
INPUTS: dict[str, dict[str, Any]] = {
    "sine": {"sensor": "sine", "observes": "sine", "features": ["x"],
             "shape": [1], "dtype": "int32 Q12", "scaling": "x / 5 in Q12 (x in [-5, 5])"},
    "digits": {"sensor": "camera", "observes": "image", "features": ["8x8 pixels"],
               "shape": [64], "dtype": "int32 Q12", "scaling": "pixel / 16 in Q12"},
}
TASKS: dict[str, dict[str, Any]] = {
    "sine": {"name": "sine regression", "type": "regression", "loss": "mse",
             "output": "y = A sin(x + phase), A in [0.1, 5], phase in [0, pi]"},
    "digits": {"name": "handwritten digits", "type": "classification",
               "loss": "softmax cross-entropy", "output": "10 classes"},
}


# ---------------------------------------------------------------- counting (pure)

def layers(sizes: Sequence[int], classify: bool = False) -> list[dict[str, Any]]:
    """One entry per dense layer: inputs, outputs, activation, parameters."""
    n = len(sizes) - 1
    return [{"in": a, "out": b, "params": (a + 1) * b,
             "activation": ("softmax" if classify else "linear") if i == n - 1
             else "relu clipped at 4.0"}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False))]


def param_count(sizes: Sequence[int]) -> int:
    """Weights and biases of an MLP with these layer sizes."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def macs(sizes: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates per inference and per SGD training step (SPEC's kernel).

    inference: sum n_in * n_out.  train step: the forward pass, the delta propagated to
    every layer below the output (n_in * n_out per layer except the first), and the
    weight update (n_in * n_out weights + n_out biases per layer).
    """
    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    fwd = sum(a * b for a, b in pairs)
    back = sum(a * b for a, b in pairs[1:])
    update = sum(a * b + b for a, b in pairs)
    return {"inference": fwd, "train_step": fwd + back + update}


# ---------------------------------------------------------------- measuring

_SCRIPT = """
import gc, json, sys
from array import array


def main():
    # Locals only: a new global would grow the module's dict and count as the model's.
    gc.collect(); a0 = gc.mem_alloc()
    import mlp
    mlp._load_kernel(KERNEL)
    gc.collect(); a1 = gc.mem_alloc()
    net = mlp.MLP(SIZES, classify=CLASSIFY, lr_shift=6, kernel=KERNEL)
    gc.collect(); a2 = gc.mem_alloc()
    x = array('i', [0] * SIZES[0])
    y = 0 if CLASSIFY else array('i', [0] * SIZES[-1])
    net.predict(x); net.train_step(x, y)
    gc.collect(); a3 = gc.mem_alloc()
    b = gc.mem_alloc(); net.train_step(x, y); e = gc.mem_alloc()
    return {"code": a1 - a0, "model": a2 - a1, "first_step": a3 - a2, "step": e - b,
            "kernel": net.kernel}


r = main()
r["runtime"] = ".".join(str(v) for v in sys.implementation.version[:3])
print(json.dumps(r))
"""


def _code_hash(kernel: str) -> str:
    h = hashlib.sha256()
    for name in ("mlp.py", f"kernel_{kernel}.py"):
        h.update((upy.DEVICE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _cache_path() -> Path:
    return (CACHE_DIR or upy.CACHE) / CACHE_FILE


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(data: dict[str, Any]) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: concurrent coordinators never read half a file


def _mpy_sizes(root: Path) -> dict[str, int]:
    """Bytes of every file a deploy puts on a board, modules compiled to .mpy."""
    from .fleet import compile_mpy

    compile_mpy(root, MEASURE_BUILD)
    return {str(p.relative_to(root)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()}


def measure(sizes: Sequence[int], classify: bool = False, kernel: str = "viper",
            use_cache: bool = True) -> dict[str, Any]:
    """RAM (gc.mem_alloc deltas) and flash (.mpy bytes, weights blob) of the device model.

    Returns {"ram": {code, model, first_step, step, total}, "flash": {model_code, app,
    weights, weights_store, total}, "kernel", "runtime", "build"}; cached per shape.

    Raises:
        TinyFleetError: MicroPython is missing, or the model does not run on it.
    """
    from tfshared import weights

    sizes = tuple(int(s) for s in sizes)
    key = f"{'-'.join(map(str, sizes))}|{int(classify)}|{kernel}|{MEASURE_BUILD}|" \
          f"{_code_hash(kernel)}"
    cache = _load_cache() if use_cache else {}
    if key in cache:
        return dict(cache[key])
    with tempfile.TemporaryDirectory(prefix="tf-card-") as tmp:
        root = upy.stage_board_fs(Path(tmp) / "board")
        files = _mpy_sizes(root)
        script = f"KERNEL={kernel!r}\nSIZES={sizes!r}\nCLASSIFY={classify!r}\n" + _SCRIPT
        (root / "_measure.py").write_text(script)
        proc = upy.run(root, "_measure.py", build=MEASURE_BUILD, heapsize=MEASURE_HEAP,
                       timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise TinyFleetError(f"measuring {sizes} ({kernel}) on MicroPython failed: "
                             f"{err[-1] if err else proc.returncode}")
    got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if got["kernel"] != kernel:
        raise TinyFleetError(f"kernel {kernel} is not available on the unix port "
                             f"(got {got['kernel']})")
    blob = weights.encoded_size(sizes, weights.DTYPE_Q24)
    model_code = sum(files.get(f, 0) for f in ("mlp.mpy", f"kernel_{kernel}.mpy"))
    app = sum(v for f, v in files.items() if not f.startswith("_"))
    ram = {k: int(got[k]) for k in ("code", "model", "first_step", "step")}
    ram["total"] = sum(ram.values())
    res = {"ram": ram,
           "flash": {"model_code": model_code, "app": app, "weights": blob,
                     # store.py keeps weights.bin and weights.bin.tmp: two copies at a save
                     "weights_store": 2 * blob, "total": app + 2 * blob},
           "kernel": kernel, "runtime": f"MicroPython {got['runtime']}",
           "build": f"unix {MEASURE_BUILD}-bit"}
    if use_cache:
        cache = _load_cache()
        cache[key] = res
        _save_cache(cache)
    return res


# ---------------------------------------------------------------- the card

def requirements(mem: dict[str, dict[str, Any]], sensor: str | None) -> dict[str, Any]:
    """What a board needs to run the model with at least one kernel (per kernel RAM).

    flash: the model's persisted weights (two copies at a save); a board that describes
    itself already runs TinyFleet, so its code is on flash already.
    """
    ram = {k: m["ram"]["total"] for k, m in mem.items()}
    flash = max((m["flash"]["weights_store"] for m in mem.values()), default=0)
    return {"ram": ram, "flash": flash, "sensors": [sensor] if sensor else [],
            "kernels": sorted(mem), "runtime": "MicroPython", "min_version": "1.22"}


def build_card(name: str, sizes: Sequence[int], version: int, *, fleet: str = "",
               classify: bool = False, quality: dict[str, Any] | None = None,
               lineage: dict[str, Any] | None = None,
               memory: dict[str, dict[str, Any]] | None = None,
               created: float | None = None) -> dict[str, Any]:
    """A model card (JSON-able dict). memory: {kernel: measure(...)}; None measures now.

    Raises:
        TinyFleetError: the memory measurement failed.
    """
    sizes = [int(s) for s in sizes]
    if memory is None:
        memory = {k: measure(sizes, classify, k) for k in KERNELS}
    inp = INPUTS.get(name, {"sensor": "", "observes": "", "features": [],
                            "shape": [sizes[0]], "dtype": "int32 Q12", "scaling": ""})
    return {
        "card_version": CARD_VERSION,
        "id": f"{fleet or 'fleet'}/{name}/v{version}",
        "name": name, "version": int(version), "fleet": fleet,
        "created": time.time() if created is None else created,
        "task": TASKS.get(name, {"name": name, "type": "classification" if classify
                                 else "regression"}),
        "architecture": {"type": "mlp", "sizes": sizes, "layers": layers(sizes, classify),
                         "arithmetic": "Q12 activations, int32 Q24 master weights, "
                                       "int16 Q12 on the wire"},
        "parameters": param_count(sizes),
        "macs": macs(sizes),
        "memory": memory,
        "requirements": requirements(memory, inp.get("sensor") or None),
        "input": inp,
        "quality": quality or {},
        "lineage": lineage or {},
    }


def quality(theta: Sequence[float] | Any, sizes: Sequence[int], tasks: int = 50,
            steps: Sequence[int] = (0, 8, 32), lr_shift: int = 6,
            held: Any = None) -> dict[str, Any]:
    """Held-out MSE of global weights θ (Q24 units) on the sine tasks, the boards' way."""
    from . import metaeval

    res = metaeval.evaluate_init(theta, sizes, tasks=tasks, steps=steps, lr_shift=lr_shift,
                                 held=held)
    return {"heldout_mse": {str(k): v for k, v in res.items()}, "tasks": tasks,
            "shots": 10, "lr_shift": lr_shift,
            "method": "tinyfleet.metaeval.evaluate_init (fixed point, as on the boards)"}


def lineage(history: Sequence[Any], upto: int) -> dict[str, Any]:
    """Which rounds and devices produced the global model after checkpoint round `upto`.

    history: tinyfleet.checkpoint.RoundRecord list (oldest first).
    """
    rounds = [r for r in history if r.round <= upto]
    devices = sorted({d for r in rounds for d in r.replied})
    return {"rounds": [r.round for r in rounds if r.status == "done"],
            "skipped": [r.round for r in rounds if r.status == "skipped"],
            "strategy": rounds[-1].strategy if rounds else "",
            "devices": devices,
            "last_round": {"round": rounds[-1].round, "replied": list(rounds[-1].replied),
                           "epsilon": rounds[-1].epsilon} if rounds else None}


def measure_all(sizes: Sequence[int], classify: bool = False) -> dict[str, dict[str, Any]]:
    """measure() for every kernel the unix port runs."""
    return {k: measure(sizes, classify, k) for k in KERNELS}


if __name__ == "__main__":  # pragma: no cover - a manual check
    print(json.dumps(build_card("sine", (1, 40, 40, 1), 1), indent=1))
