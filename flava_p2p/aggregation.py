"""Robust aggregation rules: pure functions on flat vectors, one signature, registered by name.

Every rule is ``rule(own, received, weights, params) -> new_own`` where ``own`` is this node's
model (d,), ``received`` the peers' models (k, d) — reconstructed from their deltas against the
genesis model — and ``weights`` (k,) their non-negative weights (sample count × staleness). The
node's own model is the trusted anchor: rules that need a reference point use it, and it takes
part in averages with ``params.self_weight``.

Rules: ``mean``, ``trimmed_mean``, ``median`` (coordinate-wise), ``krum`` / ``multi_krum``
(Blanchard et al. 2017), ``geometric_median`` (smoothed Weiszfeld, Pillutla et al. 2022) and
``clipped`` — self-centred clipping (ClippedGossip, He, Karimireddy & Jaggi 2022), the default:
``own + Σ_j w_j · clip(x_j − own, τ)`` with τ adaptive to the neighbours' spread unless given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vec = npt.NDArray[np.float32]
Mat = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AggParams:
    """Knobs of the rules; each rule reads only its own."""

    self_weight: float = 1.0
    """Weight of the node's own model relative to ``weights`` (e.g. its sample count)."""
    trim: float = 0.2
    """trimmed_mean: fraction cut from each end per coordinate."""
    byzantine: int = 1
    """krum / multi_krum: assumed number of Byzantine inputs f."""
    multi_krum_m: int | None = None
    """multi_krum: how many best-scored inputs to average (default k − f)."""
    clip_tau: float | None = None
    """clipped: clipping radius; None → adaptive (see ``clip_quantile``)."""
    clip_quantile: float = 0.5
    """clipped: adaptive τ = this quantile of the neighbours' distances to own."""
    iterations: int = 8
    """geometric_median: Weiszfeld iterations."""
    smoothing: float = 1e-6
    """geometric_median: distance floor (smoothed Weiszfeld)."""


Rule = Callable[[Vec, Mat, Vec, AggParams], Vec]
AGGREGATORS: dict[str, Rule] = {}


def register(name: str) -> Callable[[Rule], Rule]:
    """Decorator adding a rule to :data:`AGGREGATORS`."""

    def deco(rule: Rule) -> Rule:
        AGGREGATORS[name] = rule
        return rule

    return deco


def aggregate(
    name: str,
    own: npt.ArrayLike,
    received: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    params: AggParams | None = None,
) -> Vec:
    """Apply the rule ``name``; with nothing received, returns ``own`` unchanged."""
    if name not in AGGREGATORS:
        raise KeyError(f"unknown aggregation {name!r}; choose from {sorted(AGGREGATORS)}")
    x = np.asarray(own, dtype=np.float32).reshape(-1)
    r = np.asarray(received, dtype=np.float32).reshape(-1, x.size) if np.size(received) else (
        np.zeros((0, x.size), np.float32))  # fmt: skip
    w = np.ones(len(r), np.float32) if weights is None else np.asarray(weights, np.float32)
    if len(w) != len(r) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative, one per received vector")
    if len(r) == 0:
        return x.copy()
    return AGGREGATORS[name](x, r, w, params or AggParams()).astype(np.float32, copy=False)


def _f32(x: npt.ArrayLike) -> Vec:
    return np.asarray(x, dtype=np.float32)


def _with_own(own: Vec, received: Mat, weights: Vec, p: AggParams) -> tuple[Mat, Vec]:
    return np.vstack([own[None, :], received]), np.concatenate([[p.self_weight], weights])


@register("mean")
def mean(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """Weighted average of own and received (not robust: one outlier moves it arbitrarily)."""
    x, w = _with_own(own, received, weights, p)
    total = float(w.sum())
    return own.copy() if total <= 0 else (w[:, None] * x).sum(axis=0) / total


@register("trimmed_mean")
def trimmed_mean(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """Per coordinate, drop the ``trim`` fraction at each end (of own + received), average."""
    x, _ = _with_own(own, received, weights, p)
    n = len(x)
    cut = min(int(np.floor(p.trim * n)), (n - 1) // 2)
    s = np.sort(x, axis=0)
    return _f32(s[cut : n - cut].mean(axis=0))


@register("median")
def coordinate_median(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """Coordinate-wise median of own + received."""
    x, _ = _with_own(own, received, weights, p)
    return np.median(x, axis=0)


def _krum_scores(x: Mat, f: int) -> npt.NDArray[np.float64]:
    n = len(x)
    sq = np.square(x.astype(np.float64)).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x.astype(np.float64) @ x.T), 0.0)
    k = max(1, n - f - 2)
    nearest = np.sort(d2, axis=1)[:, 1 : k + 1]  # column 0 is the distance to itself
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)


def _krum_order(x: Mat, f: int) -> list[int]:
    """Indices by Krum score; ties broken by content so the order of peers never matters."""
    scores = _krum_scores(x, f)
    return sorted(range(len(x)), key=lambda i: (float(scores[i]), x[i].tobytes()))


@register("krum")
def krum(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """The input (own included) whose n − f − 2 nearest neighbours are closest."""
    x, _ = _with_own(own, received, weights, p)
    return _f32(x[_krum_order(x, p.byzantine)[0]].copy())


@register("multi_krum")
def multi_krum(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """Average of the m best Krum-scored inputs (default m = n − f)."""
    x, w = _with_own(own, received, weights, p)
    m = p.multi_krum_m or max(1, len(x) - p.byzantine)
    best = np.array(_krum_order(x, p.byzantine)[:m])
    wb = w[best]
    return _f32((wb[:, None] * x[best]).sum(axis=0) / max(float(wb.sum()), 1e-12))


@register("geometric_median")
def geometric_median(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """Weighted geometric median by smoothed Weiszfeld iterations, started at own."""
    x, w = _with_own(own, received, weights, p)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    z = x64[0].copy()
    for _ in range(p.iterations):
        dist = np.maximum(np.linalg.norm(x64 - z, axis=1), p.smoothing)
        beta = w64 / dist
        z = (beta[:, None] * x64).sum(axis=0) / beta.sum()
    return _f32(z.astype(np.float32))


@register("clipped")
def self_centred_clipping(own: Vec, received: Mat, weights: Vec, p: AggParams) -> Vec:
    """ClippedGossip: move towards each neighbour by at most τ (self-centred clipping)."""
    diff = received.astype(np.float64) - own.astype(np.float64)
    dist = np.linalg.norm(diff, axis=1)
    tau = p.clip_tau if p.clip_tau is not None else float(np.quantile(dist, p.clip_quantile))
    scale = np.minimum(1.0, tau / np.maximum(dist, 1e-12))
    total = float(weights.sum()) + p.self_weight
    step = ((weights * scale)[:, None] * diff).sum(axis=0) / max(total, 1e-12)
    return _f32((own + step).astype(np.float32))


def staleness_weights(
    sample_counts: npt.ArrayLike, ages: npt.ArrayLike, half_life: float = 4.0
) -> Vec:
    """Weights = samples × 2^(−age/half_life): older deltas (in rounds) count less."""
    n = np.asarray(sample_counts, dtype=np.float64)
    a = np.maximum(np.asarray(ages, dtype=np.float64), 0.0)
    return (n * np.exp2(-a / half_life)).astype(np.float32)
