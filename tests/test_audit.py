"""The privacy audit: the attack statistics on known score distributions, and the audit in a
real simulation report (real DP learner, real clips)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flava_p2p.learning.audit import attack_figures
from flava_p2p.sim.runner import run_scenario
from flava_p2p.testing.scenarios import small_scenario


class TestAttackFigures:
    def test_no_signal_is_auc_half_and_no_epsilon(self) -> None:
        rng = np.random.default_rng(0)
        r = attack_figures(rng.normal(size=4000), rng.normal(size=4000), delta=1e-5)
        assert abs(r.auc - 0.5) < 0.03
        assert r.tpr_at_1pct_fpr < 0.03
        assert r.epsilon_lower_bound < 0.2

    def test_separated_scores_are_caught(self) -> None:
        """Members score higher: AUC near 1, most members found at 1% FPR, and a positive ε
        bound that grows with the number of trials (more evidence, tighter intervals)."""
        rng = np.random.default_rng(1)
        small = attack_figures(rng.normal(3, 1, 200), rng.normal(0, 1, 200), delta=1e-5)
        big = attack_figures(rng.normal(3, 1, 4000), rng.normal(0, 1, 4000), delta=1e-5)
        assert small.auc > 0.97 and big.auc > 0.97
        assert big.tpr_at_1pct_fpr > 0.6
        assert 1.0 < small.epsilon_lower_bound < big.epsilon_lower_bound

    def test_ties_share_ranks(self) -> None:
        r = attack_figures(np.zeros(50), np.zeros(50), delta=1e-5)
        assert r.auc == pytest.approx(0.5)
        assert r.epsilon_lower_bound == 0.0

    def test_bound_is_rounded_down(self) -> None:
        rng = np.random.default_rng(2)
        r = attack_figures(rng.normal(2, 1, 500), rng.normal(0, 1, 500), delta=1e-5)
        assert r.as_dict()["epsilon_lower_bound"] <= r.epsilon_lower_bound


def test_simulation_report_carries_the_audit(tiny_corpus: Path, tmp_path: Path) -> None:
    """With audit.holdout_fraction, every report has membership-inference figures on the
    honest nodes' final models; without it, none (and training uses every clip)."""
    common = {
        "nodes": 3,
        "rounds": 3,
        "learner": {"kind": "real", "threads": 1},
        "data": {"corpus": str(tiny_corpus), "partition": "iid", "cache_dir": None},
    }
    audit = {"holdout_fraction": 0.4, "canaries": 6}
    audited = run_scenario(small_scenario(**common, audit=audit), tmp_path / "a", seed=1)
    plain = run_scenario(small_scenario(**common), tmp_path / "b", seed=1)
    report = audited["privacy_audit"]
    assert report["nodes"] == 3 and "example-level" in report["unit"]
    for attack in ("loss_threshold", "calibrated", "canaries"):
        fig = report[attack]
        assert fig["members"] > 0 and fig["non_members"] > 0
        assert 0.0 <= fig["auc"] <= 1.0 and fig["epsilon_lower_bound"] >= 0.0
    assert "privacy_audit" not in plain
    assert audited["clips_per_node"]["median"] < plain["clips_per_node"]["median"]
