"""The batched learner equals the per-node LocalTrainer path (same seeds → same weights and ε)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flava_p2p.config import validate_config
from flava_p2p.sim.real_learners import RealLearners
from flava_p2p.sim.scenario import Scenario
from flava_p2p.sim.vector_learners import VectorLearners, vectorisable


def _scenario(corpus: Path, **over: Any) -> Scenario:
    base: dict[str, Any] = {
        "name": "v",
        "nodes": 4,
        "rounds": 6,
        "data": {"corpus": str(corpus), "partition": "iid", "cache_dir": None},
        "learner": {
            "kind": "real",
            "threads": 1,
            "training": {"batch_size": 8, "lr": 0.5, "momentum": 0.9, "local_steps": 3},
        },
        "privacy": {"epsilon": 4.0, "planned_steps": 12},
        "metrics": {"plots": False},
    }
    base.update(over)
    return validate_config(base, Scenario, "test")


def test_batched_steps_equal_per_node_trainers(tiny_corpus: Path) -> None:
    """Five rounds of bursts (not every node in each), fed the same merged models: weights
    within float rounding and ε identical after every burst; once a node's 12 planned steps
    are spent, both paths return its model unchanged."""
    sc = _scenario(tiny_corpus)
    assert vectorisable(sc)
    ref, vec = RealLearners(sc, seed=3), VectorLearners(sc, seed=3)
    assert len(ref.trainers) == 4 and len(vec.trainers) == 1  # only node 0's, for the schema
    rng = np.random.default_rng(0)
    models = {i: ref.genesis.copy() for i in range(4)}
    for burst in range(5):
        jobs = [(i, models[i]) for i in range(4) if (burst + i) % 3 != 2]  # uneven batches
        a, b = ref.train_many(jobs), vec.train_many(jobs)
        moved = 0
        for i, start in jobs:
            np.testing.assert_allclose(a[i][0], b[i][0], rtol=1e-5, atol=1e-6)
            moved += not np.allclose(a[i][0], start)
            assert a[i][1] == b[i][1]
            assert a[i][2].example_epsilon == b[i][2].example_epsilon
            # gossip stand-in: the next burst starts from a perturbed (merged) model
            models[i] = a[i][0] + rng.normal(0, 0.01, a[i][0].shape).astype(np.float32)
        if burst < 3:
            assert moved >= 1
    spent = [i for i in range(4) if ref.trainers[i].budget_state == "budget_exhausted"]
    assert spent  # some node's clips have all retired: both paths return its model as it was
    i = spent[0]
    a, b = ref.train_many([(i, models[i])]), vec.train_many([(i, models[i])])
    np.testing.assert_array_equal(a[i][0], models[i])
    np.testing.assert_array_equal(b[i][0], models[i])
    assert ref.epsilon(i) == pytest.approx(4.0, abs=0.05)
    assert [ref.epsilon(i) for i in range(4)] == [vec.epsilon(i) for i in range(4)]


def test_other_models_stay_per_node(tiny_corpus: Path) -> None:
    assert not vectorisable(_scenario(tiny_corpus, privacy={"epsilon": None}))
    mlp = _scenario(tiny_corpus)
    mlp = mlp.model_copy(update={"learner": mlp.learner.model_copy(update={"model": "embed_mlp"})})
    assert not vectorisable(mlp)


def test_simulation_uses_the_batched_learner_and_learns(tiny_corpus: Path, tmp_path: Path) -> None:
    """A DP embed_linear scenario picks the batched learner by itself; its run is seeded
    (byte-identical twice) and close to the per-node run's accuracy."""
    from flava_p2p.sim.learners import make_learners
    from flava_p2p.sim.runner import run_scenario

    sc = _scenario(tiny_corpus, rounds=4)
    assert isinstance(make_learners(sc, 0), VectorLearners)
    run_scenario(sc, tmp_path / "a")
    run_scenario(sc, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_bytes()
    per_node = sc.model_copy(update={"learner": sc.learner.model_copy(update={"batched": False})})
    assert not isinstance(make_learners(per_node, 0), VectorLearners)
    s_vec = run_scenario(sc, tmp_path / "c")
    s_ref = run_scenario(per_node, tmp_path / "d")
    assert abs(s_vec["final"]["honest_mean_acc"] - s_ref["final"]["honest_mean_acc"]) < 0.02
