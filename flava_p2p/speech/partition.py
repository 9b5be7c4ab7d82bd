"""Seeded partitioners: which node holds which utterances. Each index lands in exactly one part."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flava_p2p.errors import FlavaError


class PartitionError(FlavaError):
    """A partition request cannot be satisfied (e.g. more nodes than speakers)."""


def by_speaker(
    speakers: Sequence[str],
    n_parts: int | None = None,
    speakers_per_part: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Natural partition: each part gets whole speakers.

    Give ``speakers_per_part`` (k speakers per node; the number of parts follows) or ``n_parts``
    (speakers dealt round-robin after a seeded shuffle). Default: one speaker per part. With
    more parts than speakers, each speaker's clips are split over several parts (as evenly as
    possible, seeded), so every part still holds one speaker's voice: several devices of one
    person.
    """
    names = sorted(set(speakers))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    if speakers_per_part is not None:
        if speakers_per_part < 1:
            raise PartitionError("speakers per node must be ≥ 1.")
        n_parts = -(-len(order) // speakers_per_part)
        groups = [
            order[i * speakers_per_part : (i + 1) * speakers_per_part] for i in range(n_parts)
        ]
    else:
        n_parts = n_parts or len(order)
        if n_parts > len(order):
            return _split_speakers(speakers, order, n_parts, seed)
        groups = [order[i::n_parts] for i in range(n_parts)]
    part_of = {spk: p for p, group in enumerate(groups) for spk in group}
    owner = np.array([part_of[s] for s in speakers], dtype=np.int64)
    return [np.flatnonzero(owner == p) for p in range(len(groups))]


def _split_speakers(
    speakers: Sequence[str], order: list[str], n_parts: int, seed: int
) -> list[np.ndarray]:
    """More parts than speakers: speaker k (in seeded order) gets n_parts // S parts, the first
    n_parts % S speakers one more; its clips are shuffled and split evenly over them."""
    rng = np.random.default_rng([seed, 1])
    spk = np.asarray(speakers)
    base, extra = divmod(n_parts, len(order))
    parts: list[np.ndarray] = []
    for k, name in enumerate(order):
        own = rng.permutation(np.flatnonzero(spk == name))
        n_here = base + (1 if k < extra else 0)
        if n_here > len(own):
            raise PartitionError(
                f"speaker {name!r} has {len(own)} clips, too few for {n_here} nodes; use fewer "
                f"nodes."
            )
        parts.extend(np.sort(chunk) for chunk in np.array_split(own, n_here))
    return parts


def iid(n_items: int, n_parts: int, seed: int = 0) -> list[np.ndarray]:
    """Uniformly random, equal-size (±1) parts."""
    if n_parts < 1 or n_parts > n_items:
        raise PartitionError(f"cannot split {n_items} items into {n_parts} parts.")
    perm = np.random.default_rng(seed).permutation(n_items)
    return [np.sort(part) for part in np.array_split(perm, n_parts)]


def dirichlet(
    labels: Sequence[int] | np.ndarray,
    n_parts: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label skew: each class is split across parts with proportions ~ Dir(alpha).

    Small alpha → each node sees few classes. Redraws (seeded) until every part has at least
    ``min_size`` items, up to 100 tries.
    """
    if alpha <= 0:
        raise PartitionError("dirichlet alpha must be > 0 (smaller = more skew).")
    y = np.asarray(labels)
    if n_parts < 1 or n_parts * min_size > len(y):
        raise PartitionError(f"cannot split {len(y)} items into {n_parts} parts.")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for cls in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == cls))
            props = rng.dirichlet([alpha] * n_parts)
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise PartitionError(
        f"dirichlet(alpha={alpha}) could not give every one of {n_parts} parts ≥ {min_size} "
        f"items in 100 draws; raise alpha or use fewer parts."
    )


def fixed_size(speakers: Sequence[str], n_parts: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n_parts`` parts of exactly ``size`` clips, each of one speaker: every speaker's clips
    (seeded shuffle) are cut into as many whole shares of ``size`` as they hold, and
    ``n_parts`` shares are drawn from all of them. For studies that vary the number of nodes
    at a fixed amount of data per node."""
    if size < 1:
        raise PartitionError("clips per node must be ≥ 1.")
    rng = np.random.default_rng([seed, 2])
    spk = np.asarray(speakers)
    shares: list[np.ndarray] = []
    for name in sorted(set(speakers)):
        own = rng.permutation(np.flatnonzero(spk == name))
        shares.extend(own[k * size : (k + 1) * size] for k in range(len(own) // size))
    if n_parts > len(shares):
        raise PartitionError(
            f"only {len(shares)} shares of {size} clips of one speaker exist; use fewer nodes, "
            f"fewer clips per node or a bigger corpus."
        )
    chosen = sorted(rng.choice(len(shares), size=n_parts, replace=False).tolist())
    return [np.sort(shares[k]) for k in chosen]


def quantity_skewed(n_items: int, n_parts: int, sigma: float, seed: int = 0) -> list[np.ndarray]:
    """Random parts whose sizes follow a lognormal with shape ``sigma`` (0: equal sizes), as
    device data does: a few nodes hold much, most hold little. Every part gets ≥ 1 item."""
    if n_parts < 1 or n_parts > n_items:
        raise PartitionError(f"cannot split {n_items} items into {n_parts} parts.")
    if sigma < 0:
        raise PartitionError("quantity skew sigma must be ≥ 0 (0 = equal sizes).")
    rng = np.random.default_rng([seed, 3])
    weights = rng.lognormal(0.0, sigma, size=n_parts)
    sizes = 1 + np.floor(weights / weights.sum() * (n_items - n_parts)).astype(np.int64)
    sizes[: n_items - int(sizes.sum())] += 1  # hand out the rounding remainder
    perm = rng.permutation(n_items)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(perm, cuts)]
