"""`tinyfleet bench kernels` and its C baseline. Speed is reported, never asserted; what is
tested is that the command runs the real kernels, measures allocation, and that the C
baseline computes the same integers as the reference and the device kernel."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from tinyfleet import bench_kernels as bk
from tinyfleet import reference as ref
from tinyfleet.commands import bench

KERNEL_ROWS = ["naive", "bytecode", "viper", "ulab", "C -O2"]
SHAPES = ["1-40-40-1", "64-32-10"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tinyfleet bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert bench.run(_parse(argv)) == 0
    return capsys.readouterr().out


def test_table_has_every_kernel_and_the_c_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["kernels", "--steps", "20", "--repeats", "2", "--min-time", "0.1"], capsys)
    lines = out.splitlines()
    assert "MicroPython 1.25.0 unix port, 64-bit build" in lines[0], out
    assert lines[1].startswith("machine: "), out
    assert lines[2].split()[:2] == ["shape", "kernel"], out
    rows = [line.split(None, 2)[:2] for line in lines[3:] if not line.startswith("target")]
    rows = [[s, "C -O2" if k == "C" else k] for s, k in rows]
    assert rows == [[s, k] for s in SHAPES for k in KERNEL_ROWS], out
    ulab = [line for line in lines if line.split()[1:2] == ["ulab"]]
    assert all("n/a" in line and "ulab is not importable" in line for line in ulab), out
    for line in lines[3:]:
        if line.split()[1] in ("naive", "bytecode", "viper"):
            assert "x faster" in line and "x of C" in line, line
            assert "wall clock" not in line, f"a 0.1 s repeat should be timed in CPU time: {line}"
    assert [line.split(":")[0] for line in lines if line.startswith("target")] == [
        f"target {s}" for s in SHAPES], out


def test_json_reports_allocation(build: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_run(["kernels", "--json", "--steps", "16", "--repeats", "1",
                           "--min-time", "0", "--build", build], capsys))
    assert doc["build"] == build and doc["steps"] == 16 and doc["micropython"] == "1.25.0"
    rows = {(r["case"], r["kernel"]): r for r in doc["rows"]}
    assert set(rows) == {(s, k) for s in SHAPES for k in KERNEL_ROWS}
    for shape in SHAPES:
        naive, c = rows[shape, "naive"], rows[shape, "C -O2"]
        # Boxed floats and fresh lists: a naive step allocates tens of KB.
        assert naive["bytes_per_step"] > 10_000, naive
        for kernel in ("bytecode", "viper"):
            r = rows[shape, kernel]
            assert r["available"], r
            assert r["bytes_per_step"] == 0, f"{build}-bit {shape} {kernel} allocates: {r}"
            # So short a run is timed by the wall clock (CPU time is tick-granular).
            assert r["clock"] == "wall", r
            assert r["x_faster_than_naive"] == pytest.approx(naive["wall_us_per_step"]
                                                             / r["wall_us_per_step"])
            assert r["x_of_c"] == pytest.approx(r["wall_us_per_step"] / c["wall_us_per_step"])
        assert not rows[shape, "ulab"]["available"]
        assert c["x_of_c"] == 1.0 and c["us_per_step"] > 0
        assert set(doc["targets"][shape]) >= {"x_faster_than_naive", "x_of_c", "met"}


def test_through_the_tinyfleet_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from tinyfleet import cli

    assert cli.main(["bench", "kernels", "--json", "--steps", "16", "--repeats", "1",
                     "--min-time", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["kernel"] for r in doc["rows"]} == set(KERNEL_ROWS)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "nosuch"])
    assert exc.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_only_known_benchmarks_are_offered() -> None:
    with pytest.raises(SystemExit):
        _parse([])
    with pytest.raises(SystemExit):
        _parse(["nosuch"])
    with pytest.raises(SystemExit):
        _parse(["kernels", "--build", "16"])
    assert _parse(["kernels"]).steps == 200


def _reference_weights(case: bk.Case, steps: int) -> list[int]:
    w = np.asarray(case.weights, dtype=np.int64)
    for k in range(steps):
        j = k % len(case.xs)
        w = ref.int_train_step(w, case.sizes, case.xs[j], case.ys[j], case.classify,
                               case.lr_shift)
    return [int(v) for v in w]


def _extra_case() -> bk.Case:
    """Three weight layers, a big learning rate and large inputs: clamps and the ReLU
    ceiling are hit, which the benchmark cases rarely do."""
    rng = np.random.default_rng(4)
    sizes = [5, 16, 8, 3]
    return bk.Case("5-16-8-3", sizes, True, 2, [int(v) for v in ref.init_weights(sizes, 9)],
                   [[int(v) for v in rng.integers(-20000, 20001, 5)] for _ in range(16)],
                   [int(v) for v in rng.integers(0, 3, 16)])


@pytest.mark.parametrize("case", bk.make_cases() + [_extra_case()], ids=lambda c: c.name)
def test_c_baseline_computes_the_reference_integers(case: bk.Case) -> None:
    steps = 200
    got = bk.c_weights_after(case, steps)
    want = _reference_weights(case, steps)
    assert got != case.weights, "no learning happened"
    diff = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    assert not diff, f"{case.name}: C differs from host/reference.py at {diff[:5]}"


DEVICE_SCRIPT = """
import json
from array import array
import mlp
cfg = json.load(open('case.json'))
net = mlp.MLP(cfg['sizes'], classify=cfg['classify'], lr_shift=cfg['lr_shift'],
              kernel='bytecode')
net.set_weights(array('i', cfg['weights']))
xs = [array('i', x) for x in cfg['xs']]
ys = cfg['ys'] if cfg['classify'] else [array('i', y) for y in cfg['ys']]
for k in range(cfg['steps']):
    net.train_step(xs[k % 16], ys[k % 16])
print(json.dumps(list(net.weights)))
"""


def test_c_baseline_matches_the_device_kernel(upy_runner) -> None:  # noqa: ANN001
    """The C baseline times the algorithm the board runs: same weights after N steps as
    device/mlp.py (bytecode kernel) on the real MicroPython."""
    for case in bk.make_cases():
        cfg = dict(vars(case), steps=100)
        (upy_runner.root / "case.json").write_text(json.dumps(cfg))
        on_device = upy_runner.run_json(DEVICE_SCRIPT)
        assert on_device == bk.c_weights_after(case, 100), case.name


def test_c_binary_is_cached() -> None:
    first = bk.c_binary()
    assert first.parent == bk.C_CACHE and first.exists()
    mtime = first.stat().st_mtime_ns
    assert bk.c_binary() == first and first.stat().st_mtime_ns == mtime


def test_naive_baseline_learns_the_same_network() -> None:
    """The naive float MLP is the float reference's step (no weight clamp), on CPython."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("naive_mlp", bk.BENCH_DIR / "naive_mlp.py")
    naive = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(naive)  # type: ignore[union-attr]
    for case in bk.make_cases():
        net = naive.NaiveMLP(case.sizes, case.classify, case.lr_shift, case.weights)
        wf = ref.float_weights(case.weights)
        for k in range(50):
            x = [v / 4096 for v in case.xs[k % 16]]
            y = case.ys[k % 16] if case.classify else [v / 4096 for v in case.ys[k % 16]]
            net.train_step(x, y)
            wf = ref.float_train_step(wf, case.sizes, x, y, case.classify, case.lr_shift)
        flat = [v for layer in net.layers for row in layer for v in row]
        np.testing.assert_allclose(flat, wf, rtol=0, atol=1e-9, err_msg=case.name)


def test_a_kernel_that_does_not_fit_the_heap_is_reported(
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a small heap the naive baseline runs out of memory; the table says so and the
    fixed-point kernels (no allocation per step) are still measured."""
    out = _run(["kernels", "--steps", "16", "--repeats", "1", "--min-time", "0",
                "--heap", "160K"], capsys)
    rows = {tuple(line.split()[:2]): line for line in out.splitlines()[3:]
            if not line.startswith("target")}
    for shape in SHAPES:
        assert "n/a" in rows[shape, "naive"] and "MemoryError" in rows[shape, "naive"], out
        assert "x of C" in rows[shape, "viper"], out
    assert "viper - faster than naive" in out and "MISSED" in out, out
