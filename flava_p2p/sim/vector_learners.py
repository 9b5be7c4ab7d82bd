"""Many nodes' DP-SGD steps as one batched tensor program (linear heads over pooled embeddings).

For softmax regression the per-example gradient is an outer product (``learning/linear_dp.py``),
so a step of N nodes is a handful of batched matrix products over their stacked weights. Each
node keeps exactly what its own :class:`LocalTrainer` would: its Poisson sampling stream, its
noise stream (the same seeds), its σ, q and gradient divisor, its momentum buffer, its cosine
schedule and its privacy ledger. For the same seeds the weights agree with the per-node path to
float rounding and ε is the same number (``tests/test_vector_learners.py``). Only the arithmetic
is batched; the random draws stay per node, in the per-node order, so that equality holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from flava_p2p.learning.ledger import PrivacyLedger
from flava_p2p.learning.models import EmbeddingHead
from flava_p2p.learning.trainer import distinct_clip_rows, sampling_plan
from flava_p2p.sim.real_learners import RealLearners
from flava_p2p.sim.scenario import Scenario
from flava_p2p.speech.dataset import FeatureSet
from flava_p2p.wire.messages import DpInfo

Vec = npt.NDArray[np.float32]


@dataclass
class _Node:
    x: torch.Tensor  # (n, D) pooled, L2-normalised clip vectors
    y: torch.Tensor  # (n,)
    in_norms: torch.Tensor  # (n,) sqrt(‖x‖² + 1)
    data_gen: torch.Generator
    noise_gen: torch.Generator
    ledger: PrivacyLedger | None
    q: float
    expected: float
    buf_w: torch.Tensor | None = None
    buf_b: torch.Tensor | None = None


def vectorisable(sc: Scenario) -> bool:
    """Whether the scenario's model allows the batched path: DP-SGD of a linear head with
    fixed pooling over the frozen encoder, on fixed data (no arrivals). (Non-private training
    draws shuffled epochs per node and stays on the per-node path.)"""
    return (
        sc.learner.kind == "real"
        and sc.privacy.enabled
        and sc.learner.model == "embed_linear"
        and sc.learner.pooling != "attention"
        and sc.data.arrival is None
        and sc.learner.training.augment_multiplicity == 1
    )


class VectorLearners(RealLearners):
    """The ``real`` learner, every node's burst in one batched computation."""

    per_node_trainers = False

    def __init__(self, sc: Scenario, seed: int, own: list[int] | None = None) -> None:
        super().__init__(sc, seed, own)
        tr = sc.learner.training
        self._lr, self._momentum = tr.lr, tr.momentum
        self._cosine = tr.lr_schedule == "cosine"
        emb_dim = int(next(iter(self._local.values())).features.shape[2])
        self._head = EmbeddingHead(self.n_classes, emb_dim, self._model_cfg.pooling)
        self._dim = 2 * emb_dim if self._model_cfg.pooling == "meanmax" else emb_dim
        plans: dict[float, PrivacyLedger] = {}
        self._nodes: dict[int, _Node] = {}
        for i, local in sorted(self._local.items()):
            self._nodes[i] = self._node_state(i, local, tr.batch_size, plans)

    def _node_state(
        self, i: int, local: FeatureSet, batch_size: int, plans: dict[float, PrivacyLedger]
    ) -> _Node:
        x, y = local.features, local.labels
        keep = distinct_clip_rows(local.digests)  # as LocalTrainer counts clips
        if keep is not None:
            x, y = x[keep], y[keep]
        with torch.no_grad():
            pooled = self._head.pool(x)
        q, expected = sampling_plan(len(y), batch_size, self._privacy)
        ledger = None
        if self._privacy.enabled:
            if q not in plans:  # σ depends only on q here: plan once per distinct q
                plans[q] = PrivacyLedger.plan(self._privacy, q, expected)
            base = plans[q]
            ledger = PrivacyLedger(
                base.accountant,
                base.delta,
                base.target_epsilon,
                base.noise_multiplier,
                q,
                base.planned_steps,
                expected_batch=expected,
            )
        seed = self._seed * 100_003 + i
        return _Node(
            pooled,
            y,
            (pooled.pow(2).sum(1) + 1.0).sqrt(),
            torch.Generator().manual_seed(seed + 2),
            torch.Generator().manual_seed(seed),
            ledger,
            q,
            expected,
        )

    # ------------------------------------------------------------------ training
    def train_many(
        self, jobs: list[tuple[int, Vec]], now: float | None = None
    ) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Every job's burst, batched over the nodes, step by step."""
        if not jobs:
            return {}
        ids = [i for i, _ in jobs]
        c, d = self.n_classes, self._dim
        flat = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for _, m in jobs]))
        w = flat[:, : c * d].reshape(len(ids), c, d).clone()
        bias = flat[:, c * d :].clone()
        plan = [self._plan_burst(self._nodes[i]) for i in ids]
        k_max = max((k for k, _, _ in plan), default=0)
        for j in range(k_max):
            live = [t for t, (k, _, _) in enumerate(plan) if j < k]
            self._step(ids, live, j, plan, w, bias)
        out: dict[int, tuple[Vec, int, DpInfo]] = {}
        for t, i in enumerate(ids):
            node = self._nodes[i]
            vec = torch.cat([w[t].reshape(-1), bias[t]]).numpy().copy()
            eps = node.ledger.epsilon if node.ledger else None
            delta = node.ledger.delta if node.ledger else None
            out[i] = (vec, len(node.y), DpInfo(eps, delta))
            self._eps[i] = eps
        return out

    def _plan_burst(self, node: _Node) -> tuple[int, float, torch.Tensor | None]:
        """Steps to take, the schedule position of the first, and the burst's Poisson masks:
        the same calls, in the same order, as LocalTrainer.train makes."""
        k = self._steps
        if node.ledger is None:
            return k, 0.0, None
        k = node.ledger.allowed_steps(k)
        if k == 0:
            return 0, 0.0, None
        first = float(node.ledger.steps)
        node.ledger.charge(k)
        masks = torch.rand(k, len(node.y), generator=node.data_gen) < node.q
        return k, first, masks

    @torch.no_grad()
    def _step(
        self,
        ids: list[int],
        live: list[int],
        j: int,
        plan: list[tuple[int, float, torch.Tensor | None]],
        w: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        """Step ``j`` of every live node's burst. Each node's arithmetic runs on tensors shaped
        by its own batch only: padding nodes to a shared batch width would let the other
        nodes in the batch change a node's float rounding, and so make the result depend on
        how nodes are grouped (one process or several)."""
        c, d = self.n_classes, self._dim
        clip = self._privacy.max_grad_norm
        for t in live:
            node = self._nodes[ids[t]]
            masks = plan[t][2]
            assert masks is not None and node.ledger is not None  # DP only (see vectorisable)
            rows = masks[j].nonzero().view(-1)
            xb, yb, nb = node.x[rows], node.y[rows], node.in_norms[rows]
            z = torch.addmm(bias[t], xb, w[t].T)
            z = (z - z.amax(1, keepdim=True)).clamp_(min=-80.0)
            r = z.exp()
            r.div_(r.sum(1, keepdim=True))
            r[torch.arange(len(rows)), yb] -= 1.0
            # ‖∂loss/∂(W, b)‖ of softmax regression = ‖p − y‖·‖(x, 1)‖: no per-example grads.
            norms = torch.linalg.vector_norm(r, dim=1) * nb
            r.mul_((clip / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
            gw = r.T @ xb
            gb = r.sum(0)
            # Noise per parameter, weight first, from the node's own generator (as Opacus).
            std = node.ledger.noise_multiplier * clip
            nw = torch.normal(0.0, std, size=(c, d), generator=node.noise_gen)
            nbias = torch.normal(0.0, std, size=(c,), generator=node.noise_gen)
            gw_a = nw.add_(gw).div_(node.expected)
            gb_a = nbias.add_(gb).div_(node.expected)
            lr = self._lr_at(node, plan[t][1] + j)
            if node.buf_w is None or node.buf_b is None:
                node.buf_w, node.buf_b = gw_a.clone(), gb_a.clone()
            else:
                node.buf_w.mul_(self._momentum).add_(gw_a)
                node.buf_b.mul_(self._momentum).add_(gb_a)
            w[t].add_(node.buf_w, alpha=-lr)
            bias[t].add_(node.buf_b, alpha=-lr)

    def _lr_at(self, node: _Node, step: float) -> float:
        if node.ledger is None or not self._cosine:
            return self._lr
        frac = min(1.0, step / max(1, node.ledger.planned_steps))
        return self._lr * 0.5 * (1 + math.cos(math.pi * frac))

    def epsilon(self, i: int) -> float | None:
        """ε of node ``i``'s ledger (example-level)."""
        led = self._nodes[i].ledger
        return None if led is None else led.epsilon
