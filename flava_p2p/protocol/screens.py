"""Pre-merge screens: pure functions deciding which received models a node will not merge.

A :class:`ModelScreens` is the node's screening strategy; the merge rule
(``aggregation.py``) then combines what passes. Nothing here has state or side effects: the
node core passes its own model, the shared genesis and the sum of its own training updates, and
gets back the models kept and a reason for each one refused (which the core charges to the
sender's score).

Three screens look at changes since the shared genesis, which is what training moves: a change
far larger than the median one (scaling, model replacement), pointing against ours (sign-flip,
inner-product manipulation), or — once honest models visibly agree — not pointing our way at all
(noise: Gaussian models, random directions have cosine ≈ 0). The fourth looks at a model's
difference from ours: shifted the same way in nearly every coordinate ("a little is enough",
ALIE). Clipping bounds each survivor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flava_p2p.config import GossipConfig

Vec = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: The one-sidedness screen needs this many differing coordinates before it judges a model.
MIN_DIFFERING = 64


@dataclass(frozen=True)
class ScreenResult:
    """What :meth:`ModelScreens.judge` decided."""

    kept: list[bytes]
    refused: list[tuple[bytes, str]]
    """(peer, reason): ``norm_bound``, ``opposed``, ``misaligned`` or ``one_sided``."""
    direction_from_own_training: bool
    """The opposed-direction test used our own training's sum as "forward" (see
    :func:`direction_reference`)."""
    cosines: dict[bytes, float]
    """Cosine of each received model's change since genesis with our reference direction
    (the node keeps a window of them: their median says whether honest models agree yet)."""


@dataclass(frozen=True)
class ModelScreens:
    """Thresholds of the three screens; ``None`` switches one off."""

    max_norm_ratio: float | None = 3.0
    opposed_cosine: float | None = -0.2
    max_one_sided: float | None = 0.65
    min_alignment: float | None = 0.1

    @classmethod
    def from_config(cls, cfg: GossipConfig) -> ModelScreens:
        """The node's configured screens."""
        return cls(cfg.max_norm_ratio, cfg.opposed_cosine, cfg.max_one_sided, cfg.min_alignment)

    @property
    def active(self) -> bool:
        """At least one screen is on."""
        return (
            self.max_norm_ratio is not None
            or self.opposed_cosine is not None
            or self.max_one_sided is not None
            or self.min_alignment is not None
        )

    def judge(
        self,
        own: Vec,
        genesis: Vec,
        own_progress: F64,
        received: dict[bytes, Vec],
        typical_cosine: float | None = None,
    ) -> ScreenResult:
        """Screen ``received`` models (by sender) against our model ``own``.

        ``typical_cosine`` is the median cosine of recently received models with ours: the
        alignment screen only judges once honest models visibly agree (it is at least twice
        ``min_alignment``); before that every model, honest or not, is mostly noise.
        """
        if not self.active:
            return ScreenResult(list(received), [], False, {})
        model_delta = (own - genesis).astype(np.float64)
        reference, from_training = direction_reference(model_delta, own_progress)
        ref_norm = float(np.linalg.norm(reference))
        deltas = {p: (m - genesis).astype(np.float64) for p, m in received.items()}
        norms = {p: float(np.linalg.norm(d)) for p, d in deltas.items()}
        # With an honest majority among own + received, the median change is an honest one.
        typical = float(np.median([float(np.linalg.norm(model_delta)), *norms.values()]))
        kept: list[bytes] = []
        refused: list[tuple[bytes, str]] = []
        ratio, cosine, sided = self.max_norm_ratio, self.opposed_cosine, self.max_one_sided
        aligned = self.min_alignment
        judging = (
            aligned is not None and typical_cosine is not None and typical_cosine >= 2 * aligned
        )
        cosines: dict[bytes, float] = {}
        for peer, model in received.items():
            norm = norms[peer]
            cos: float | None = None
            if ref_norm > 0 and norm > 0:  # not trained yet: no direction to compare with
                cos = float(deltas[peer] @ reference) / (norm * ref_norm)
                cosines[peer] = cos
            if ratio is not None and typical > 0 and norm > ratio * typical:
                refused.append((peer, "norm_bound"))
            elif cosine is not None and cos is not None and cos < cosine:
                refused.append((peer, "opposed"))
            elif judging and cos is not None and aligned is not None and cos < aligned:
                refused.append((peer, "misaligned"))
            elif sided is not None and one_sidedness(model, own) > sided:
                refused.append((peer, "one_sided"))
            else:
                kept.append(peer)
        return ScreenResult(kept, refused, from_training, cosines)


def one_sidedness(model: Vec, own: Vec) -> float:
    """Fraction of the differing coordinates in which ``model`` lies on its majority side of
    ``own``: about 0.5 for an honest model, near 1 for ALIE's μ − z·σ.

    Below :data:`MIN_DIFFERING` differing coordinates (e.g. before anyone trained) the fraction
    says nothing and 0.5 is returned.
    """
    diff = np.asarray(model, dtype=np.float32) - own
    above, below = int(np.count_nonzero(diff > 0)), int(np.count_nonzero(diff < 0))
    if above + below < MIN_DIFFERING:
        return 0.5
    return max(above, below) / (above + below)


def direction_reference(model_delta: F64, own_progress: F64) -> tuple[F64, bool]:
    """Which way "forward" is for the opposed-direction test, and whether it is our own
    training's sum.

    Normally our model's change since genesis. But a node that attackers already dragged past
    the genesis would then see honest models as opposed and flipped ones as aligned, and stay
    captured; its own training keeps pulling the other way, so when the model points against
    the sum of our own training updates, that sum is the reference. (The sum alone is not used
    always: near consensus it is dominated by the tug between our data and the others', which
    points against every other honest node's deviation.)
    """
    m, p = float(np.linalg.norm(model_delta)), float(np.linalg.norm(own_progress))
    if m > 0 and p > 0 and float(model_delta @ own_progress) / (m * p) < 0:
        return own_progress, True
    return model_delta, False


def cap_samples(own_count: int, claimed: list[int]) -> tuple[list[int], bool]:
    """Sample counts are a peer's claim: cap each at twice the median claim (own included).

    Otherwise one Byzantine peer claiming 10⁹ examples takes nearly all the weight of every
    merge; with a majority of honest inputs the median is an honest count. Returns the capped
    counts and whether any claim was cut.
    """
    cap = 2 * float(np.median([max(own_count, 1), *claimed]))
    return [max(1, min(c, int(cap))) for c in claimed], any(c > int(cap) for c in claimed)
