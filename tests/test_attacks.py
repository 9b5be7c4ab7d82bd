"""Byzantine behaviours: what each model attack sends, and spec parsing."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from flava_p2p.attacks import AttackContext, AttackError, apply_model_attack, parse_attack


def ctx(n_honest: int = 12, n_byzantine: int = 4) -> AttackContext:
    rng = np.random.default_rng(0)
    own = rng.normal(size=8).astype(np.float32)
    received = [own + rng.normal(size=8).astype(np.float32) for _ in range(3)]
    return AttackContext(
        own=own,
        genesis=np.zeros(8, np.float32),
        received=received,
        recipient=b"\x02",
        recipient_model=None,
        rng=rng,
        n_honest=n_honest,
        n_byzantine=n_byzantine,
    )


class TestModelAttacks:
    def test_sign_flip_reflects_through_genesis(self) -> None:
        """sign_flip sends genesis − (own − genesis)."""
        c = ctx()
        out = apply_model_attack(parse_attack("sign_flip"), c)
        assert out is not None
        np.testing.assert_allclose(out, -c.own)

    def test_scaling_multiplies_the_change(self) -> None:
        """scaling:factor=10 sends genesis + 10·(own − genesis)."""
        c = ctx()
        out = apply_model_attack(parse_attack("scaling:factor=10"), c)
        assert out is not None
        np.testing.assert_allclose(out, 10 * c.own, rtol=1e-6)

    def test_alie_uses_the_papers_z_for_n_and_f(self) -> None:
        """With 16 nodes of which 4 Byzantine, z = Φ⁻¹((n − s)/n), s = ⌊n/2⌋ + 1 − f."""
        c = ctx(12, 4)
        pool = np.stack([*c.received, c.own])
        z = NormalDist().inv_cdf((16 - (16 // 2 + 1 - 4)) / 16)
        out = apply_model_attack(parse_attack("alie"), c)
        assert out is not None
        np.testing.assert_allclose(out, pool.mean(0) - z * pool.std(0), rtol=1e-5)
        assert 0.45 < z < 0.5

    def test_alie_f_parameter_for_real_nodes(self) -> None:
        """A real attacker told f=4 in a 16-node network attacks like the simulator's."""
        sim = apply_model_attack(parse_attack("alie"), ctx(12, 4))
        real = apply_model_attack(parse_attack("alie:f=4"), ctx(15, 1))  # view 15 + itself
        assert real is not None and sim is not None
        np.testing.assert_allclose(real, sim)

    def test_alie_lone_attacker_has_z_zero(self) -> None:
        """The paper's z for f = 1 of 16 is 0 (it sends the mean): testers pass alie:f=K."""
        out = apply_model_attack(parse_attack("alie"), ctx(15, 1))
        c = ctx(15, 1)
        assert out is not None
        np.testing.assert_allclose(out, np.stack([*c.received, c.own]).mean(0), rtol=1e-6)

    def test_alie_mixed_shifts_each_coordinate_by_z_sigma_in_a_fixed_direction(self) -> None:
        """alie:mixed=1 moves every coordinate by exactly z·σ, about half of them upwards, with
        the same pattern on every call (the colluders' pulls must add up over rounds)."""
        c = ctx(12, 4)
        pool = np.stack([*c.received, c.own])
        mu, sd = pool.mean(0), pool.std(0)
        first = apply_model_attack(parse_attack("alie:z=2,mixed=1"), c)
        np.testing.assert_allclose(np.abs(first - mu), 2 * sd, rtol=1e-5)
        again = apply_model_attack(parse_attack("alie:z=2,mixed=1"), ctx(12, 4))
        np.testing.assert_array_equal(np.sign(first - mu), np.sign(again - mu))
        assert 0 < int(np.count_nonzero(first > mu)) < c.own.size


class TestSpecs:
    def test_unknown_attack_lists_the_valid_ones(self) -> None:
        """A typo names every valid attack."""
        with pytest.raises(AttackError, match="sign_flip"):
            parse_attack("signflip")

    def test_unknown_parameter_lists_the_allowed_ones(self) -> None:
        """A bad parameter names the allowed ones."""
        with pytest.raises(AttackError, match="allowed: every, f, mixed, z"):
            parse_attack("alie:q=1")


class TestNetworkAttacks:
    def test_one_definition_for_node_and_simulator(self) -> None:
        """replay re-sends only what the node itself sent; garbage one datagram per firing;
        flood a burst; same seed, same datagrams."""
        import numpy as np

        from flava_p2p.attacks.network import FLOOD_BURST, NetworkAttacker

        replay = NetworkAttacker(parse_attack("replay"), np.random.default_rng(0))
        assert replay.fire([("10.0.0.1", 7000)]) == []  # nothing sent yet: nothing to replay
        replay.remember(("10.0.0.2", 7000), b"sealed-1")
        replay.remember(("10.0.0.3", 7000), b"sealed-2")
        out = [replay.fire([]) for _ in range(20)]
        assert {d for batch in out for _, d in batch} <= {b"sealed-1", b"sealed-2"}
        garbage = NetworkAttacker(parse_attack("garbage:rate=5"), np.random.default_rng(1))
        assert len(garbage.fire([("10.0.0.1", 7000)])) == 1
        assert 0.05 < np.mean([garbage.next_delay() for _ in range(400)]) < 0.35  # ≈ 1/5 s
        flood = NetworkAttacker(parse_attack("flood"), np.random.default_rng(2))
        again = NetworkAttacker(parse_attack("flood"), np.random.default_rng(2))
        burst = flood.fire([("10.0.0.1", 7000)])
        assert len(burst) == FLOOD_BURST and burst == again.fire([("10.0.0.1", 7000)])

    def test_simulated_replaying_node_is_rejected_as_replays(self) -> None:
        """A Byzantine node replaying its own old datagrams in a simulation: the honest
        receivers' replay windows reject them (counted), as real nodes' do."""
        from flava_p2p.sim.runner import run_scenario
        from flava_p2p.sim.scenario import Scenario

        sc = Scenario.model_validate(
            {
                "nodes": 6,
                "rounds": 6,
                "learner": {"kind": "synthetic"},
                "privacy": {"epsilon": None},
                "byzantine": {"count": 1, "attack": "replay:rate=10"},
                "metrics": {"plots": False},
            }
        )
        s = run_scenario(sc, None, 0)
        sent = s["attack_datagrams_sent"]["replay"]
        assert sent > 50
        assert s["final"]["rejections"].get("replay", 0) >= 0.8 * sent


def test_intermittent_attacker_is_honest_between_attacks() -> None:
    """``every=K``: the attack replaces what is sent one round in K; otherwise the model goes
    out unchanged."""
    from types import SimpleNamespace

    from flava_p2p.attacks import make_attack_hook

    core = SimpleNamespace(genesis=np.zeros(4, np.float32), last_inputs={}, view=[], round=0)
    own = np.ones(4, np.float32)
    hook = make_attack_hook(parse_attack("sign_flip:every=3"), np.random.default_rng(0))
    sent = []
    for r in range(6):
        core.round = r
        sent.append(hook(core, b"p", own))  # type: ignore[arg-type]
    flipped = [r for r, m in enumerate(sent) if m is not None and m[0] < 0]
    assert flipped == [0, 3]
