"""tinyfleet.metaeval: batched steps exact against the references, the round protocol,
the paired held-out protocol, the targets, and a small study's ordering."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tfshared import weights as wcodec
from tinyfleet import cli, heldout, metaeval, strategies
from tinyfleet import reference as ref

SIZES = (1, 40, 40, 1)
SMALL = (1, 6, 5, 1)


# ------------------------------------------------------------------ batched steps

def test_int_steps_match_the_integer_reference_bit_for_bit() -> None:
    # Prepare: extreme weights, inputs and targets so every clamp is exercised.
    rng = np.random.default_rng(7)
    p = ref.n_params(SIZES)
    w0 = rng.integers(-ref.M_MAX, ref.M_MAX + 1, (4, p)) // np.array([[1], [4], [16], [64]])
    xs = rng.integers(-30000, 30000, (4, 12, 1))
    ys = rng.integers(-40000, 40000, (4, 12, 1))
    # Execute
    w = w0.copy()
    metaeval.train_(w, SIZES, xs, ys, "fixed", 5)
    # Assert: each network as the reference (bit-identical to the boards) computes it.
    for t in range(4):
        want = ref.int_train(w0[t], SIZES, xs[t], ys[t], lr_shift=5)
        np.testing.assert_array_equal(w[t], want, err_msg=f"network {t}")


def test_float_steps_match_the_float_reference() -> None:
    rng = np.random.default_rng(3)
    w0 = ref.float_weights(np.stack([ref.init_weights(SIZES, s) for s in range(3)]))
    xs, ys = rng.uniform(-1, 1, (3, 20, 1)), rng.uniform(-5, 5, (3, 20, 1))
    w = w0.copy()
    metaeval.train_(w, SIZES, xs, ys, "float", 6)
    for t in range(3):
        want = ref.float_train(w0[t], SIZES, xs[t], ys[t], lr_shift=6)
        np.testing.assert_allclose(w[t], want, rtol=0, atol=1e-12)


def test_predict_and_mse_by_hand() -> None:
    # A 1-1-1 net: hidden = relu(0.5 x + 0.25), out = 2 hidden - 1 (Q24 masters).
    w = np.array([[1 << 23, 1 << 22, 1 << 25, -(1 << 24)]], dtype=np.int64)
    qx = np.array([[4096, -4096, 0]])  # x = 1, -1, 0 -> hidden 0.75, 0, 0.25
    qy = np.array([[2048, 0, 0]])      # -> out 0.5, -1, -0.5
    z = metaeval.predict(w, (1, 1, 1), qx[:, :, None], "fixed")[0, :, 0]
    np.testing.assert_array_equal(z, [2048, -4096, -2048])
    # errors 0, -1, -0.5 -> MSE (0 + 1 + 0.25) / 3
    np.testing.assert_allclose(metaeval.mse(w, (1, 1, 1), qx, qy, "fixed"), [1.25 / 3])
    np.testing.assert_allclose(metaeval.mse(w / 2**24, (1, 1, 1), qx, qy, "float"), [1.25 / 3])


def test_predict_matches_reference_in_chunks() -> None:
    rng = np.random.default_rng(5)
    w = np.stack([ref.init_weights(SIZES, s) for s in range(3)])
    xs = rng.integers(-5000, 5000, (3, 700, 1))  # more than one chunk
    z = metaeval.predict(w, SIZES, xs, "fixed")
    for t in range(3):
        np.testing.assert_array_equal(z[t], ref.int_predict(w[t], SIZES, xs[t]))


def test_wrong_dtype_or_arithmetic_is_refused() -> None:
    w = np.zeros((1, ref.n_params(SMALL)))
    x = np.zeros((1, 1, 1))
    with pytest.raises(ValueError, match="int64"):
        metaeval.train_(w, SMALL, x, x, "fixed", 6)
    with pytest.raises(ValueError, match="unknown arithmetic"):
        metaeval.train_(w, SMALL, x, x, "double", 6)


# ------------------------------------------------------------------ wire, data

def test_wire_q12_by_hand_and_as_the_codec() -> None:
    m = np.array([2047, 2048, -2048, -2049, 5 << 12, ref.M_MAX, -ref.M_MAX])
    # -M_MAX rounds to q = -32768, whose -32768 << 12 is clamped back to -M_MAX.
    want = [0, 4096, 0, -4096, 5 << 12, 32767 << 12, -ref.M_MAX]
    np.testing.assert_array_equal(metaeval.wire_q12(m), want)
    codec = [wcodec.to_q24(wcodec.to_q12(int(v))) for v in m]
    np.testing.assert_array_equal(metaeval.wire_q12(m), codec)


def test_to_master_rounds_and_clamps() -> None:
    theta = np.array([0.4, 0.6, -1.5, 2.5, 1e12, -1e12])
    np.testing.assert_array_equal(metaeval.to_master(theta),
                                  [0, 1, -2, 2, ref.M_MAX, -ref.M_MAX])


def test_sine_stream_drifts_like_a_board() -> None:
    ds = heldout.datasource()
    task = ds.SineTask(seed=42)
    xa, ya, want = [0], [0], []
    for j in range(10):
        task.read(xa, ya)
        want.append((xa[0], ya[0]))
        if (j + 1) % 3 == 0:
            task.drift()
    x, y = metaeval.sine_stream(42, 10, drift=3)
    assert list(zip(x.tolist(), y.tolist(), strict=True)) == want
    # drifts=1: one task change after 3 samples, then the new task for good.
    task = ds.SineTask(seed=42)
    want = []
    for j in range(10):
        task.read(xa, ya)
        want.append((xa[0], ya[0]))
        if j == 2:
            task.drift()
    x, y = metaeval.sine_stream(42, 10, drift=3, drifts=1)
    assert list(zip(x.tolist(), y.tolist(), strict=True)) == want


def test_heldout_set_is_tinyfleet_heldouts() -> None:
    # The same tasks, shots and queries as `tinyfleet simulate` scores rounds with.
    mine = metaeval.HeldOutSet.make(6, shots=10, queries=20, seed=1)
    theirs = heldout.HeldOut.make(6, shots=10, queries=20, seed=1)
    for name in ("shots_x", "shots_y", "query_x", "query_y"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name))


def test_adapt_matches_heldout_evaluate() -> None:
    held = metaeval.HeldOutSet.make(8, queries=10)
    theirs = heldout.HeldOut(held.shots_x, held.shots_y, held.query_x, held.query_y)
    theta = ref.init_weights(SIZES, 2)
    res = metaeval.adapt(theta, held, SIZES, "fixed", (0, 8, 32), 6)
    for steps in (8, 32):
        before, after = theirs.evaluate(theta, SIZES, steps=steps, lr_shift=6)
        assert res[0].mean() == pytest.approx(before, rel=1e-12)
        assert res[steps].mean() == pytest.approx(after, rel=1e-12)


# ------------------------------------------------------------------ round protocol

def test_rounds_spend_the_same_samples_serial_and_batched() -> None:
    # Prepare: 2 boards, 2 batched rounds of k = 2, float arithmetic (exact to recompute).
    st = metaeval.Settings(sizes=SMALL, boards=2, rounds=2, k=2, drift_rounds=1)
    rng = np.random.default_rng(0)
    xs = rng.integers(-4096, 4097, (1, 2, 4))
    ys = rng.integers(-8000, 8000, (1, 2, 4))
    theta0 = ref.float_weights(ref.init_weights(SMALL, 0))

    def phi(theta: np.ndarray, b: int, c: int) -> np.ndarray:
        sl = slice(2 * c, 2 * c + 2)
        return ref.float_train(theta, SMALL, xs[0, b, sl, None] / 4096, ys[0, b, sl, None] / 4096,
                               lr_shift=st.lr_shift)

    # Execute
    serial = metaeval.federated(theta0[None], xs, ys, "tinyreptile", st, "float")[0]
    batched = metaeval.federated(theta0[None], xs, ys, "reptile", st, "float")[0]
    fedavg = metaeval.federated(theta0[None], xs, ys, "fedavg", st, "float")[0]
    # Assert: TinyReptile visits board 0, 1, 0, 1 with chunks 0, 0, 1, 1 and ε 1, .75, .5, .25.
    t = theta0
    for r, (b, c) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        t = t + (1 - r / 4) * (phi(t, b, c) - t)
    np.testing.assert_allclose(serial, t, atol=1e-12)
    # Reptile: both boards per round, chunk r, ε 1 then 0.5; FedAvg: ε 1 throughout.
    t = theta0
    f = theta0
    for r in range(2):
        t = t + (1 - r / 2) * ((phi(t, 0, r) + phi(t, 1, r)) / 2 - t)
        f = (phi(f, 0, r) + phi(f, 1, r)) / 2
    np.testing.assert_allclose(batched, t, atol=1e-12)
    np.testing.assert_allclose(fedavg, f, atol=1e-12)


def test_fixed_rounds_cross_the_wire_as_q12() -> None:
    st = metaeval.Settings(sizes=SMALL, boards=2, rounds=1, k=3)
    rng = np.random.default_rng(1)
    xs = rng.integers(-4096, 4097, (1, 2, 3))
    ys = rng.integers(-8000, 8000, (1, 2, 3))
    theta0 = ref.init_weights(SMALL, 1).astype(np.float64) + 1000.0  # off the Q12 grid
    got = metaeval.federated(theta0[None], xs, ys, "fedavg", st, "fixed")[0]
    start = metaeval.wire_q12(metaeval.to_master(theta0))
    phis = [metaeval.wire_q12(ref.int_train(start, SMALL, xs[0, b, :, None], ys[0, b, :, None],
                                            lr_shift=st.lr_shift)) for b in range(2)]
    want = strategies.fedavg(theta0, [strategies.Reply(str(b), phis[b].astype(float), 3)
                                      for b in range(2)])
    np.testing.assert_array_equal(got, want)


def test_local_boards_meet_held_out_tasks_round_robin() -> None:
    finals = np.arange(3 * 2).reshape(3, 2)  # 3 boards, 2 params
    np.testing.assert_array_equal(metaeval.task_inits(finals, 5),
                                  [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]])
    one = np.array([7, 8])
    assert metaeval.task_inits(one, 5) is one


def test_joint_pools_every_board_in_one_model() -> None:
    st = metaeval.Settings(sizes=SMALL, boards=2, rounds=1, k=3)
    rng = np.random.default_rng(2)
    xs = rng.integers(-4096, 4097, (1, 2, 3))
    ys = rng.integers(-8000, 8000, (1, 2, 3))
    w0 = ref.init_weights(SMALL, 0)[None]
    got = metaeval.joint(w0, xs, ys, st, "fixed", seeds=[5])
    order = np.random.default_rng(5).permutation(6)
    want = ref.int_train(w0[0], SMALL, xs[0].ravel()[order, None], ys[0].ravel()[order, None],
                         lr_shift=st.lr_shift)
    np.testing.assert_array_equal(got[0], want)


# ------------------------------------------------------------------ targets

def test_targets_by_hand() -> None:
    mse = {"fixed": {"tinyreptile": {32: 0.6}, "reptile": {32: 0.8}, "joint": {32: 1.2},
                     "random": {32: 4.0}},
           "float": {"tinyreptile": {32: 0.5}, "reptile": {32: 0.7}, "joint": {32: 1.4},
                     "random": {32: 4.0}}}
    got = {t["target"]: (round(t["ratio"], 6), t["met"])
           for t in metaeval.check_targets(mse, 32)}
    assert got["fixed: joint / tinyreptile"] == (2.0, True)
    assert got["fixed: joint / reptile"] == (1.5, True)
    assert got["fixed: random / reptile"] == (5.0, True)
    assert got["fixed: tinyreptile / reptile"] == (0.75, True)
    assert got["fixed / float: tinyreptile"] == (1.2, False)   # 20% worse than float
    assert got["fixed / float: reptile"] == (round(0.8 / 0.7, 6), True)
    assert got["fixed / float: joint"] == (round(1.2 / 1.4, 6), True)


# ------------------------------------------------------------------ small studies

def test_small_study_orders_meta_joint_random_on_paired_tasks(monkeypatch) -> None:
    # Prepare: record which held-out shots every method is scored on.
    seen: list[tuple[int, bytes]] = []
    real_adapt = metaeval.adapt

    def spy(inits, held, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append((id(held), held.shots_x.tobytes() + held.shots_y.tobytes()))
        return real_adapt(inits, held, *a, **kw)

    monkeypatch.setattr(metaeval, "adapt", spy)
    st = metaeval.Settings(rounds=24, seeds=1, tasks=60, queries=20)
    # Execute
    rep = metaeval.run(st, ariths=("fixed",), methods=("tinyreptile", "joint", "random"),
                       recovery=False)
    # Assert: the paired protocol, then meta < joint < random after 32 steps.
    assert len(seen) == 3 and len(set(seen)) == 1
    m = {name: v[32] for name, v in rep.mse["fixed"].items()}
    assert m["tinyreptile"] < m["joint"] < m["random"], m
    assert m["random"] / m["tinyreptile"] > 2.5, m


def test_evaluate_init_is_the_random_row_and_checks_shape() -> None:
    theta = ref.init_weights(SIZES, 0)
    got = metaeval.evaluate_init(theta, SIZES, tasks=20, steps=(0, 8))
    held = metaeval.HeldOutSet.make(20)
    want = metaeval.adapt(theta, held, SIZES, "fixed", (0, 8), 6)
    assert got == {0: pytest.approx(want[0].mean()), 8: pytest.approx(want[8].mean())}
    # A coordinator's float θ (Q24 units) is rounded to masters first: 0.4 off changes nothing.
    assert metaeval.evaluate_init(theta + 0.4, SIZES, steps=(0, 8), held=held) == got
    with pytest.raises(ValueError, match="shape"):
        metaeval.evaluate_init(theta[:-1], SIZES, tasks=2)


def test_drift_recovery_counts_samples_to_target() -> None:
    theta = ref.init_weights(SIZES, 0)
    easy = metaeval.Settings(recovery_tasks=4, recovery_max=16, recovery_every=8,
                             recovery_target=1e9, queries=10)
    r = metaeval.drift_recovery(theta, easy, "fixed")
    assert r["checks"] == [0, 8, 16]
    assert r["from_init"]["median_samples"] == 0.0 and r["from_init"]["reached"] == 1.0
    assert len(r["from_init"]["mean_mse"]) == 3
    never = metaeval.Settings(recovery_tasks=4, recovery_max=16, recovery_every=8,
                              recovery_target=0.0, queries=10)
    r = metaeval.drift_recovery(theta, never, "fixed")
    assert r["from_previous"]["median_samples"] is None and r["from_previous"]["reached"] == 0


def test_cli_writes_json_and_markdown(tmp_path, capsys) -> None:
    rc = cli.main(["evaluate", "--rounds", "2", "--seeds", "1", "--tasks", "8", "--boards", "2",
                   "--arith", "fixed", "--no-recovery", "--jobs", "1", "--json",
                   "--out", str(tmp_path)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "evaluate.json").read_text())
    assert printed == saved
    assert set(saved["mse"]["fixed"]) == set(metaeval.METHODS)
    assert "| TinyReptile" in (tmp_path / "evaluate.md").read_text()


def test_cli_bad_option_is_one_line(capsys) -> None:
    assert cli.main(["evaluate", "--rounds", "0", "--out", "/tmp/unused-tf-eval"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tinyfleet: error: rounds must be >= 1, got 0"]


def test_a_simulated_fleets_settings_seed_drift_and_first_epsilon() -> None:
    # Prepare: `tinyfleet simulate --seed 2 --drift 40 --epsilon 0.5` as metaeval settings
    st = metaeval.Settings(sizes=SMALL, boards=2, rounds=3, k=4, seeds=1, first_seed=2,
                           tasks=6, queries=10, drift_samples=40, epsilon=0.5)
    # Execute
    res = metaeval.run_arith(st, "fixed", methods=("reptile", "random"), recovery=True,
                             recovery_methods=("reptile",))
    rep = metaeval.make_report(st, ("fixed",), [res])
    # Assert: seed 2's init and held-out tasks of heldout_seed; drift in samples; ε from 0.5
    assert st.seed_list == [2] and st.drift == 40 and rep.settings["drift_samples"] == 40
    assert metaeval.Settings(drift_samples=0).drift == 0  # never drifts
    want = metaeval.evaluate_init(ref.init_weights(SMALL, 2), SMALL, tasks=6, steps=(0, 8, 32),
                                  held=metaeval.HeldOutSet.make(6, queries=10))
    assert rep.mse["fixed"]["random"] == want
    assert set(rep.recovery["fixed"]) == {"reptile"}
    assert metaeval._epsilons("reptile", 4, "linear", 0.5) == [0.5, 0.375, 0.25, 0.125]
    assert metaeval._epsilons("fedavg", 2, "linear", 0.5) == [1.0, 1.0]
    with pytest.raises(ValueError, match="drift_samples"):
        metaeval.Settings(drift_samples=-1)
