"""Aggregation strategies against hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tinyfleet.strategies import (
    Reply,
    aggregate,
    epsilon_at,
    fedavg,
    local_only,
    reptile,
    select_devices,
    tinyreptile,
)


def _r(dev: str, w: list[float], n: int = 0) -> Reply:
    return Reply(dev, np.array(w, dtype=np.float64), samples=n)


def test_reptile_batched_moves_theta_by_epsilon_times_mean_difference():
    # Prepare: θ = [1, 2, 3]; φ_a − θ = [1, 0, -2], φ_b − θ = [3, 2, 0]; mean = [2, 1, -1]
    theta = np.array([1.0, 2.0, 3.0])
    replies = [_r("a", [2.0, 2.0, 1.0]), _r("b", [4.0, 4.0, 3.0])]
    # Execute
    new = reptile(theta, replies, epsilon=0.5)
    # Assert: θ + 0.5·[2, 1, -1] = [2, 2.5, 2.5]
    np.testing.assert_allclose(new, [2.0, 2.5, 2.5])
    np.testing.assert_allclose(theta, [1.0, 2.0, 3.0])  # input untouched


def test_reptile_ignores_sample_counts_and_epsilon_one_is_plain_mean():
    theta = np.zeros(2)
    replies = [_r("a", [1.0, 0.0], n=100), _r("b", [0.0, 3.0], n=1)]
    new = reptile(theta, replies, epsilon=1.0)
    np.testing.assert_allclose(new, [0.5, 1.5])


def test_tinyreptile_serial_single_device():
    theta = np.array([0.0, 4.0])
    new = tinyreptile(theta, [_r("a", [2.0, 0.0])], epsilon=0.25)
    # θ + 0.25·([2, 0] − [0, 4]) = [0.5, 3.0]
    np.testing.assert_allclose(new, [0.5, 3.0])


def test_tinyreptile_rejects_more_than_one_reply():
    with pytest.raises(ValueError, match="exactly one"):
        tinyreptile(np.zeros(1), [_r("a", [1.0]), _r("b", [2.0])], 0.5)


def test_fedavg_weights_by_sample_count_and_ignores_epsilon():
    # (1·[3, 0] + 3·[−1, 4]) / 4 = [0, 3]
    theta = np.array([100.0, 100.0])
    new = fedavg(theta, [_r("a", [3.0, 0.0], n=1), _r("b", [-1.0, 4.0], n=3)], epsilon=0.1)
    np.testing.assert_allclose(new, [0.0, 3.0])


def test_fedavg_without_sample_counts_is_unweighted_mean():
    new = fedavg(np.zeros(1), [_r("a", [1.0]), _r("b", [2.0])])
    np.testing.assert_allclose(new, [1.5])


def test_fedavg_equals_reptile_with_epsilon_one_when_counts_are_equal():
    theta = np.array([0.3, -0.7])
    replies = [_r("a", [1.0, 2.0], n=5), _r("b", [-3.0, 0.5], n=5)]
    np.testing.assert_allclose(fedavg(theta, replies), reptile(theta, replies, 1.0))


def test_local_only_returns_unchanged_copy():
    theta = np.array([1.0, 2.0])
    new = local_only(theta, [_r("a", [9.0, 9.0])], 1.0)
    np.testing.assert_allclose(new, [1.0, 2.0])
    assert new is not theta


def test_shape_mismatch_and_empty_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        reptile(np.zeros(3), [_r("a", [1.0, 2.0])], 0.5)
    with pytest.raises(ValueError, match="no replies"):
        fedavg(np.zeros(3), [])
    with pytest.raises(ValueError, match="unknown strategy"):
        aggregate("fedprox", np.zeros(1), [_r("a", [1.0])], 1.0)


def test_aggregate_dispatches_by_name():
    theta = np.array([0.0])
    replies = [_r("a", [4.0], n=1)]
    assert aggregate("reptile", theta, replies, 0.25)[0] == pytest.approx(1.0)
    assert aggregate("fedavg", theta, replies, 0.25)[0] == pytest.approx(4.0)
    assert aggregate("local", theta, replies, 0.25)[0] == pytest.approx(0.0)


def test_epsilon_linear_anneals_one_to_zero():
    # 4 rounds: 1, 0.75, 0.5, 0.25
    got = [epsilon_at("linear", i, 4) for i in range(4)]
    np.testing.assert_allclose(got, [1.0, 0.75, 0.5, 0.25])


def test_epsilon_linear_with_custom_ends_and_constant_and_cosine():
    np.testing.assert_allclose([epsilon_at("linear", i, 2, 0.5, 0.1) for i in range(2)],
                               [0.5, 0.3])
    assert epsilon_at("constant", 3, 10, 0.7) == pytest.approx(0.7)
    # cosine at half-way: (1 + cos(π/2))/2 = 0.5
    assert epsilon_at("cosine", 2, 4) == pytest.approx(0.5)
    assert epsilon_at("cosine", 1, 4) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_epsilon_rejects_bad_input():
    with pytest.raises(ValueError, match="schedule"):
        epsilon_at("exp", 0, 4)
    with pytest.raises(ValueError, match="outside"):
        epsilon_at("linear", 4, 4)


def test_select_tinyreptile_round_robin_one_device():
    online = ["c", "a", "b"]
    assert [select_devices("tinyreptile", online, 8, r) for r in range(4)] == \
        [["a"], ["b"], ["c"], ["a"]]


def test_select_batched_is_reproducible_sample_of_k():
    online = [f"d{i}" for i in range(10)]
    first = select_devices("reptile", online, 3, round_no=7, seed=1)
    again = select_devices("reptile", online, 3, round_no=7, seed=1)
    assert first == again and len(first) == 3 and set(first) <= set(online)
    rounds = {tuple(select_devices("reptile", online, 3, r, seed=1)) for r in range(20)}
    assert len(rounds) > 1  # the sample changes from round to round
    assert select_devices("fedavg", online[:2], 3, 0) == ["d0", "d1"]
    assert select_devices("fedavg", online, 0, 0) == sorted(online)
    assert select_devices("reptile", [], 3, 0) == []
