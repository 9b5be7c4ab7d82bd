"""What a simulated node does on ``TrainRequest``: the learner families, behind one interface.

``real`` (``sim/real_learners.py``): each node's own :class:`LocalTrainer` — the object a real
node trains with — over cached features, optionally in worker processes
(``sim/worker_pool.py``). ``synthetic`` and ``none`` (``sim/toy_learners.py``): softmax
regression on Gaussian blobs with the same DP-SGD recipe, for protocol-scale runs, and a model
that never changes, for protocol-only runs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from flava_p2p.attacks import parse_attack
from flava_p2p.config import PrivacyConfig
from flava_p2p.sim.scenario import Scenario
from flava_p2p.wire.messages import DpInfo

Vec = npt.NDArray[np.float32]


class Learners(Protocol):
    """One learner per node, behind one interface."""

    genesis: Vec
    schema: bytes
    n_classes: int

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Train node ``i`` from ``model``; returns (model, sample count, guarantees)."""
        ...

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Held-out accuracy of each given model (empty when the learner has no task)."""
        ...

    def epsilon(self, i: int) -> float | None:
        """Example-level ε node ``i`` has spent (None: not private)."""
        ...

    def train_many(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Several nodes' bursts at once."""
        ...

    def close(self) -> None:
        """Release worker processes, if any."""
        ...


class OneByOne:
    """``train_many`` as a loop over ``train``, for learners that are cheap per node."""

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        raise NotImplementedError

    def train_many(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Run the bursts one after the other."""
        return {i: self.train(i, model) for i, model in jobs}

    def close(self) -> None:
        """Nothing to release."""


def node_privacy(sc: Scenario) -> PrivacyConfig:
    """Every simulated node's privacy settings: exactly the scenario's (one schema with the
    node's; ``planned_steps`` defaults to rounds × local_steps, resolved by the scenario)."""
    return sc.privacy


def planned_steps(sc: Scenario) -> int:
    """DP steps a node plans for."""
    return sc.privacy.planned_steps


def label_flippers(sc: Scenario) -> set[int]:
    """Byzantine nodes whose attack is ``label_flip`` (they train on flipped labels)."""
    if not sc.byzantine_nodes() or parse_attack(sc.byzantine.attack).name != "label_flip":
        return set()
    return set(sc.byzantine_nodes())


# ----------------------------------------------------------------------------- real
def make_learners(sc: Scenario, seed: int, owned: set[int] | None = None) -> Learners:
    """The learner family the scenario asks for. ``owned``: the nodes this process simulates
    in a partitioned run; the real learners then build only those nodes' data and state
    (each process of a 10,000-node run built all of them: ~0.1 GB for nothing)."""
    own = sorted(owned) if owned is not None else None
    # Imported per kind: the real learners pull in torch (~1 s and ~0.5 GB), which a
    # protocol-only or synthetic run never uses.
    from flava_p2p.sim.toy_learners import StaticLearners, SyntheticLearners

    if sc.learner.kind == "real":
        from flava_p2p.sim.real_learners import RealLearners
        from flava_p2p.sim.vector_learners import VectorLearners, vectorisable

        batched = sc.learner.batched
        if batched and not vectorisable(sc):
            raise ValueError(
                "learner.batched: the batched learner covers DP-SGD of embed_linear with mean or "
                "meanmax pooling on fixed data; set batched: null or false for this scenario"
            )
        if batched or (batched is None and vectorisable(sc)):
            return VectorLearners(sc, seed, own)
        return RealLearners(sc, seed, own)
    if sc.learner.kind == "synthetic":
        return SyntheticLearners(sc, seed)
    return StaticLearners(sc, seed)


def _worker_main(*args: object) -> None:  # pragma: no cover - old pickled references
    """Kept for worker processes started by a sweep that began before the split."""
    from flava_p2p.sim.worker_pool import _worker_main as main

    main(*args)  # type: ignore[arg-type]
