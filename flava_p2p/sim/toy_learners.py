"""Toy learner families for protocol-scale runs: ``synthetic`` (softmax regression on Gaussian
blobs, DP-SGD in numpy with the real recipe and accountant) and ``none`` (a model that never
changes: the run measures the protocol alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from flava_p2p.attacks import flip_labels
from flava_p2p.sim.learners import OneByOne, label_flippers, node_privacy
from flava_p2p.sim.scenario import Scenario
from flava_p2p.wire.messages import DpInfo

if TYPE_CHECKING:
    from flava_p2p.learning.ledger import PrivacyLedger

Vec = npt.NDArray[np.float32]


class SyntheticLearners(OneByOne):
    """Softmax regression on Gaussian blobs, DP-SGD in numpy; thousands of nodes per second."""

    def __init__(self, sc: Scenario, seed: int) -> None:
        ls = sc.learner
        rng = np.random.default_rng(seed)
        d, c, n = ls.synthetic_dim, ls.synthetic_classes, ls.synthetic_samples
        self.d, self.n_classes = d, c
        self.means = rng.normal(size=(c, d)).astype(np.float32) * 0.6
        flippers = label_flippers(sc)
        self.data: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        for i in range(sc.nodes):
            if sc.data.partition == "dirichlet":
                y = rng.choice(c, size=n, p=rng.dirichlet([sc.data.alpha] * c))
            else:
                y = rng.integers(0, c, size=n)
            x = self._features(y, rng)
            if i in flippers:
                y = flip_labels(y, c)
            self.data.append((x, y.astype(np.int64)))
        ty = rng.integers(0, c, size=sc.metrics.eval_examples or 1000)
        self.test_x, self.test_y = self._features(ty, rng), ty
        self.genesis = np.zeros((d + 1) * c, dtype=np.float32)
        self.schema = b"synthetic-softmax".ljust(32, b"\0")
        tr = ls.training
        self.steps, self.lr = tr.local_steps, tr.lr
        self.batch = min(tr.batch_size, n)
        self.clip = sc.privacy.max_grad_norm
        self._rngs = [np.random.default_rng([seed, i]) for i in range(sc.nodes)]
        self._taken = [0] * sc.nodes
        self.ledger: PrivacyLedger | None = None
        if sc.privacy.epsilon is not None:
            # Here, not at the top: the accountant imports Opacus and so torch, which a run
            # without DP never needs.
            from flava_p2p.learning.ledger import PrivacyLedger

            self.ledger = PrivacyLedger.plan(node_privacy(sc), self.batch / n)
        self._eps_cache: dict[int, float] = {}

    def _features(self, y: npt.NDArray[np.int64], rng: np.random.Generator) -> Vec:
        x = self.means[y] + rng.normal(size=(len(y), self.d)).astype(np.float32)
        return np.hstack([x, np.ones((len(y), 1), np.float32)])  # bias column

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Local DP-SGD steps (clip each example's gradient, add N(0, σ²C²), SGD)."""
        x, y = self.data[i]
        rng = self._rngs[i]
        w = model.reshape(self.d + 1, self.n_classes).astype(np.float64)
        steps = self.steps
        if self.ledger is not None:
            steps = min(steps, max(0, self.ledger.planned_steps - self._taken[i]))
        for _ in range(steps):
            if self.ledger is not None:  # Poisson sampling
                pick = np.flatnonzero(rng.random(len(y)) < self.batch / len(y))
            else:
                pick = rng.choice(len(y), self.batch, replace=False)
            xb, yb = x[pick], y[pick]
            logits = xb @ w
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1.0  # p − onehot(y)
            if self.ledger is not None:
                # ‖x pᵀ‖_F = ‖x‖·‖p‖ for a per-example outer product.
                norms = np.linalg.norm(xb, axis=1) * np.linalg.norm(p, axis=1)
                p *= np.minimum(1.0, self.clip / np.maximum(norms, 1e-12))[:, None]
                grad = xb.T @ p
                grad += rng.normal(size=grad.shape) * self.ledger.noise_multiplier * self.clip
                grad /= self.batch
            else:
                grad = xb.T @ p / max(len(yb), 1)
            w -= self.lr * grad
        self._taken[i] += steps
        return w.astype(np.float32).reshape(-1), len(y), DpInfo(self.epsilon(i), self._delta())

    def _delta(self) -> float | None:
        return self.ledger.delta if self.ledger else None

    def epsilon(self, i: int) -> float | None:
        """ε after this node's steps so far (every node shares σ and q, so ε is a function of
        the step count; computed once per count)."""
        if self.ledger is None:
            return None
        k = self._taken[i]
        if k not in self._eps_cache:
            self._eps_cache[k] = self.ledger.epsilon_after(k) if k else 0.0
        return self._eps_cache[k]

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Accuracy of each model on the shared held-out blobs."""
        if not models:
            return {}
        keys = sorted(models)
        w = np.stack([models[k] for k in keys]).reshape(len(keys), self.d + 1, self.n_classes)
        pred = np.einsum("nd,kdc->knc", self.test_x, w).argmax(2)
        acc = (pred == self.test_y[None, :]).mean(1)
        return {k: float(a) for k, a in zip(keys, acc, strict=True)}


class StaticLearners(OneByOne):
    """No learning: the model never changes (protocol-only runs measure the protocol)."""

    n_classes = 0

    def __init__(self, sc: Scenario, seed: int) -> None:
        self.genesis = np.zeros(64, dtype=np.float32)
        self.schema = b"protocol-only".ljust(32, b"\0")

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Return the model unchanged."""
        return model, 1, DpInfo(None, None)

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Nothing to evaluate."""
        return {}

    def epsilon(self, i: int) -> float | None:
        """Not private: no data is touched."""
        return None
