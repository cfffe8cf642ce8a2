"""host/reference.py: hand-computed steps, integer softmax, init, and fixed point learning
as well as float64 (the integer reference is bit-identical to the device: test_mlp.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tinyfleet import reference as ref

# 1-1-1 net: w1 = 1.0, b1 = 0.5, w2 = 2.0, b2 = 0 (Q24); x = 0.5, y = 1.0, lr 2**-4.
# Forward: a1 = 1.0, z = 2.0; delta 1.0; delta below = 2.0 * 1.0 = 2.0 (0 < a1 < 4).
# w2 -= 1/16 * 1.0 * 1.0; b2 -= 1/16; w1 -= 1/16 * 2.0 * 0.5; b1 -= 1/16 * 2.0.
TINY = (1, 1, 1)
TINY_W = [1 << 24, 1 << 23, 1 << 25, 0]
TINY_AFTER = [0.9375, 0.375, 1.9375, -0.0625]


def test_integer_step_matches_hand_computation():
    w = np.array(TINY_W, dtype=np.int64)
    new = ref.int_train_step(w, TINY, [2048], [4096], lr_shift=4)
    assert ref.int_predict(w, TINY, [2048]).tolist() == [8192]
    assert new.tolist() == [round(v * (1 << 24)) for v in TINY_AFTER]
    assert w.tolist() == TINY_W, "train_step must not change its input"


def test_float_step_matches_hand_computation():
    w = ref.float_weights(TINY_W)
    new = ref.float_train_step(w, TINY, [0.5], [1.0], lr_shift=4)
    np.testing.assert_allclose(new, TINY_AFTER)
    np.testing.assert_allclose(w, [1.0, 0.5, 2.0, 0.0])


def test_integer_softmax_delta():
    assert ref.int_softmax_delta(np.array([0, 0]), 0).tolist() == [-2048, 2048]
    # a logit 16 below the max is floored at -8.0: e = EXP2[138] >> 11
    far = ref.int_softmax_delta(np.array([0, -65536]), 1)
    e1 = ref.EXP2[138] >> 11  # t = -32768: -u = 8 * 5909 = 47272 = 11 * 4096 + 138 * 16 + 8
    total = 16384 + e1
    assert far.tolist() == [(16384 << 12) // total, (e1 << 12) // total - 4096]
    rng = np.random.default_rng(0)
    for _ in range(50):
        z = rng.integers(-6 * 4096, 6 * 4096, 10)
        p = np.exp(z / 4096 - z.max() / 4096)
        expect = p / p.sum() - np.eye(10)[3]
        got = ref.int_softmax_delta(z, 3) / 4096
        np.testing.assert_allclose(got, expect, atol=4 / 4096)


def test_exp2_table():
    assert len(ref.EXP2) == 256 and ref.EXP2[0] == 16384
    assert ref.EXP2[128] == round(16384 / 2 ** 0.5) == 11585
    assert all(a > b for a, b in zip(ref.EXP2, ref.EXP2[1:], strict=False))


def test_init_is_seeded_he_uniform_on_the_q12_grid():
    sizes = (64, 32, 10)
    w = ref.init_weights(sizes, seed=5)
    assert np.array_equal(w, ref.init_weights(sizes, seed=5))
    assert not np.array_equal(w, ref.init_weights(sizes, seed=6))
    for off, n_in, n_out in ref.layers(sizes):
        m = w[off:off + n_out * (n_in + 1)].reshape(n_out, n_in + 1)
        lim = np.sqrt(6 / n_in) * (1 << 24)
        assert np.all(m[:, n_in] == 0), "biases start at 0"
        assert np.all(m[:, :n_in] % 4096 == 0)
        assert np.abs(m[:, :n_in]).max() <= lim
        assert np.abs(m[:, :n_in]).max() > 0.9 * lim
        assert abs(m[:, :n_in].mean()) < 0.1 * lim


def test_layout_and_size_checks():
    assert ref.n_params((1, 40, 40, 1)) == 1761
    assert ref.layers((64, 32, 10)) == ((0, 64, 32), (2080, 32, 10))
    with pytest.raises(ValueError, match="1..128"):
        ref.layers((129, 1))
    with pytest.raises(ValueError, match="at least 2"):
        ref.layers((3,))


SINE_STEPS, SINE_SHIFT, SINE_TASKS = 5000, 5, 4


def test_fixed_point_sine_mse_within_10_percent_of_float():
    # Prepare: 4 sine tasks; each net sees 5,000 samples once, tested on 500 more.
    sizes = (1, 40, 40, 1)
    mse_fixed, mse_float = [], []
    for seed in range(SINE_TASKS):
        rng = np.random.default_rng(seed)
        x, y, amp, phase = ref.sine_task(rng, SINE_STEPS)
        xt, yt, _, _ = ref.sine_task(rng, 500, amp, phase)
        xs, ys, xts = ref.to_q12(x / 5)[:, None], ref.to_q12(y)[:, None], ref.to_q12(xt / 5)
        w = ref.init_weights(sizes, seed)
        # Execute: the same samples through the integer and the float64 network.
        wi = ref.int_train(w, sizes, xs, ys, lr_shift=SINE_SHIFT)
        wf = ref.float_train(ref.float_weights(w), sizes, xs / 4096, ys / 4096,
                             lr_shift=SINE_SHIFT)
        pred_i = ref.int_predict(wi, sizes, xts[:, None])[:, 0] / 4096
        pred_f = ref.float_predict(wf, sizes, xts[:, None] / 4096)[:, 0]
        mse_fixed.append(np.mean((pred_i - yt) ** 2))
        mse_float.append(np.mean((pred_f - yt) ** 2))
    fixed, flt = float(np.mean(mse_fixed)), float(np.mean(mse_float))
    print(f"\nsine 1-40-40-1, {SINE_STEPS} online steps, lr 2**-{SINE_SHIFT}, mean of "
          f"{SINE_TASKS} tasks: test MSE fixed {fixed:.4f}, float64 {flt:.4f} "
          f"(per task fixed {np.round(mse_fixed, 4).tolist()}, "
          f"float {np.round(mse_float, 4).tolist()})")
    # Assert: both learned (a sine of amplitude A has MSE A**2/2 around 0) and agree.
    assert flt < 0.05
    assert abs(fixed - flt) <= 0.10 * flt


DIGIT_STEPS, DIGIT_SHIFT = 5000, 4


def test_fixed_point_digits_accuracy_within_2_points_of_float():
    sizes = (64, 32, 10)
    rng = np.random.default_rng(1)
    images, labels = ref.digits_task(rng, DIGIT_STEPS)
    test_images, test_labels = ref.digits_task(rng, 1000)
    w = ref.init_weights(sizes, 1)
    wi = ref.int_train(w, sizes, images * 256, labels, True, DIGIT_SHIFT)
    wf = ref.float_train(ref.float_weights(w), sizes, images / 16, labels, True, DIGIT_SHIFT)
    acc_i = np.mean(ref.int_predict(wi, sizes, test_images * 256).argmax(1) == test_labels)
    acc_f = np.mean(ref.float_predict(wf, sizes, test_images / 16).argmax(1) == test_labels)
    print(f"\ndigits 64-32-10 (synthetic 8x8), {DIGIT_STEPS} online steps, "
          f"lr 2**-{DIGIT_SHIFT}: accuracy fixed {acc_i:.1%}, float64 {acc_f:.1%}")
    assert acc_f > 0.5
    assert abs(acc_i - acc_f) <= 0.02
