"""Aggregation strategies for federated meta-learning: pure functions over numpy arrays.

Reptile (Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning Algorithms"):
θ ← θ + ε·mean(φᵢ − θ); TinyReptile (Ren et al. 2023) runs it serially, one device per
round; FedAvg (McMahan et al. 2017) is the sample-weighted mean of the φᵢ, i.e. ε = 1;
local-only training never changes θ. None of these touch MQTT or disk: the coordinator
owns I/O and the round loop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("reptile", "tinyreptile", "fedavg", "local")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Reply:
    """One device's answer to a round: its adapted weights φ (real values) and metrics."""

    device: str
    weights: np.ndarray
    samples: int = 0
    loss: float = float("nan")


def _stack(theta: np.ndarray, replies: Sequence[Reply]) -> np.ndarray:
    """The φᵢ as one (n, p) float64 array; every φᵢ must have θ's shape."""
    if not replies:
        raise ValueError("no replies to aggregate")
    for r in replies:
        if r.weights.shape != theta.shape:
            raise ValueError(f"reply from {r.device} has shape {r.weights.shape}, "
                             f"expected {theta.shape}")
    return np.stack([np.asarray(r.weights, dtype=np.float64) for r in replies])


def reptile(theta: np.ndarray, replies: Sequence[Reply], epsilon: float) -> np.ndarray:
    """Batched Reptile: θ + ε·mean(φᵢ − θ), the unweighted mean over this round's devices.

    Raises:
        ValueError: no replies, or a reply whose shape differs from θ.
    """
    theta = np.asarray(theta, dtype=np.float64)
    phis = _stack(theta, replies)
    return theta + epsilon * (phis - theta).mean(axis=0)


def tinyreptile(theta: np.ndarray, replies: Sequence[Reply], epsilon: float) -> np.ndarray:
    """Serial Reptile (TinyReptile): one device per round, θ + ε·(φ − θ).

    Raises:
        ValueError: not exactly one reply, or its shape differs from θ.
    """
    if len(replies) != 1:
        raise ValueError(f"tinyreptile aggregates exactly one reply per round, got {len(replies)}")
    return reptile(theta, replies, epsilon)


def fedavg(theta: np.ndarray, replies: Sequence[Reply], epsilon: float = 1.0) -> np.ndarray:
    """FedAvg: Σ nᵢφᵢ / Σ nᵢ (ε is ignored: FedAvg is Reptile with ε = 1, sample-weighted).

    When no reply reports a sample count (all nᵢ = 0) the mean is unweighted.

    Raises:
        ValueError: no replies, a negative sample count, or a shape mismatch.
    """
    theta = np.asarray(theta, dtype=np.float64)
    phis = _stack(theta, replies)
    n = np.array([r.samples for r in replies], dtype=np.float64)
    if (n < 0).any():
        raise ValueError("negative sample count in a reply")
    if n.sum() == 0:
        return phis.mean(axis=0)
    return (n[:, None] * phis).sum(axis=0) / n.sum()


def local_only(theta: np.ndarray, replies: Sequence[Reply], epsilon: float = 0.0) -> np.ndarray:
    """Local-only baseline: devices keep their own weights; θ is returned unchanged (a copy)."""
    return np.array(theta, dtype=np.float64, copy=True)


AGGREGATORS: dict[str, Callable[[np.ndarray, Sequence[Reply], float], np.ndarray]] = {
    "reptile": reptile,
    "tinyreptile": tinyreptile,
    "fedavg": fedavg,
    "local": local_only,
}


def aggregate(strategy: str, theta: np.ndarray, replies: Sequence[Reply],
              epsilon: float) -> np.ndarray:
    """Apply the named strategy.

    Raises:
        ValueError: unknown strategy, or what the strategy itself raises.
    """
    try:
        fn = AGGREGATORS[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})") \
            from None
    return fn(theta, replies, epsilon)


def epsilon_at(schedule: str, round_index: int, total_rounds: int,
               eps0: float = 1.0, eps_end: float = 0.0) -> float:
    """The outer step size ε for 0-based round `round_index` of `total_rounds`.

    constant: eps0.  linear: eps0 → eps_end, eps0 at round 0 and one step short of eps_end
    at the last round (Nichol et al.: ε·(1 − i/n)), so the last round still moves θ.
    cosine: eps_end + (eps0 − eps_end)·(1 + cos(π·i/n))/2.

    Raises:
        ValueError: unknown schedule, total_rounds < 1, or round_index out of range.
    """
    if total_rounds < 1:
        raise ValueError("total_rounds must be >= 1")
    if not 0 <= round_index < total_rounds:
        raise ValueError(f"round_index {round_index} outside 0..{total_rounds - 1}")
    frac = round_index / total_rounds
    if schedule == "constant":
        return float(eps0)
    if schedule == "linear":
        return float(eps0 + (eps_end - eps0) * frac)
    if schedule == "cosine":
        return float(eps_end + (eps0 - eps_end) * (1.0 + math.cos(math.pi * frac)) / 2.0)
    raise ValueError(f"unknown epsilon schedule {schedule!r} (choose {', '.join(SCHEDULES)})")


def select_devices(strategy: str, online: Sequence[str], k: int, round_no: int,
                   seed: int = 0) -> list[str]:
    """Choose this round's devices from those online (sorted result).

    tinyreptile: exactly one, round-robin over the sorted online ids (serial, fair).
    Others: a uniform sample of min(k, len(online)), reproducible from (seed, round_no) so
    a resumed coordinator picks as an uninterrupted one would. k <= 0 means all online.

    Raises:
        ValueError: unknown strategy.
    """
    if strategy not in AGGREGATORS:
        raise ValueError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
    ids = sorted(set(online))
    if not ids:
        return []
    if strategy == "tinyreptile":
        return [ids[round_no % len(ids)]]
    if k <= 0 or k >= len(ids):
        return ids
    rng = random.Random(seed * 1_000_003 + round_no)
    return sorted(rng.sample(ids, k))
