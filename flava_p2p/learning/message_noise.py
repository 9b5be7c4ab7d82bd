"""Optional message-level (node-level) noise on outgoing deltas, with its own accountant.

Each release clips the delta to L2 norm C and adds N(0, z²C²) per coordinate: a Gaussian
mechanism whose unit is the *whole node* (all of its data may change the delta, but by at most
C). Every release is one composition step at sampling rate 1, accounted with Opacus' RDP
accountant; the count persists with the node's checkpoint so ε never goes backwards. This is
independent of, and in addition to, the example-level DP-SGD guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vec = npt.NDArray[np.float32]


@dataclass
class MessageNoise:
    """Clip-and-noise for outgoing deltas; ``releases`` is the accounting state."""

    clip: float
    noise_multiplier: float
    delta: float = 1e-5
    releases: int = 0

    def release(self, delta_vec: Vec, rng: np.random.Generator) -> Vec:
        """Clip to ``clip`` and add N(0, (z·clip)²); counts one release."""
        v = np.asarray(delta_vec, dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if norm > self.clip:
            v = v * (self.clip / norm)
        noisy = v + rng.normal(0.0, self.noise_multiplier * self.clip, v.shape)
        self.releases += 1
        return noisy.astype(np.float32)

    def epsilon(self) -> float:
        """Node-level ε(δ) after all releases so far (0 before the first)."""
        if self.releases == 0:
            return 0.0
        # Imported here: opacus pulls in torch (~2.5 s), which a simulation without learning
        # (and every partition worker it spawns) would otherwise pay at start.
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [(self.noise_multiplier, 1.0, self.releases)]
        return float(acc.get_epsilon(delta=self.delta))
