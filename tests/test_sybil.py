"""Sybil defences: identity work bound to the PeerID, caps per host, one host minting many."""

from __future__ import annotations

import random

import numpy as np

from flava_p2p.config import GossipConfig
from flava_p2p.identity import Identity
from flava_p2p.protocol.identity_work import has_work, mint_work, work_bits
from flava_p2p.protocol.node import NodeCore
from flava_p2p.protocol.sybil import SybilGuard, host_key
from flava_p2p.runtime.state import WORK_FILE, load_or_mint_work
from flava_p2p.sim.runner import Simulation
from flava_p2p.sim.virtual_network import SHARED_HOST, LinkModel, VirtualNetwork
from flava_p2p.testing.scenarios import small_scenario
from flava_p2p.wire.messages import Hello, PeerDescriptor

PEER = Identity.from_seed(b"\x05" * 32).peer_id
OTHER = Identity.from_seed(b"\x06" * 32).peer_id


class TestIdentityWork:
    def test_minted_nonce_proves_the_work_for_that_peer_and_network_only(self) -> None:
        nonce = mint_work(PEER, "net-a", 12)
        assert work_bits(PEER, "net-a", nonce) >= 12 and has_work(PEER, "net-a", nonce, 12)
        # Bound to the identity and the network: reusing it elsewhere almost never works.
        others = [has_work(OTHER, "net-a", nonce, 12), has_work(PEER, "net-b", nonce, 12)]
        assert others == [False, False] or work_bits(OTHER, "net-a", nonce) >= 12
        assert not has_work(PEER, "net-a", b"", 12) and not has_work(PEER, "net-a", b"x" * 9, 1)
        assert has_work(PEER, "net-a", b"", 0) and mint_work(PEER, "net-a", 0) == b""

    def test_work_costs_about_two_to_the_bits_hashes(self) -> None:
        """Minting is a search: the nonces found for 60 identities at 8 bits are ~256 apart
        on average (a weak check that the difficulty means what it says)."""
        found = [
            int.from_bytes(mint_work(Identity.from_seed(bytes([k]) * 32).peer_id, "n", 8), "big")
            for k in range(60)
        ]
        assert 100 < float(np.mean(found)) < 600

    def test_node_home_keeps_a_checked_nonce(self, tmp_path: object) -> None:
        from pathlib import Path

        home = Path(str(tmp_path))
        first = load_or_mint_work(home, PEER, "net", 10)
        assert (home / WORK_FILE).exists()
        assert load_or_mint_work(home, PEER, "net", 10) == first  # reused, not minted again
        (home / WORK_FILE).write_text('{"network_id": "net", "nonce": "00"}')  # edited file
        assert has_work(PEER, "net", load_or_mint_work(home, PEER, "net", 10), 10)
        assert load_or_mint_work(home, PEER, "other-net", 0) == b""


class TestGuard:
    def test_admission_needs_the_work(self) -> None:
        guard = SybilGuard("n", work_bits=10)
        assert not guard.admit(PEER, b"") and not guard.proven(PEER)
        nonce = mint_work(PEER, "n", 10)
        assert guard.admit(PEER, nonce) and guard.proven(PEER) and guard.nonce_of(PEER) == nonce
        assert SybilGuard("n").admit(OTHER, b"")  # no work asked: everyone is admitted

    def test_view_cap_counts_the_view_and_the_incoming(self) -> None:
        guard = SybilGuard("n", max_per_host=2)
        incoming = ["10.0.0.9", "10.9.9.9", "10.9.9.9", "127.0.0.1", "127.0.0.1", "127.0.0.1"]
        kept, cut = guard.within_view_cap(incoming, host_key, {"10.9.9.9": 1})
        assert kept == ["10.0.0.9", "10.9.9.9", "127.0.0.1", "127.0.0.1", "127.0.0.1"]
        assert cut == 1  # loopback is exempt: a local test cluster is one operator
        assert SybilGuard("n").within_view_cap(incoming, host_key, {"10.9.9.9": 5})[1] == 0

    def test_one_model_per_host_in_a_merge(self) -> None:
        guard = SybilGuard("n", max_per_host=2)
        hosts = {b"a": "10.0.0.1", b"b": "10.1.0.1", b"c": "10.1.0.1", b"d": "10.1.0.1"}
        kept, cut = guard.one_per_host(sorted(hosts), hosts.get, random.Random(0))
        assert cut == 2 and b"a" in kept and len(kept) == 2


def _pair(b_work: bytes) -> tuple[NodeCore, NodeCore]:
    """Node a asks for 10 bits of identity work; node b bootstraps to a with ``b_work``."""
    net = _network(b_work)
    return net.nodes[0], net.nodes[1]


def _network(b_work: bytes) -> VirtualNetwork:
    """The two nodes of :func:`_pair`, after 5 s, on their network."""
    net = VirtualNetwork(link=LinkModel(), seed=0)
    gossip = GossipConfig(period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3)
    idents = [Identity.from_seed(bytes([4, i]) * 16) for i in range(2)]
    a_work = mint_work(idents[0].peer_id, "t", 10)
    for i, (ident, work) in enumerate(zip(idents, [a_work, b_work], strict=True)):
        net.add(
            NodeCore(
                ident,
                network_id="t",
                genesis=np.zeros(4, np.float32),
                schema=b"s" * 32,
                gossip=gossip,
                rng=random.Random(i),
                bootstrap=[] if i == 0 else [net.address(0)],
                sybil=SybilGuard("t", work_bits=10, own_work=work),
            )
        )
    net.start()
    net.run_until(5.0)
    return net


class TestInTheCore:
    def test_hello_without_work_is_ignored(self) -> None:
        a, b = _pair(b"")
        assert a.counters.get("identity_work_missing", 0) >= 1 and not a.view
        assert a.identity.peer_id not in b.view  # a never answers an unadmitted peer

    def test_hello_with_work_is_admitted(self) -> None:
        b_id = Identity.from_seed(bytes([4, 1]) * 16).peer_id
        a, b = _pair(mint_work(b_id, "t", 10))
        assert a.counters.get("identity_work_missing") is None
        assert b.identity.peer_id in a.view and a.identity.peer_id in b.view


def test_descriptor_and_hello_carry_the_work_on_the_wire() -> None:
    d = PeerDescriptor(PEER, b"k" * 32, b"s" * 64, ("/ip4/10.0.0.1/udp/7000",), 3, b"w" * 8)
    assert PeerDescriptor.from_wire(d.to_wire()) == d
    plain = PeerDescriptor(PEER, b"k" * 32, b"s" * 64, ())
    assert len(plain.to_wire()) == 5 and PeerDescriptor.from_wire(plain.to_wire()) == plain
    h = Hello(b"k" * 32, b"s" * 64, (), True, b"", (), b"w" * 8)
    assert Hello.from_wire(h.to_wire()) == h


def test_one_host_minting_three_times_the_honest_nodes_stays_one_voice() -> None:
    """8 honest nodes, 24 Sybil identities on one address: no honest view holds more than
    two of them, no merge more than one, and every identity paid its work."""
    sc = small_scenario(
        nodes=32,
        rounds=6,
        byzantine={"count": 24, "attack": "gaussian", "same_host": True},
        node={"identity_work_bits": 8},
        topology={"kind": "discovered"},
    )
    sim = Simulation(sc)
    summary = sim.run()
    assert summary["identity_work"]["identities"] == 32
    sybils = {sim.identities[b].peer_id for b in sim.byzantine}
    assert all(sim.net.address(b)[0] == SHARED_HOST for b in sim.byzantine)
    for i in sim.honest:
        core = sim.net.nodes[i]
        assert sum(p in sybils for p in core.view.peers()) <= 2
        assert sum(p in sybils for p in core.last_inputs) <= 1
    caps = sum(sim.net.nodes[i].counters.get("host_cap_merge", 0) for i in sim.honest)
    views = sum(sim.net.nodes[i].counters.get("host_cap_view", 0) for i in sim.honest)
    assert caps + views > 0


def test_a_forgotten_admission_is_renewed_by_asking_for_a_hello() -> None:
    """After a restart the node has not kept which nonces it checked: a message from a peer it
    no longer counts as admitted makes it ask for a HELLO, and the peer is admitted again."""
    b_id = Identity.from_seed(bytes([4, 1]) * 16).peer_id
    net = _network(mint_work(b_id, "t", 10))
    a = net.nodes[0]
    a.sybil = SybilGuard("t", work_bits=10, own_work=a.sybil.own_work)  # forgets b
    assert not a.sybil.proven(b_id)
    # Within one ping period (0.3 s), not only once b gives a up as dead and bootstraps again.
    net.run_until(5.5)
    assert a.counters.get("unadmitted_sender", 0) >= 1
    assert a.sybil.proven(b_id) and b_id in a.view


def test_trust_grows_with_age() -> None:
    """gossip.trust_ramp_s: a peer first heard a moment ago weighs 10% in a merge, one known
    for the whole ramp weighs fully; off (0) by default."""
    import numpy as np

    from flava_p2p.protocol.node import NodeCore

    def core(ramp: float) -> NodeCore:
        gossip = GossipConfig(trust_ramp_s=ramp)
        return NodeCore(
            Identity.from_seed(b"\x09" * 32),
            network_id="t",
            genesis=np.zeros(4, np.float32),
            schema=b"s" * 32,
            gossip=gossip,
            rng=random.Random(0),
        )

    on = core(100.0)
    on.memory.first_heard.update({b"old": 0.0, b"mid": 50.0, b"new": 100.0})
    np.testing.assert_allclose(on._trust([b"old", b"mid", b"new"], 100.0), [1.0, 0.55, 0.1])
    assert core(0.0)._trust([b"old", b"new"], 100.0).tolist() == [1.0, 1.0]
    saved = on.screen_state()
    again = core(100.0)
    again.load_screen_state(saved)
    assert again.memory.first_heard == on.memory.first_heard
