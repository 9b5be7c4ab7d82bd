"""The sans-I/O node core, driven by hand over the in-memory network (no sockets, no clock)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from flava_p2p.config import GossipConfig
from flava_p2p.identity import Identity
from flava_p2p.protocol.liveness import Liveness, PeerState
from flava_p2p.protocol.node import Graylisted, NodeCore, PeerJoined, SchemaMismatch
from flava_p2p.protocol.scores import PeerScores, ReputationRule
from flava_p2p.protocol.screens import one_sidedness
from flava_p2p.protocol.view import PeerSamplingView
from flava_p2p.sim.virtual_network import LinkModel, VirtualNetwork
from flava_p2p.wire.messages import DpInfo, PeerDescriptor

DIM = 16
SCHEMA = b"k" * 32
FAST = GossipConfig(
    period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3, view_size=8, fanout=2, aggregation="mean"
)


def build(
    n: int,
    *,
    seed: int = 0,
    gossip: GossipConfig = FAST,
    loss: float = 0.0,
    targets: np.ndarray | None = None,
) -> VirtualNetwork:
    """n nodes that all know only node 0; toy learner pulls each node toward its target.

    Default targets share a common part (one task) plus a per-node part (non-IID data), as
    honest nodes' optima do; independent random targets in 16 dimensions would often point
    against each other and (rightly) trip the opposed-direction screen.
    """
    import random

    rng = np.random.default_rng(seed)
    shared = rng.normal(size=DIM) + 0.5 * rng.normal(size=(n, DIM))
    goal = targets if targets is not None else shared.astype(np.float32)

    def learner(i: int, model: np.ndarray) -> tuple[np.ndarray, int, DpInfo]:
        return model + 0.3 * (goal[i] - model), 10, DpInfo(None, None)

    net = VirtualNetwork(link=LinkModel(loss=loss), seed=seed, learner=learner)
    genesis = np.zeros(DIM, np.float32)
    for i in range(n):
        ident = Identity.from_seed(bytes([seed % 256, i]) * 16)
        core = NodeCore(
            ident,
            network_id="t",
            genesis=genesis,
            schema=SCHEMA,
            gossip=gossip,
            rng=random.Random(seed * 1000 + i),
            bootstrap=[] if i == 0 else [net.address(0)],
        )
        net.add(core)
    net.start()
    return net


def lone_core(seed: bytes, gossip: GossipConfig = FAST, dim: int = DIM, **kwargs: Any) -> NodeCore:
    """One NodeCore with a zero genesis of ``dim`` weights, driven by hand (no network)."""
    import random

    return NodeCore(
        Identity.from_seed(seed * (32 // len(seed))),
        network_id="t",
        genesis=np.zeros(dim, np.float32),
        schema=SCHEMA,
        gossip=gossip,
        rng=random.Random(seed[-1]),
        **kwargs,
    )


class TestDiscovery:
    def test_everyone_finds_everyone(self) -> None:
        """From a single bootstrap node, peer sampling spreads knowledge of all 6 nodes."""
        net = build(6)
        net.run_until(20.0)
        for i, node in enumerate(net.nodes):
            known = set(node.view.peers()) | {node.identity.peer_id}
            assert len(node.view) >= 4, i
            assert node.identity.peer_id in known
        union = set().union(*(set(n.view.peers()) for n in net.nodes))
        assert union == {n.identity.peer_id for n in net.nodes}

    def test_node_training_another_model_is_refused_with_the_reason(self) -> None:
        """A HELLO from a node with another schema: refused both ways, each side told what
        differs (here the head); nodes of the same model still find each other."""
        import random

        def still(i: int, m: np.ndarray) -> tuple[np.ndarray, int, DpInfo]:
            return m, 1, DpInfo(None, None)

        net = VirtualNetwork(link=LinkModel(), seed=0, learner=still)
        card = {"encoder": "speech_embedding@0140c2b1455c0167", "head": "embed_linear"}
        other = {**card, "head": "embed_mlp (hidden 64)"}
        for i, (schema, c) in enumerate([(SCHEMA, card), (SCHEMA, card), (b"m" * 32, other)]):
            net.add(
                NodeCore(
                    Identity.from_seed(bytes([9, i]) * 16),
                    network_id="t",
                    genesis=np.zeros(DIM, np.float32),
                    schema=schema,
                    schema_card=c,
                    gossip=FAST,
                    rng=random.Random(i),
                    bootstrap=[] if i == 0 else [net.address(0)],
                )
            )
        net.start()
        net.run_until(10.0)
        a, b, odd = net.nodes
        assert b.identity.peer_id in a.view and a.identity.peer_id in b.view
        assert odd.identity.peer_id not in a.view and not odd.view
        found = {(i, e.peer): e for _, i, e in net.events if isinstance(e, SchemaMismatch)}
        told_a = found[(0, odd.identity.peer_id)]
        assert told_a.differences == ("head: ours embed_linear, theirs embed_mlp (hidden 64)",)
        assert (2, a.identity.peer_id) in found  # the odd node knows why, too
        assert sum(1 for _, i, e in net.events if isinstance(e, SchemaMismatch) and i == 0) == 1

    def test_first_shuffle_with_the_bootstrap_does_not_hello_it_again(self) -> None:
        """Each joining node's first shuffle is with the bootstrap, its only peer, which
        empties its view until the reply: that alone must not send a second HELLO."""
        net = build(6)
        net.run_until(5.0)  # ten shuffle periods, no loss
        assert [n.counters.get("bootstrap_hellos", 0) for n in net.nodes] == [0, 1, 1, 1, 1, 1]

    def test_node_whose_only_peer_went_silent_hellos_the_bootstrap_again(self) -> None:
        """The wait for a shuffle reply is bounded: with the bootstrap down, the node it
        shuffled with says HELLO again after BOOT_RETRY_S, and rejoins once it is back."""
        net = build(2)
        net.run_until(0.3)
        node, boot = net.nodes[1], net.nodes[0]
        assert boot.identity.peer_id in node.view
        net.set_down(0, True)
        net.run_until(3.5)  # its shuffle at ~0.5 s goes unanswered
        assert not node.view
        assert node.counters["bootstrap_hellos"] >= 2
        net.set_down(0, False)
        net.run_until(7.0)
        assert boot.identity.peer_id in node.view

    def test_view_is_bounded(self) -> None:
        """With 20 nodes and view size 8, no view exceeds 8."""
        net = build(20)
        net.run_until(15.0)
        assert max(len(n.view) for n in net.nodes) <= 8
        assert min(len(n.view) for n in net.nodes) >= 4


class TestGossipLearning:
    def test_models_converge_to_consensus(self) -> None:
        """Deltas flow; merging pulls nodes far closer together than their local optima are."""
        goals = np.random.default_rng(1).normal(size=(6, DIM)).astype(np.float32)
        net = build(6, targets=goals)
        net.run_until(40.0)
        models = np.stack([n.model for n in net.nodes])
        spread = np.linalg.norm(models - models.mean(0), axis=1).max()
        alone = np.linalg.norm(goals - goals.mean(0), axis=1).max()  # spread without gossip
        assert spread < 0.6 * alone
        assert all(n.counters.get("deltas_received", 0) > 5 for n in net.nodes)

    def test_same_seed_same_run(self) -> None:
        """A seeded run is bit-for-bit reproducible, lossy links included."""
        a, b = build(5, seed=3, loss=0.1), build(5, seed=3, loss=0.1)
        a.run_until(10.0)
        b.run_until(10.0)
        for x, y in zip(a.nodes, b.nodes, strict=True):
            assert np.array_equal(x.model, y.model)
        assert [(t, i, type(e).__name__) for t, i, e in a.events] == [
            (t, i, type(e).__name__) for t, i, e in b.events
        ]

    def test_survives_loss(self) -> None:
        """With 20% datagram loss nodes still discover and exchange deltas."""
        net = build(5, loss=0.2)
        net.run_until(30.0)
        assert all(len(n.view) >= 2 for n in net.nodes)
        assert all(n.counters.get("deltas_received", 0) > 0 for n in net.nodes)


class TestFaults:
    def test_dead_peer_leaves_views(self) -> None:
        """A crashed node leaves every view (probes or Cyclon's implicit detection) for good."""
        net = build(5)
        net.run_until(10.0)
        dead = net.nodes[3].identity.peer_id
        net.down.add(3)
        net.run_until(40.0)
        for i, node in enumerate(net.nodes):
            if i != 3:
                assert dead not in node.view.peers(), i
        net.run_until(60.0)  # and it does not come back through third-party shuffles
        assert all(dead not in n.view.peers() for i, n in enumerate(net.nodes) if i != 3)

    def test_garbage_flood_graylists_the_address(self) -> None:
        """Unauthenticated garbage is counted per address, then the address is ignored."""
        net = build(3)
        net.run_until(3.0)
        rng = np.random.default_rng(0)
        for k in range(400):
            net.inject(("192.0.2.66", 9), 0, rng.bytes(200), delay=k * 0.001)
        net.run_until(5.0)
        node = net.nodes[0]
        assert node.scores.addr_graylisted("addr:192.0.2.66:9", net.now)
        assert node.counters.get("dropped_graylisted_addr", 0) > 0
        assert any(isinstance(e, Graylisted) for _, i, e in net.events if i == 0)

    @pytest.mark.parametrize("norm_bound", [3.0, None])
    def test_byzantine_outlier_is_clipped_and_penalised(self, norm_bound: float | None) -> None:
        """A peer sending huge models barely moves honest nodes: dropped by the norm bound
        (or, with the bound off, clipped), and charged either way."""
        gossip = FAST.model_copy(update={"aggregation": "clipped", "max_norm_ratio": norm_bound})
        # Honest nodes disagree a little, so "typical distance" is a real, nonzero scale.
        targets = 0.1 * np.random.default_rng(2).normal(size=(6, DIM)).astype(np.float32)
        net = build(6, gossip=gossip, targets=targets)
        evil = net.nodes[5]
        evil.outgoing_hook = lambda core, peer, model: model + 1e4
        net.run_until(30.0)
        honest = np.stack([n.model for n in net.nodes[:5]])
        assert np.abs(honest).max() < 1e3  # clipping kept them far from +1e4
        charged = ("penalty_outlier", "penalty_norm_bound")
        assert sum(n.counters.get(k, 0) for n in net.nodes[:5] for k in charged) > 0

    def test_wrong_schema_delta_rejected(self) -> None:
        """A node with another schema hash cannot inject its deltas."""
        net = build(4)
        net.nodes[3].schema = b"x" * 32
        net.run_until(20.0)
        assert sum(n.counters.get("penalty_schema_mismatch", 0) for n in net.nodes[:3]) > 0


class TestLiveness:
    def test_overdue_probes_are_reported_in_first_heard_order(self) -> None:
        """expire() scans only the peers with a probe out (a set), yet reports them in the
        order the peers were first heard from, so a seeded run reproduces whatever the
        hash seed; a forgotten peer heard again counts as new."""
        lv = Liveness(initial_timeout=1.0)
        peers = [bytes([i]) * 8 for i in (9, 3, 7, 1, 5, 8, 2, 6)]
        for p in peers:
            lv.heard_from(p, 0.0)
        lv.forget(peers[0])
        lv.heard_from(peers[0], 0.0)
        for k, p in enumerate(reversed(peers)):
            lv.probe_sent(p, k, 0.0)
        expected = [(p, PeerState.SUSPECT) for p in [*peers[1:], peers[0]]]
        assert lv.expire(2.0) == expected
        assert lv.expire(3.0) == []

    def test_probe_suspect_dead_alive(self) -> None:
        """Missed probes: suspect, then dead after dead_after; any message revives."""
        lv = Liveness(initial_timeout=1.0, dead_after=2)
        p = b"p"
        lv.probe_sent(p, 1, 0.0)
        assert lv.expire(0.5) == []
        assert lv.expire(1.0) == [(p, PeerState.SUSPECT)]
        lv.probe_sent(p, 2, 2.0)
        assert lv.expire(3.0) == [(p, PeerState.DEAD)]
        lv.heard_from(p, 4.0)
        assert lv.state(p) is PeerState.ALIVE

    def test_timeout_adapts_to_rtt(self) -> None:
        """After fast PONGs the timeout shrinks toward srtt + 4·rttvar (clamped)."""
        lv = Liveness(initial_timeout=1.0, min_timeout=0.05)
        p = b"p"
        for k in range(10):
            lv.probe_sent(p, k, float(k))
            assert lv.pong(p, k, k + 0.02) is not None
        assert lv.timeout(p) < 0.2
        assert lv.pong(p, 99, 20.0) is None  # unsolicited PONG is ignored


class TestView:
    def test_cyclon_shuffle_swaps_entries(self) -> None:
        """start_shuffle removes the oldest peer and sends self + a sample; merge fills slots."""
        import random

        me = Identity.from_seed(b"m" * 32)
        others = [Identity.from_seed(bytes([i]) * 32) for i in range(6)]
        view = PeerSamplingView(me.peer_id, 4, random.Random(0))
        descs = [PeerDescriptor(o.peer_id, o.keys.box_key, o.keys.box_key_sig, ()) for o in others]
        for d in descs[:4]:
            assert view.add(d)
        assert len(view) == 4
        selfdesc = PeerDescriptor(me.peer_id, me.keys.box_key, me.keys.box_key_sig, ())
        started = view.start_shuffle(3, selfdesc)
        assert started is not None
        q, sent = started
        assert q not in view and sent[0].peer_id == me.peer_id and len(sent) == 3
        view.merge(descs[4:], replaceable=[d.peer_id for d in sent[1:]])
        assert len(view) == 4 and descs[4].peer_id in view
        assert not view.add(selfdesc)

    def test_host_counts_follow_every_change(self) -> None:
        """The per-host index the Sybil cap reads stays equal to a recount of the view through
        adds (new and refreshed), evictions, shuffles, merges, removals and host changes. As
        in the node, a peer's host is where it was heard from, else what its stored descriptor
        advertises."""
        import random

        rng = random.Random(3)
        me = Identity.from_seed(b"m" * 32)
        ids = [Identity.from_seed(bytes([i]) * 32).peer_id for i in range(1, 30)]
        hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        heard_at: dict[bytes, str] = {}

        def host_of(p: bytes) -> str | None:
            d = view.descriptor(p)
            return heard_at.get(p) or (d.addrs[0] if d is not None and d.addrs else None)

        view = PeerSamplingView(me.peer_id, 8, random.Random(0), host_of)

        def desc(p: bytes) -> PeerDescriptor:
            addrs = (rng.choice(hosts),) if rng.random() < 0.7 else ()
            return PeerDescriptor(p, b"k" * 32, b"s" * 64, addrs, age=rng.randrange(3))

        for step in range(600):
            p = rng.choice(ids)
            op = rng.randrange(5)
            if op == 0:
                view.add(desc(p))
            elif op == 1:
                view.remove(p)
            elif op == 2:
                view.start_shuffle(3, desc(me.peer_id))
            elif op == 3:
                view.merge([desc(q) for q in rng.sample(ids, 3)], replaceable=view.peers()[:2])
            else:
                heard_at[p] = rng.choice(hosts)
                view.rehost(p)
            recount = Counter(h for q in view.peers() if (h := host_of(q)) is not None)
            assert view.host_counts == recount, step

    def test_ages_and_evictions_match_a_plain_model(self) -> None:
        """The view counts ages from a shuffle clock and finds the oldest through a heap. Over
        random adds (new, refreshed younger and older), removals, shuffles and merges, a plain
        dict of ages, aged one by one and scanned for the oldest (ties: the smallest PeerID),
        must agree on the members, on every age sent, on Q and on every eviction."""
        import random

        rng = random.Random(5)
        me = Identity.from_seed(b"m" * 32)
        ids = [bytes([i]) * 4 for i in range(1, 40)]
        view = PeerSamplingView(me.peer_id, 10, random.Random(0))
        model: dict[bytes, int] = {}

        def oldest() -> bytes:
            return max(sorted(model), key=lambda p: model[p])

        def model_add(p: bytes, age: int) -> None:
            if p in model:
                model[p] = min(model[p], age)
            else:
                if len(model) >= 10:
                    del model[oldest()]
                model[p] = age

        def desc(p: bytes, age: int) -> PeerDescriptor:
            return PeerDescriptor(p, b"k" * 32, b"s" * 64, (), age=age)

        for step in range(3000):
            op = rng.randrange(4)
            if op == 0:
                p, age = rng.choice(ids), rng.randrange(6)
                view.add(desc(p, age))
                model_add(p, age)
            elif op == 1:
                p = rng.choice(ids)
                view.remove(p)
                model.pop(p, None)
            elif op == 2 and model:
                for p in model:
                    model[p] += 1
                q_model = oldest()
                del model[q_model]
                started = view.start_shuffle(4, desc(me.peer_id, 0))
                assert started is not None
                q, sent = started
                assert q == q_model, step
                assert all(d.age == model[d.peer_id] for d in sent[1:]), step
            elif op == 3:
                received = [desc(p, rng.randrange(6)) for p in rng.sample(ids, 3)]
                replaceable = view.peers()[:2]
                view.merge(received, replaceable)
                victims = [p for p in replaceable if p in model]
                for d in received:
                    if d.peer_id in model or len(model) < 10:
                        model_add(d.peer_id, d.age)
                    elif victims:
                        del model[victims.pop()]
                        model_add(d.peer_id, d.age)
            assert view.peers() == sorted(model), step


@pytest.mark.parametrize("n", [2, 3])
def test_tiny_networks_work(n: int) -> None:
    """Even 2-3 nodes discover each other and exchange deltas; each node reports each peer's
    arrival exactly once although Cyclon shuffles rotate it out of the view and back."""
    net = build(n)
    net.run_until(10.0)
    for i, node in enumerate(net.nodes):
        joined = [e.peer for _, j, e in net.events if j == i and isinstance(e, PeerJoined)]
        assert sorted(joined) == sorted(p.identity.peer_id for p in net.nodes if p is not node)
        assert node.counters.get("deltas_received", 0) > 0
    for node in net.nodes:  # a Cyclon initiator drops the responder until it answers
        assert len(set(node.view.peers()) | set(node._pending_shuffle)) == n - 1


def test_unknown_sender_gets_introduced_not_penalised() -> None:
    """A learns of B first (peer sampling): A's first sealed datagrams to B carry an intro,
    so B learns A from them without any HELLO. A sealed datagram from a sender B does not
    know and that brings no intro (B restarted and forgot it, say) cannot be authenticated:
    B answers it with a HELLO rather than counting A as misbehaving, and a flood of them
    from one address gets one HELLO per shuffle period and is not counted against it."""
    import random

    from flava_p2p.sim.virtual_network import VirtualNetwork

    net = VirtualNetwork(seed=3)
    ids = [Identity.from_seed(bytes([77, i]) * 16) for i in range(2)]
    for i in range(2):
        net.add(
            NodeCore(
                ids[i],
                network_id="t",
                genesis=np.zeros(DIM, np.float32),
                schema=SCHEMA,
                gossip=FAST,
                rng=random.Random(i),
            )
        )
    b = ids[1]
    addr_b = net.address(1)
    from flava_p2p.identity import make_multiaddr

    desc = PeerDescriptor(
        b.peer_id, b.keys.box_key, b.keys.box_key_sig, (make_multiaddr(*addr_b, b.peer_id),)
    )
    net.nodes[0].restore_view([desc])
    net.start()
    net.run_until(5.0)
    node_b = net.nodes[1]
    assert ids[0].peer_id in node_b.view and node_b.wire.knows(ids[0].peer_id)
    assert node_b.counters.get("hello_to_unknown_sender", 0) == 0
    assert not any(k.startswith("penalty_") for k in node_b.counters)

    from flava_p2p.wire.endpoint import WireEndpoint
    from flava_p2p.wire.messages import Ping

    stranger = WireEndpoint(Identity.from_seed(bytes([78]) * 32), "t")
    stranger.add_peer(b.keys)
    stranger._peers[b.peer_id].heard = True  # as if B had talked to it, then forgot it
    before = node_b.counters.get("hello_to_unknown_sender", 0)
    now = net.now
    for i in range(20):
        for d in stranger.seal(b.peer_id, Ping(i), now):
            node_b.receive(d, ("10.9.9.9", 4000), now)
    assert node_b.counters["hello_to_unknown_sender"] == before + 1
    assert node_b.wire.rejections.for_source("addr:10.9.9.9:4000") == {"unknown_sender": 20}
    assert not node_b.scores.addr_graylisted("addr:10.9.9.9:4000", now)
    assert ids[0].peer_id in node_b.view
    assert node_b.wire.knows(ids[0].peer_id)


def test_a_new_peers_fragmented_first_delta_is_repaired() -> None:
    """A stranger's first delta comes in intro fragments and one is lost: B, which never
    heard of the stranger, learns its keys and its address from the pieces that arrived, so
    its NACK reaches the stranger and the repair completes the message."""
    from flava_p2p.wire.endpoint import KIND_NACK, WireEndpoint
    from flava_p2p.wire.messages import Delta
    from flava_p2p.wire.tensors import encode_vector

    node_b = lone_core(bytes([79]), dim=3000)
    node_b.start(0.0)
    node_b.datagrams_to_send()
    stranger = WireEndpoint(Identity.from_seed(bytes([78]) * 32), "t")
    stranger.add_peer(node_b.identity.keys)
    vector = encode_vector(np.zeros(3000, np.float32))
    delta = Delta(SCHEMA, node_b.genesis_hash, 0, 1, vector)
    frags = stranger.seal(node_b.identity.peer_id, delta, 0.1, schema=SCHEMA)
    assert len(frags) >= 3
    at = ("10.9.9.9", 4000)
    for d in frags[:1] + frags[2:]:  # the second piece is lost
        node_b.receive(d, at, 0.1)
    nacks = []
    for k in range(1, 40):  # NACKs are due after a quiet spell
        node_b.timer(0.1 + 0.05 * k)
        nacks += [s for s in node_b.datagrams_to_send() if s.datagram[:1] == KIND_NACK]
    assert nacks and all(s.addr == at for s in nacks)
    assert not [m for s in nacks for m in stranger.receive(s.datagram, 1.0, "b")]  # no message
    for _, d in stranger.take_outbox():
        node_b.receive(d, at, 1.0)
    assert node_b.counters.get("deltas_received") == 1
    assert node_b.wire.rejections.total() == 0


def test_late_starter_catches_up_instead_of_being_stale() -> None:
    """Round counters are local: a node 30 rounds ahead (it started long before the others)
    must still merge their deltas once they catch up, and never penalise them for lagging."""
    net = build(3)
    net.nodes[0].round = 30
    net.run_until(20.0)
    for node in net.nodes:
        assert not any(k.startswith("penalty_") for k in node.counters)
    assert net.nodes[0].counters.get("deltas_received", 0) > 0
    assert min(n.round for n in net.nodes) >= 30
    # ...and rounds still advance once per period, not once per tick anywhere (20 s, period 1 s)
    assert max(n.round for n in net.nodes) <= 30 + 20 * 1.3


class TestBeacons:
    GROUP = ("239.255.70.71", 7947)

    def _core(self, i: int) -> NodeCore:
        return lone_core(bytes([7, i]), advertised=[], beacon=(self.GROUP, 2.0))

    def test_beacons_introduce_nodes_without_replies(self) -> None:
        """A beacon heard on the group puts its sender in the view, asks no reply, and the
        sender's own looped-back beacon is ignored; beacons repeat about once per period."""
        # Prepare
        a, b = self._core(0), self._core(1)
        a.start(100.0)
        b.start(100.0)
        beacons = [s for s in a.datagrams_to_send() if s.addr == self.GROUP]
        b.datagrams_to_send()
        assert len(beacons) == 1
        # Execute: the group delivers A's beacon to B and back to A (multicast loop).
        b.receive(beacons[0].datagram, ("10.0.0.1", 4000), 100.1)
        a.receive(beacons[0].datagram, ("10.0.0.1", 4000), 100.1)
        # Assert
        assert a.identity.peer_id in b.view
        assert b.address_of(a.identity.peer_id) == ("10.0.0.1", 4000)
        assert b.datagrams_to_send() == []  # no HELLO_ACK: beacons cost no replies
        assert len(a.view) == 0 and a.address_of(a.identity.peer_id) is None
        assert a.counters["own_datagram_ignored"] == 1
        for t in np.arange(100.2, 120.0, 0.1):
            a.timer(float(t))
        sent = sum(s.addr == self.GROUP for s in a.datagrams_to_send())
        assert 8 <= sent <= 12  # 20 s at a 2 s mean period (±20% jitter)

    def test_no_beacons_unless_enabled(self) -> None:
        """Without a beacon group nothing is ever sent to a multicast address."""
        net = build(3)
        net.run_until(10.0)
        assert all(n.counters.get("beacons_sent", 0) == 0 for n in net.nodes)


class TestSlowTraining:
    def _core(self) -> NodeCore:
        return lone_core(b"s")

    def test_merge_during_a_burst_is_kept(self) -> None:
        """A gossip round that merged peers' models while training ran is not overwritten:
        the burst lands as an update on top of the merged model."""
        # Prepare
        core = self._core()
        base = np.ones(DIM, np.float32)
        core.model = base.copy()
        merged_in = np.full(DIM, 0.5, np.float32)
        trained = base + 0.25
        # Execute: the merge happens after the burst started from ``base``.
        core.model = core.model + merged_in
        core.local_update(trained, 10, DpInfo(None, None), 1.0, base=base)
        # Assert
        np.testing.assert_allclose(core.model, base + merged_in + 0.25)
        assert core.counters["merged_during_training"] == 1

    def test_no_merge_adopts_the_trained_model_exactly(self) -> None:
        """Without a merge in between, the trained weights are adopted bit for bit."""
        core = self._core()
        base = np.linspace(-1, 1, DIM).astype(np.float32)
        core.model = base.copy()
        trained = (base * np.float32(1.1)).astype(np.float32)
        core.local_update(trained, 10, DpInfo(None, None), 1.0, base=base)
        assert np.array_equal(core.model, trained)
        assert "merged_during_training" not in core.counters


def test_inflated_sample_count_is_capped() -> None:
    """A peer claiming 10⁹ examples gets at most twice the median claim's weight in a merge."""
    from flava_p2p.protocol.node import _Received

    # Prepare: own model and two honest peers at 0 (180 examples each), an inflater at 100.
    core = lone_core(b"c")
    core.start(0.0)
    core.sample_count = 180
    zeros, far = np.zeros(DIM, np.float32), np.full(DIM, 100.0, np.float32)
    core._inbox = {b"h1": _Received(zeros, 180, 0), b"h2": _Received(zeros, 180, 0)}
    core._inbox[b"byz"] = _Received(far, 10**9, 0)
    # Execute: the next gossip round merges with the (non-robust) mean.
    core.timer(core._next_gossip)
    # Assert: weight 360 of 900 → 40 (uncapped it would be ≈ 100).
    np.testing.assert_allclose(core.model, np.full(DIM, 40.0), rtol=1e-5)
    assert core.counters["sample_count_capped"] == 1


class TestScreening:
    def _core(self, threshold: float | None, ratio: float | None = 3.0) -> NodeCore:
        gossip = FAST.model_copy(update={"opposed_cosine": threshold, "max_norm_ratio": ratio})
        core = lone_core(b"o", gossip)
        core.start(0.0)
        core.sample_count = 100
        return core

    def _merge(self, core: NodeCore) -> None:
        from flava_p2p.protocol.node import _Received

        rng = np.random.default_rng(0)
        learnt = rng.normal(size=DIM).astype(np.float32)
        core.local_update(learnt, 100, DpInfo(None, None), 0.0)  # own training: genesis → learnt
        honest = learnt + 0.3 * rng.normal(size=DIM).astype(np.float32)
        core._inbox = {b"honest": _Received(honest, 100, 0), b"flip": _Received(-learnt, 100, 0)}
        core.timer(core._next_gossip)

    def test_sign_flipped_model_is_not_merged(self) -> None:
        """A model on the far side of the genesis is dropped and charged; the honest one merged."""
        core = self._core(-0.2)
        self._merge(core)
        assert set(core.last_inputs) == {b"honest"}
        assert core.counters["penalty_opposed"] == 1

    def test_check_can_be_turned_off(self) -> None:
        """With opposed_cosine: null both models are merged (plain baselines)."""
        core = self._core(None)
        self._merge(core)
        assert set(core.last_inputs) == {b"honest", b"flip"}
        assert "penalty_opposed" not in core.counters

    def test_a_dragged_node_still_knows_which_way_is_honest(self) -> None:
        """The direction reference is the node's own training, not its model: a node already
        pulled past the genesis keeps merging honest models and refusing the flipped ones."""
        from flava_p2p.protocol.node import _Received

        core = self._core(-0.2)
        learnt = np.random.default_rng(3).normal(size=DIM).astype(np.float32)
        core.local_update(learnt, 100, DpInfo(None, None), 0.0)
        core.model = -0.5 * learnt  # captured: dragged through the genesis by attackers
        core._inbox = {b"honest": _Received(learnt, 100, 0), b"flip": _Received(-learnt, 100, 0)}
        core.timer(core._next_gossip)
        assert set(core.last_inputs) == {b"honest"}

    @pytest.mark.parametrize("threshold", [0.65, None])
    def test_alie_model_is_not_merged(self, threshold: float | None) -> None:
        """ALIE's μ − 2σ of four honest models (the real attack code) is dropped and charged as
        one-sided while both honest models are merged; with max_one_sided: null it is merged."""
        from flava_p2p.attacks import AttackContext, apply_model_attack, parse_attack
        from flava_p2p.protocol.node import _Received

        dim, rng = 2000, np.random.default_rng(5)
        gossip = FAST.model_copy(update={"max_one_sided": threshold})
        core = lone_core(b"a", gossip, dim=dim)
        core.start(0.0)
        learnt = rng.normal(size=dim).astype(np.float32)
        core.local_update(learnt, 100, DpInfo(None, None), 0.0)
        honest = [learnt + 0.3 * rng.normal(size=dim).astype(np.float32) for _ in range(4)]
        ctx = AttackContext(
            own=honest[0], genesis=core.genesis, received=honest[1:], recipient=b"o",
            recipient_model=None, rng=rng, n_honest=12, n_byzantine=4,
        )  # fmt: skip
        alie = apply_model_attack(parse_attack("alie:z=2"), ctx)
        assert alie is not None
        core._inbox = {
            b"h1": _Received(honest[1], 100, 0),
            b"h2": _Received(honest[2], 100, 0),
            b"alie": _Received(alie, 100, 0),
        }
        core.timer(core._next_gossip)
        if threshold is None:
            assert set(core.last_inputs) == {b"h1", b"h2", b"alie"}
        else:
            assert set(core.last_inputs) == {b"h1", b"h2"}
            assert core.counters["penalty_one_sided"] == 1

    def test_honest_models_are_never_one_sided(self) -> None:
        """Models that differ from ours by training noise sit near 0.5, far below the default
        0.65, whatever the noise scale; identical models (nothing to judge) count as 0.5."""
        from flava_p2p.config import GossipConfig

        rng = np.random.default_rng(6)
        core = lone_core(b"n", dim=7500)
        core.model = rng.normal(size=7500).astype(np.float32)
        limit = GossipConfig().max_one_sided
        assert limit is not None
        for scale in (1e-4, 1e-2, 1.0):
            for _ in range(50):
                other = core.model + scale * rng.normal(size=7500).astype(np.float32)
                assert one_sidedness(other, core.model) < limit
        assert one_sidedness(core.model.copy(), core.model) == 0.5

    def test_scaled_model_is_not_merged(self) -> None:
        """A model moved 10x as far from genesis as the others is dropped and charged; with
        max_norm_ratio: null it is merged."""
        from flava_p2p.protocol.node import _Received

        rng = np.random.default_rng(1)
        learnt = rng.normal(size=DIM).astype(np.float32)
        for ratio, expected in ((3.0, {b"honest"}), (None, {b"honest", b"scaled"})):
            core = self._core(None, ratio)
            core.model = learnt.copy()
            core._inbox = {
                b"honest": _Received(learnt * np.float32(1.2), 100, 0),
                b"scaled": _Received(learnt * np.float32(10), 100, 0),
            }
            core.timer(core._next_gossip)
            assert set(core.last_inputs) == expected
            assert ("penalty_norm_bound" in core.counters) == (ratio is not None)

    def test_a_fresh_node_accepts_trained_peers(self) -> None:
        """A node still at the genesis merges its peers' trained models (no false alarms)."""
        from flava_p2p.protocol.node import _Received

        core = self._core(-0.2, 3.0)
        rng = np.random.default_rng(2)
        core._inbox = {
            bytes([i]): _Received(rng.normal(size=DIM).astype(np.float32), 100, 0) for i in range(3)
        }
        core.timer(core._next_gossip)
        assert len(core.last_inputs) == 3
        assert not any(k.startswith("penalty_") for k in core.counters)


class TestLayering:
    def test_protocol_and_wire_import_without_torch(self) -> None:
        """The sans-I/O core loads without torch or opacus (a fresh interpreter checks)."""
        import subprocess
        import sys

        code = (
            "import sys; import flava_p2p.protocol.node, flava_p2p.wire.endpoint; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'opacus', "
            "'torchaudio', 'onnxruntime')); print(','.join(bad))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == ""


class TestScreens:
    def test_alignment_screen_waits_for_agreement_then_refuses_noise(self) -> None:
        """A noise model (cosine ≈ 0 with ours) is refused as misaligned once the recent
        median cosine shows honest models agree, and let through before (when every model is
        mostly DP noise); an aligned honest model is always kept."""
        from flava_p2p.protocol.screens import ModelScreens

        rng = np.random.default_rng(3)
        genesis = np.zeros(2000, np.float32)
        direction = rng.normal(size=2000).astype(np.float32)
        own = genesis + direction
        honest = genesis + direction + 0.5 * rng.normal(size=2000).astype(np.float32)
        noise = genesis + np.float32(np.linalg.norm(direction) / np.sqrt(2000)) * rng.normal(
            size=2000
        ).astype(np.float32)
        received = {b"h": honest, b"n": noise}
        screens = ModelScreens(max_norm_ratio=None, opposed_cosine=None, max_one_sided=None)
        progress = direction.astype(np.float64)
        agreed = screens.judge(own, genesis, progress, received, typical_cosine=0.6)
        assert agreed.kept == [b"h"] and agreed.refused == [(b"n", "misaligned")]
        assert abs(agreed.cosines[b"n"]) < 0.1 < agreed.cosines[b"h"]
        early = screens.judge(own, genesis, progress, received, typical_cosine=0.05)
        assert early.kept == [b"h", b"n"] and not early.refused
        off = ModelScreens(None, None, None, None).judge(own, genesis, progress, received, 0.9)
        assert off.kept == [b"h", b"n"]


class TestReferenceScreen:
    """Models judged by what they do on public reference clips (a loss supplied by the
    learning side; here the distance to a target model stands in for it)."""

    def _core(
        self, ratio: float | None, reputation: int | None = None
    ) -> tuple[NodeCore, np.ndarray]:
        from flava_p2p.config import SCREENS_OFF

        target = np.random.default_rng(7).normal(size=DIM).astype(np.float32)
        gossip = FAST.model_copy(
            update={
                **SCREENS_OFF,
                "max_reference_loss": ratio,
                "reputation_min_refused": reputation,
            }
        )
        core = lone_core(b"q", gossip)
        core.reference_loss = lambda w: float(np.linalg.norm(np.asarray(w) - target))
        core.start(0.0)
        core.sample_count = 100
        core.local_update(0.8 * target, 100, DpInfo(None, None), 0.0)
        return core, target

    def _round(self, core: NodeCore, models: dict[bytes, np.ndarray]) -> None:
        from flava_p2p.protocol.node import _Received

        core._inbox = {
            p: _Received(m.astype(np.float32), 100, core.round) for p, m in models.items()
        }
        core.timer(core._next_gossip)

    def test_worse_than_untrained_is_refused_behind_is_kept(self) -> None:
        core, target = self._core(1.5)
        rng = np.random.default_rng(1)
        noise = 5 * rng.normal(size=DIM)  # far worse than the genesis (0) on the reference
        behind = 0.2 * target  # honest but late: better than the genesis
        self._round(core, {b"noise": noise, b"behind": behind, b"good": 0.9 * target})
        assert set(core.last_inputs) == {b"behind", b"good"}
        assert core.counters["penalty_reference"] == 1

    def test_persistent_sender_is_graylisted_honest_never(self) -> None:
        core, target = self._core(1.5)
        rng = np.random.default_rng(2)
        for r in range(40):
            core._now = core._next_gossip
            self._round(core, {b"noise": 5 * rng.normal(size=DIM),
                               b"late": (0.1 + 0.02 * r) * target})  # fmt: skip
        graylisted = core.scores.graylisted(core._now)
        assert b"noise" in graylisted and b"late" not in graylisted

    def test_anchor_follows_every_merge(self) -> None:
        """The public anchor (supplied by the learning side) is applied to the merged model,
        before it is announced and trained on."""
        core, target = self._core(None)
        self._round(core, {b"p": 0.9 * target})
        merged = core.model.copy()
        core.reference_anchor = lambda w: w + np.float32(1.0)
        core._now = core._next_gossip
        self._round(core, {})
        np.testing.assert_allclose(core.model, merged + 1.0)

    def test_off_merges_everything(self) -> None:
        core, _ = self._core(None)
        self._round(core, {b"noise": 5 * np.random.default_rng(1).normal(size=DIM)})
        assert set(core.last_inputs) == {b"noise"}


def test_score_decay_is_the_nodes_setting() -> None:
    """gossip.score_decay_per_s sets how fast a penalised peer is forgiven: 0 never."""
    fast = lone_core(b"d", FAST)
    never = lone_core(b"e", FAST.model_copy(update={"score_decay_per_s": 0.0}))
    for core in (fast, never):
        core.scores.penalize(b"p", "opposed", 0.0)
    assert fast.scores.score(b"p", 100.0) == 0.0
    assert never.scores.score(b"p", 100.0) == -1.0


class TestReputation:
    """The reputation remembers screening verdicts across rounds (gossip.reputation_*)."""

    RULE = ReputationRule(min_refused=3, refused_fraction=0.3, half_life_s=3600.0)

    def _encounters(
        self, scores: PeerScores, peer: bytes, refused_every: int, n: int, gap_s: float = 60.0
    ) -> int | None:
        """Feed ``n`` judged models, one in ``refused_every`` refused (charged like a screen
        refusal), ``gap_s`` apart; the encounter that graylisted the peer (1-based), or None."""
        for k in range(1, n + 1):
            now = k * gap_s
            refused = k % refused_every == 0
            if refused:
                scores.penalize(peer, "reference", now)
            if scores.observe(peer, refused, now) or scores.is_graylisted(peer, now):
                return k
        return None

    def test_intermittent_attacker_is_caught_after_bounded_encounters(self) -> None:
        """Attacking one encounter in three, met once a minute: the decaying score forgives
        every penalty before the next, so only the memory catches it, by its 9th encounter."""
        with_memory = PeerScores(reputation=self.RULE)
        assert self._encounters(with_memory, b"a", refused_every=3, n=100) == 9
        assert with_memory.evidence(b"a") is not None
        assert self._encounters(PeerScores(reputation=None), b"a", 3, 100) is None

    def test_rarely_refused_honest_peer_is_never_graylisted(self) -> None:
        scores = PeerScores(reputation=self.RULE)
        assert self._encounters(scores, b"h", refused_every=10, n=500) is None
        assert scores.graylist_terms() == {}

    def test_repeat_offences_double_the_term(self) -> None:
        scores = PeerScores(graylist_s=300.0, reputation=self.RULE)
        for now in (0.0, 1.0, 2.0):
            caught = scores.observe(b"a", True, now)
        assert caught and scores.graylist_terms()[b"a"] == 302.0
        assert scores.observe(b"a", True, 400.0)  # the evidence is remembered: caught at once
        assert scores.graylist_terms()[b"a"] == 400.0 + 600.0

    def test_evidence_survives_a_restart(self) -> None:
        """Saved and restored, the reputation decides the next encounters the same way."""
        live = PeerScores(reputation=self.RULE)
        for k in range(5):
            live.observe(b"a", k % 2 == 0, float(k))
        live.observe(b"b", False, 5.0)
        restored = PeerScores(reputation=self.RULE)
        restored.load_state(live.to_state())
        for k in range(5, 40):
            refused = k % 3 == 0
            assert live.observe(b"a", refused, float(k)) == restored.observe(b"a", refused, k)
        assert live.to_state() == restored.to_state()

    def test_node_graylists_a_model_poisoner_attacking_every_third_round(self) -> None:
        """End to end in the core: noise on the reference set one round in three."""
        reference = TestReferenceScreen()
        core, target = reference._core(1.5, reputation=3)
        rng = np.random.default_rng(4)
        for r in range(30):
            core._now = core._next_gossip
            noisy = r % 3 == 0
            sent = 5 * rng.normal(size=DIM) if noisy else 0.9 * target
            reference._round(core, {b"every3": sent, b"honest": 0.85 * target})
        assert core.counters.get("graylisted_by_reputation") == 1
        assert core.scores.graylisted(core._now) == [b"every3"]
