"""The privacy ledger: example-level (ε, δ) spent by one node, from Opacus's accountants.

The ledger, not the optimizer hook, is the source of truth: steps are *charged before they are
taken* (and persisted with the model), so a crash between charging and saving can only make the
recorded ε larger than what was spent, never smaller. ε never goes backwards.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from flava_p2p.config import PrivacyConfig
from flava_p2p.errors import FlavaError

BudgetState = Literal["disabled", "training", "budget_exhausted"]


class LedgerError(FlavaError):
    """A stored ledger is inconsistent; the node refuses to guess its privacy spend."""


@dataclass
class PrivacyLedger:
    """Example-level DP accounting for one node's lifetime (one PrivacyEngine, one σ)."""

    accountant: str
    delta: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    steps: int = 0
    history: list[tuple[float, float, int]] = field(default_factory=list)
    epsilon: float = 0.0

    @classmethod
    def plan(cls, cfg: PrivacyConfig, sample_rate: float) -> PrivacyLedger:
        """Choose σ once: ``cfg.planned_steps`` steps at ``sample_rate`` spend the target ε."""
        sigma = get_noise_multiplier(
            target_epsilon=cfg.target_epsilon,
            target_delta=cfg.delta,
            sample_rate=sample_rate,
            steps=cfg.planned_steps,
            accountant=cfg.accountant,
        )
        return cls(
            cfg.accountant,
            cfg.delta,
            cfg.target_epsilon,
            float(sigma),
            sample_rate,
            cfg.planned_steps,
        )

    def epsilon_after(self, extra_steps: int = 0) -> float:
        """ε(δ) if ``extra_steps`` more steps were charged (0: the current ε)."""
        hist = list(self.history)
        if extra_steps:
            hist.append((self.noise_multiplier, self.sample_rate, extra_steps))
        if not hist:
            return 0.0
        return _epsilon(self.accountant, tuple(_merge(hist)), self.delta)

    def allowed_steps(self, wanted: int) -> int:
        """How many of ``wanted`` steps fit in the budget (never past the planned lifetime)."""
        room = max(0, self.planned_steps - self.steps)
        k = min(wanted, room)
        # Guard against a changed accountant/σ: never step to an ε above the target.
        while k > 0 and self.epsilon_after(k) > self.target_epsilon * (1 + 1e-9) + 0.02:
            k //= 2
        return k

    def charge(self, steps: int) -> None:
        """Record ``steps`` DP-SGD steps as spent (call *before* taking them)."""
        if steps <= 0:
            return
        self.history.append((self.noise_multiplier, self.sample_rate, steps))
        self.history = _merge(self.history)
        self.steps += steps
        self.epsilon = self.epsilon_after()

    @property
    def state(self) -> BudgetState:
        """``budget_exhausted`` once no further step fits."""
        return "budget_exhausted" if self.allowed_steps(1) == 0 else "training"

    def to_dict(self) -> dict[str, Any]:
        """Plain msgpack/JSON-ready representation."""
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "planned_steps": self.planned_steps,
            "steps": self.steps,
            "history": [list(h) for h in self.history],
            "epsilon": self.epsilon,
            "unit": "example",
        }

    @classmethod
    def from_dict(cls, d: Any) -> PrivacyLedger:
        """Validate and restore; a ledger whose numbers do not add up raises LedgerError."""
        try:
            hist = [(float(s), float(q), int(n)) for s, q, n in d["history"]]
            led = cls(
                str(d["accountant"]),
                float(d["delta"]),
                float(d["target_epsilon"]),
                float(d["noise_multiplier"]),
                float(d["sample_rate"]),
                int(d["planned_steps"]),
                int(d["steps"]),
                hist,
                float(d["epsilon"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"privacy ledger is malformed ({exc}).") from None
        if led.accountant not in ("rdp", "prv"):
            raise LedgerError(f"privacy ledger names unknown accountant {led.accountant!r}.")
        if sum(n for _, _, n in hist) != led.steps or led.steps < 0:
            raise LedgerError("privacy ledger step count does not match its history.")
        recomputed = led.epsilon_after()
        if not math.isfinite(led.epsilon) or recomputed + 1e-9 < led.epsilon * (1 - 1e-6):
            raise LedgerError("privacy ledger ε does not match its history.")
        led.epsilon = max(led.epsilon, recomputed)
        return led


@functools.lru_cache(maxsize=4096)
def _epsilon(accountant: str, hist: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """ε(δ) of a history. RDP is linear in the step count, so the per-step RDP curve of each
    (σ, q) is computed once and scaled: the same floats Opacus computes (it multiplies the
    one-step curve by ``steps`` too), minus the repeated work — accounting is otherwise the
    most expensive part of a short training burst."""
    if accountant != "rdp":
        acc = create_accountant(accountant)
        acc.history = list(hist)
        return float(acc.get_epsilon(delta=delta))
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(_rdp_per_step(sigma, q) * n for sigma, q, n in hist)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sigma: float, q: float) -> Any:
    return rdp_analysis.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )


def _merge(hist: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Merge consecutive entries with equal (σ, q): same privacy, far cheaper to account."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, n in hist:
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + n)
        else:
            out.append((sigma, q, n))
    return out
