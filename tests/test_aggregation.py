"""Aggregation rules: shared contract, robustness against outliers, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flava_p2p.aggregation import AGGREGATORS, AggParams, aggregate, staleness_weights

RULES = sorted(AGGREGATORS)
ROBUST = ["trimmed_mean", "median", "krum", "multi_krum", "geometric_median", "clipped"]


def honest_and_attacker(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    center = rng.normal(size=50).astype(np.float32)
    honest = center + 0.1 * rng.normal(size=(7, 50)).astype(np.float32)
    attacker = center + 1000.0
    return honest, np.vstack([honest[1:], attacker[None, :]])


class TestContract:
    @pytest.mark.parametrize("rule", RULES)
    def test_nothing_received_keeps_own(self, rule: str) -> None:
        """With no peers, every rule returns the node's own model."""
        own = np.arange(5, dtype=np.float32)
        assert np.array_equal(aggregate(rule, own, np.zeros((0, 5))), own)

    @pytest.mark.parametrize("rule", RULES)
    def test_consensus_is_a_fixed_point(self, rule: str) -> None:
        """If everyone agrees, nobody moves."""
        own = np.linspace(-1, 1, 9).astype(np.float32)
        out = aggregate(rule, own, np.tile(own, (4, 1)))
        assert np.allclose(out, own, atol=1e-5)

    @settings(max_examples=40, deadline=None)
    @given(
        data=hnp.arrays(
            np.float32,
            st.tuples(st.integers(2, 8), st.integers(1, 20)),
            elements=st.floats(-100, 100, width=32),
        ),
        rule=st.sampled_from(RULES),
        seed=st.integers(0, 100),
    )
    def test_finite_and_permutation_invariant(self, data: np.ndarray, rule: str, seed: int) -> None:
        """Output is finite, of the right shape, and independent of the peers' order."""
        own, received = data[0], data[1:]
        perm = np.random.default_rng(seed).permutation(len(received))
        a = aggregate(rule, own, received)
        b = aggregate(rule, own, received[perm])
        assert a.shape == own.shape and np.isfinite(a).all()
        assert np.allclose(a, b, atol=1e-3, rtol=1e-4)

    def test_bad_weights_and_unknown_rule(self) -> None:
        """Negative/NaN weights and unknown names are errors, not silent garbage."""
        with pytest.raises(ValueError):
            aggregate("mean", np.zeros(3), np.zeros((2, 3)), [1.0, -1.0])
        with pytest.raises(ValueError):
            aggregate("mean", np.zeros(3), np.zeros((2, 3)), [1.0, np.nan])
        with pytest.raises(KeyError, match="choose from"):
            aggregate("average", np.zeros(3), np.zeros((1, 3)))


class TestRobustness:
    def test_mean_is_dragged_by_one_attacker(self) -> None:
        """Plain mean moves by ~1000/8 per coordinate with one huge outlier among 8."""
        honest, received = honest_and_attacker()
        out = aggregate("mean", honest[0], received)
        assert np.abs(out - honest.mean(axis=0)).max() > 50

    @pytest.mark.parametrize("rule", ROBUST)
    def test_robust_rules_stay_near_honest(self, rule: str) -> None:
        """Robust rules stay within the honest spread despite the outlier."""
        honest, received = honest_and_attacker()
        out = aggregate(rule, honest[0], received, params=AggParams(byzantine=1))
        assert np.linalg.norm(out - honest.mean(axis=0)) < 2.0

    def test_clipping_bounds_each_neighbours_pull(self) -> None:
        """With fixed τ, one neighbour can move the node by at most τ·w/(w+self)."""
        own = np.zeros(10, np.float32)
        far = np.full((1, 10), 1e6, np.float32)
        out = aggregate("clipped", own, far, params=AggParams(clip_tau=1.0))
        assert np.linalg.norm(out) <= 0.5 + 1e-6

    def test_krum_picks_an_actual_input(self) -> None:
        """Krum returns one of the honest inputs, never the attacker."""
        honest, received = honest_and_attacker()
        out = aggregate("krum", honest[0], received)
        assert any(np.array_equal(out, h) for h in honest)


def test_staleness_halves_per_half_life() -> None:
    """A delta half_life rounds old weighs half as much."""
    w = staleness_weights([100, 100, 100], [0, 4, 8], half_life=4)
    assert np.allclose(w, [100, 50, 25])
