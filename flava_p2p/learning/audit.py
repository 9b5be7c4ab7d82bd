"""Privacy audit: what a membership-inference attacker learns from a node's published model.

The attacker holds a node's model (what the node gossips) and a clip, and guesses whether the
clip was in that node's training set. The audit runs two attacks on every audited node, with
the node's own training clips as *members* and clips of the same speakers that the node never
trained on as *non-members* (``audit.holdout_fraction`` of each node's clips, set aside at
random, so membership is a fair coin per clip as in a DP audit):

* **loss threshold** (Yeom et al. 2018): score = −loss of the clip under the node's model;
* **calibrated** (difficulty calibration, Watson et al. 2022): score = loss under a reference
  model the attacker trained on public data (here: the held-out test speakers' clips, which no
  node trains on) − loss under the node's model, so clips that are merely easy do not look
  like members.

Reported per attack: AUC (0.5 = guessing), TPR at 1% FPR, and an empirical lower bound on ε:
``ε ≥ ln((TPR − δ) / FPR)`` with TPR and FPR replaced by their one-sided 95% Clopper–Pearson
bounds (the lower for TPR, the upper for FPR), at a threshold chosen on one random half of the
scores and evaluated on the other half (choosing it on the same scores would overstate it).
A DP guarantee at (ε, δ) makes any such bound ≤ ε (up to the 5% chance the intervals miss);
a bound near 0 says the attack found nothing, not that the model is private.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import beta
from torch import nn

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AttackResult:
    """One attack's figures over all audited nodes (scores pooled)."""

    auc: float
    tpr_at_1pct_fpr: float
    epsilon_lower_bound: float
    members: int
    non_members: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready, rounded (ε lower bound rounded *down*: it is a lower bound)."""
        return {
            "auc": round(self.auc, 4),
            "tpr_at_1pct_fpr": round(self.tpr_at_1pct_fpr, 4),
            "epsilon_lower_bound": float(np.floor(self.epsilon_lower_bound * 1000) / 1000),
            "members": self.members,
            "non_members": self.non_members,
        }


@torch.no_grad()
def per_example_loss(
    model: nn.Module, weights: npt.NDArray[np.float32], x: torch.Tensor, y: torch.Tensor
) -> F64:
    """Cross-entropy of every example under ``weights`` loaded into ``model`` (a spare copy)."""
    torch.nn.utils.vector_to_parameters(
        torch.as_tensor(np.asarray(weights, dtype=np.float32)), model.parameters()
    )
    model.train(False)
    out = [
        nn.functional.cross_entropy(model(x[i : i + 256]), y[i : i + 256], reduction="none")
        for i in range(0, len(y), 256)
    ]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def attack_figures(members: F64, non_members: F64, delta: float) -> AttackResult:
    """AUC, TPR@1%FPR and the ε lower bound of scores where higher means "member"."""
    m, n = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if len(m) == 0 or len(n) == 0:
        return AttackResult(float("nan"), float("nan"), 0.0, len(m), len(n))
    ranks = _ranks(np.concatenate([m, n]))
    auc = (ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2) / (len(m) * len(n))
    thresholds = np.unique(np.concatenate([m, n]))
    tpr = (m[None, :] >= thresholds[:, None]).mean(1)
    fpr = (n[None, :] >= thresholds[:, None]).mean(1)
    ok = fpr <= 0.01
    tpr_1 = float(tpr[ok].max()) if ok.any() else 0.0
    return AttackResult(float(auc), tpr_1, _held_out_bound(m, n, delta), len(m), len(n))


def _held_out_bound(m: F64, n: F64, delta: float) -> float:
    """The ε lower bound with the threshold chosen on one random half of the scores and the
    Clopper–Pearson bounds taken on the other half: maximising the bound over thresholds on
    the same data would overstate it (the intervals hold per threshold, not for the best)."""
    rng = np.random.default_rng(0xA0D1)
    m, n = rng.permutation(m), rng.permutation(n)
    m_pick, m_test = m[: len(m) // 2], m[len(m) // 2 :]
    n_pick, n_test = n[: len(n) // 2], n[len(n) // 2 :]
    if min(len(m_pick), len(m_test), len(n_pick), len(n_test)) == 0:
        return 0.0
    thresholds = np.unique(np.concatenate([m_pick, n_pick]))
    tpr = (m_pick[None, :] >= thresholds[:, None]).mean(1)
    fpr = (n_pick[None, :] >= thresholds[:, None]).mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Point estimate with a +1 smoothing so an empty FPR does not win by default.
        score = np.log((tpr * len(m_pick) + 1) / (fpr * len(n_pick) + 1))
    t = thresholds[int(np.argmax(score))]
    tpr_t = np.array([(m_test >= t).mean()])
    fpr_t = np.array([(n_test >= t).mean()])
    return _eps_bound(tpr_t, fpr_t, len(m_test), len(n_test), delta)


def _ranks(v: F64) -> F64:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), np.float64)
    ranks[order] = np.arange(1, len(v) + 1)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _eps_bound(tpr: F64, fpr: F64, n_in: int, n_out: int, delta: float) -> float:
    """max over thresholds of ln((TPR_lo − δ) / FPR_hi), 95% one-sided Clopper–Pearson."""
    k_in, k_out = np.round(tpr * n_in), np.round(fpr * n_out)
    tpr_lo = np.where(k_in > 0, beta.ppf(0.05, k_in, n_in - k_in + 1), 0.0)
    fpr_hi = np.where(k_out < n_out, beta.ppf(0.95, k_out + 1, n_out - k_out), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (tpr_lo - delta) / fpr_hi
    ratio = ratio[np.isfinite(ratio) & (ratio > 1.0)]
    return float(np.log(ratio).max()) if ratio.size else 0.0
