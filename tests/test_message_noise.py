"""Message-level (node-level) noise: clipping, noise scale, accounting, and its wire metadata."""

from __future__ import annotations

import numpy as np

from flava_p2p.learning.message_noise import MessageNoise


class TestMessageNoise:
    def test_clips_then_adds_calibrated_noise(self) -> None:
        """A huge delta is clipped to C before noise; noise std is z·C per coordinate."""
        mn = MessageNoise(clip=1.0, noise_multiplier=0.5)
        rng = np.random.default_rng(0)
        big = np.full(100_000, 10.0, np.float32)
        out = mn.release(big, rng)
        clipped = big / np.linalg.norm(big)
        assert abs(float(np.std(out - clipped)) - 0.5) < 0.01
        assert mn.releases == 1

    def test_epsilon_grows_with_every_release(self) -> None:
        """Node-level ε is 0 before any release and strictly increases with each one."""
        mn = MessageNoise(clip=1.0, noise_multiplier=2.0, delta=1e-5)
        assert mn.epsilon() == 0.0
        rng = np.random.default_rng(1)
        eps = []
        for _ in range(3):
            mn.release(np.zeros(4, np.float32), rng)
            eps.append(mn.epsilon())
        assert 0 < eps[0] < eps[1] < eps[2]

    def test_restored_count_gives_same_epsilon(self) -> None:
        """The persisted release count alone reproduces ε after a restart."""
        a = MessageNoise(1.0, 1.5, releases=0)
        rng = np.random.default_rng(2)
        for _ in range(5):
            a.release(np.ones(3, np.float32), rng)
        assert MessageNoise(1.0, 1.5, releases=5).epsilon() == a.epsilon()


def test_deltas_carry_both_guarantees() -> None:
    """With message noise on, received deltas report node-level ε and z, C next to example ε."""
    import random

    from flava_p2p.config import GossipConfig
    from flava_p2p.identity import Identity
    from flava_p2p.protocol.node import NodeCore
    from flava_p2p.sim.virtual_network import VirtualNetwork
    from flava_p2p.wire.messages import DpInfo

    gossip = GossipConfig(period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3, view_size=4)
    seen: list[DpInfo] = []

    def learner(i: int, model: np.ndarray) -> tuple[np.ndarray, int, DpInfo]:
        return model + 0.1, 10, DpInfo(2.5, 1e-5)

    net = VirtualNetwork(seed=0, learner=learner)
    for i in range(2):
        core = NodeCore(
            Identity.from_seed(bytes([9, i]) * 16),
            network_id="t",
            genesis=np.zeros(8, np.float32),
            schema=b"k" * 32,
            gossip=gossip,
            rng=random.Random(i),
            bootstrap=[] if i == 0 else [net.address(0)],
            message_noise=MessageNoise(1.0, 1.0),
        )
        net.add(core)
    original = net.nodes[1]._on_delta

    def spy(sender, msg, inbound, now):  # type: ignore[no-untyped-def]
        seen.append(msg.dp)
        original(sender, msg, inbound, now)

    net.nodes[1]._on_delta = spy  # type: ignore[method-assign]
    net.start()
    net.run_until(8.0)
    assert seen
    last = seen[-1]
    assert last.example_epsilon == 2.5 and last.message_noise_multiplier == 1.0
    assert last.message_clip == 1.0 and last.message_epsilon is not None
    assert last.message_epsilon > 0 and net.nodes[0].message_noise is not None
    assert net.nodes[0].message_noise.releases >= len(seen)
