"""NodeCore: one gossip-learning node, sans I/O.

Inputs: ``receive(datagram, addr, now)``, ``timer(now)`` and ``local_update(model, ...)`` (the
driver's training result). Outputs, pulled by the driver: ``datagrams_to_send()`` and
``events()``; ``next_deadline()`` says when to call ``timer`` again. The real node drives this
from asyncio (``runtime/``), the simulator from a virtual clock (``sim/``).

One gossip round (period jittered by ±jitter):
1. merge the deltas received since the last round with the own model (configured rule; the own
   model is the anchor; weights = sample count × staleness), flagging outliers;
2. emit :class:`TrainRequest` — the driver trains K DP-SGD steps from the merged model;
3. on :meth:`local_update`, send the delta against the genesis model to ``fanout`` random peers.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flava_p2p.aggregation import AggParams, aggregate, staleness_weights
from flava_p2p.config import GossipConfig
from flava_p2p.identity import (
    Identity,
    IdentityError,
    PeerKeys,
    make_multiaddr,
    parse_multiaddr,
    peer_id_from_str,
    verify_key_from_peer_id,
)
from flava_p2p.protocol.carriers import UDP_ONLY, best_endpoint, libp2p_peer
from flava_p2p.protocol.liveness import Liveness, PeerState
from flava_p2p.protocol.scores import PeerScores, ReputationRule
from flava_p2p.protocol.screens import ModelScreens, cap_samples
from flava_p2p.protocol.sybil import SybilGuard, host_key
from flava_p2p.protocol.view import PeerSamplingView
from flava_p2p.wire.endpoint import Inbound, WireEndpoint
from flava_p2p.wire.messages import (
    Delta,
    DpInfo,
    Hello,
    HelloAck,
    Message,
    PeerDescriptor,
    Ping,
    Pong,
    Shuffle,
    ShuffleReply,
    schema_differences,
)
from flava_p2p.wire.tensors import encode_vector

Addr = tuple[str, int]
Vec = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Send:
    """A datagram the driver must send to ``addr``."""

    addr: Addr
    datagram: bytes


@dataclass(frozen=True)
class PeerJoined:
    """A peer entered the view for the first time, or again after it left (dead/graylisted).

    Cyclon's shuffles rotate peers out of the view and back all the time; those rotations are
    not reported, so an operator's log shows real arrivals only.
    """

    peer: bytes


@dataclass(frozen=True)
class PeerLeft:
    """A peer left the view: ``dead`` (missed probes) or ``graylisted``."""

    peer: bytes
    reason: str


@dataclass(frozen=True)
class TrainRequest:
    """Train from the current model now, then call :meth:`NodeCore.local_update`."""

    round: int


@dataclass(frozen=True)
class ModelMerged:
    """The model changed by merging ``inputs`` received models (load it before training)."""

    round: int
    model: Vec
    inputs: int


@dataclass(frozen=True)
class SchemaMismatch:
    """A peer trains another model (encoder, front end, head, labels): it was refused.

    Reported once per peer; ``differences`` says what differs, one ``field: ours X, theirs Y``
    line each, so an operator can see which side to reconfigure.
    """

    peer: bytes
    differences: tuple[str, ...]


@dataclass(frozen=True)
class Graylisted:
    """A peer (PeerID) or an address (``addr:host:port``) is being ignored for a while."""

    who: str


Event = PeerJoined | PeerLeft | TrainRequest | ModelMerged | Graylisted | SchemaMismatch


@dataclass
class _Received:
    model: Vec
    samples: int
    round: int


class MessageNoise(Protocol):
    """Message-level (node-level) noise on outgoing deltas, injected by the node assembly.

    ``learning/message_noise.py`` implements it; the core only needs this much, so the
    protocol layer imports no learning code (and no torch or opacus).
    """

    clip: float
    noise_multiplier: float
    delta: float
    releases: int

    def release(self, delta_vec: Vec, rng: np.random.Generator) -> Vec:
        """Clip and noise one outgoing delta; counts the release."""
        ...

    def epsilon(self) -> float:
        """Node-level ε after every release so far."""
        ...


#: Hook for Byzantine behaviour (``attacks/``): given the honest outgoing model and context,
#: return the model to send to one recipient (None: send nothing to it).
OutgoingHook = Callable[["NodeCore", bytes, Vec], Vec | None]


def genesis_hash(genesis: Vec) -> bytes:
    """32-byte digest identifying the network's starting model."""
    return hashlib.sha256(np.ascontiguousarray(genesis, dtype="<f4").tobytes()).digest()


#: Screen verdicts the reputation accumulates as evidence: the ones an honest model of the task
#: does not earn (too large a change, pointing against ours, one-sided, worse than untrained on
#: the reference clips). "misaligned" and "outlier" are left out: honest peers whose data
#: differ a lot from ours (one speaker each) earn them now and then, and must not be graylisted.
SCREEN_VERDICTS = frozenset({"norm_bound", "opposed", "one_sided", "reference"})

#: Seconds between HELLOs to the bootstrap addresses while the view is empty; also how long a
#: node whose only peer it just shuffled with waits for that peer's reply before it counts as
#: isolated.
BOOT_RETRY_S = 2.0


def reputation_rule(gossip: GossipConfig) -> ReputationRule | None:
    """The reputation memory configured in ``gossip`` (None when it is off)."""
    if gossip.reputation_min_refused is None:
        return None
    return ReputationRule(
        min_refused=float(gossip.reputation_min_refused),
        refused_fraction=gossip.reputation_refused_fraction,
        half_life_s=gossip.reputation_half_life_s,
    )


@dataclass
class ScreenMemory:
    """The screens' short-term memory (saved with :meth:`NodeCore.screen_state`)."""

    distances: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    """Recent neighbour distances: the clipping radius must come from many rounds, since one
    round has only ~fanout inputs and a single attacker would dominate their median."""
    cosines: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    """Recent received models' cosines with ours: their median tells the alignment screen
    whether honest models agree yet (a window, so a minority of attackers cannot move it)."""
    reference_losses: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    """Recent received models' losses on the public reference set."""
    first_heard: dict[bytes, float] = field(default_factory=dict)
    """When each peer was first heard from (``gossip.trust_ramp_s``; kept only when on)."""
    verdicts: set[bytes] = field(default_factory=set)
    """Senders whose model earned a :data:`SCREEN_VERDICTS` penalty in the round being merged:
    the reputation's evidence (see PeerScores.observe)."""


def _descriptor_host(desc: PeerDescriptor) -> str | None:
    """The host a descriptor advertises (its first dialable address)."""
    return _addrs_host(desc.addrs)


@lru_cache(maxsize=65_536)
def _addrs_host(addrs: tuple[str, ...]) -> str | None:
    for text in addrs:
        try:
            host, _, _ = parse_multiaddr(text)
        except IdentityError:
            continue
        return host_key(host)
    return None


def _keys_of(desc: PeerDescriptor) -> PeerKeys:
    """The keys a descriptor claims for its peer (the wire checks them when it learns them)."""
    return PeerKeys(
        desc.peer_id, verify_key_from_peer_id(desc.peer_id), desc.box_key, desc.box_key_sig
    )


def _seen_at(addr: Addr, sender: bytes) -> tuple[str, ...]:
    """What to remember of a peer that advertised no address: where its datagram came from
    (a libp2p peer without addresses is reachable only over the connection it opened)."""
    return () if libp2p_peer(addr) is not None else (make_multiaddr(*addr, sender),)


class NodeCore:
    """The node's brain. Deterministic given its inputs and ``rng``."""

    carriers: frozenset[str] = UDP_ONLY
    """Which carriers this node speaks (``protocol/carriers.py``); the runtime sets it."""

    reference_anchor: Callable[[Vec], Vec] | None = None
    """Public anchor: SGD steps on the public reference clips, applied after every merge
    (``gossip.anchor_steps``); supplied by the learning side, like ``reference_loss``."""

    def __init__(
        self,
        identity: Identity,
        *,
        network_id: str,
        genesis: Vec,
        schema: bytes,
        gossip: GossipConfig,
        rng: random.Random,
        advertised: list[str] | None = None,
        bootstrap: list[Addr] | None = None,
        wire: WireEndpoint | None = None,
        scores: PeerScores | None = None,
        message_noise: MessageNoise | None = None,
        noise_rng: np.random.Generator | None = None,
        beacon: tuple[Addr, float] | None = None,
        schema_card: dict[str, str] | None = None,
        reference_loss: Callable[[Vec], float] | None = None,
        sybil: SybilGuard | None = None,
    ) -> None:
        self.identity = identity
        self.sybil = sybil or SybilGuard(network_id, max_per_host=gossip.max_peers_per_host)
        """Identity-work checks and per-host caps (``protocol/sybil.py``)."""
        # Loss of a model on a public reference set, supplied by the learning side (the core
        # itself never touches data): what the reference screen judges models by.
        self.reference_loss = reference_loss
        self._genesis_reference: float | None = None
        self.cfg = gossip
        self.rng = rng
        self.screens = ModelScreens.from_config(gossip)
        """The pre-merge screens (``protocol/screens.py``), from the gossip settings."""
        self.genesis = np.asarray(genesis, dtype=np.float32).copy()
        self.genesis_hash = genesis_hash(self.genesis)
        self.schema = schema
        # Shown to peers in HELLOs so that a mismatch can be explained, not just detected.
        self.schema_card = tuple((schema_card or {}).items())
        self._schema_refused: set[bytes] = set()
        self.model = self.genesis.copy()
        self.round = 0
        self.sample_count = 0
        self.dp = DpInfo(None, None)
        # Sum of this node's own training updates: where its *own data* says to go. Peers
        # cannot move it, unlike the model itself (see screens.direction_reference).
        self._own_progress = np.zeros(self.genesis.shape, dtype=np.float64)
        self.wire = wire or WireEndpoint(identity, network_id)
        self.view = PeerSamplingView(identity.peer_id, gossip.view_size, rng, self._host_of)
        self._bind_wire(gossip)
        self.liveness = Liveness(dead_after=gossip.dead_after)
        self.scores = scores or PeerScores(
            decay_per_s=gossip.score_decay_per_s, reputation=reputation_rule(gossip)
        )
        self.memory = ScreenMemory()
        """What the screens remember between rounds (windows, this round's verdicts)."""
        self.advertised = list(advertised or [])
        self.bootstrap = list(bootstrap or [])
        # LAN discovery: (multicast group address, mean period). The beacon is a signed HELLO
        # that asks for no reply, so N nodes beaconing cost N datagrams per period, not N².
        self.beacon = beacon
        self.outgoing_hook: OutgoingHook | None = None
        self.message_noise = message_noise
        # Drawn from ``rng`` only when message noise is on, so enabling nothing else changes runs.
        self._noise_rng = noise_rng
        if message_noise is not None and noise_rng is None:
            self._noise_rng = np.random.default_rng(rng.getrandbits(64))
        self.counters: dict[str, int] = {}
        self._addr_of: dict[bytes, Addr] = {}
        self._inbox: dict[bytes, _Received] = {}
        self.last_inputs: dict[bytes, Vec] = {}
        """Models merged in the last round, by sender (attack context, diagnostics)."""
        self._pending_shuffle: dict[bytes, list[bytes]] = {}
        self._unanswered: dict[bytes, PeerDescriptor] = {}
        self._dead_until: dict[bytes, float] = {}
        self._sends: list[Send] = []
        self._rx_addr: Addr | None = None
        self._introduced: dict[Addr, float] = {}
        self._announced: set[bytes] = set()  # peers reported by PeerJoined and not gone since
        self._events: list[Event] = []
        self._now = self._next_gossip = self._next_shuffle = self._next_ping = 0.0
        self._next_boot = self._next_beacon = 0.0
        self.started = False

    def _bind_wire(self, gossip: GossipConfig) -> None:
        wire = self.wire
        # first contacts introduce us with our work nonce; rejections feed the scores
        wire.intro_work, wire.rejections.listener = self.sybil.own_work, self._on_reject
        # The key directory is bounded, with room for the view and the peers shuffles bring
        # in, and never forgets a view member: the node seals to its view unchecked.
        wire.max_peers = max(gossip.max_known_peers, 4 * gossip.view_size)
        wire.pinned = self.view.__contains__

    # ------------------------------------------------------------------ driver API
    def start(self, now: float) -> None:
        """Schedule the first round (jittered so nodes started together do not sync)."""
        self._now = now
        self._next_gossip = now + self._jittered(self.cfg.period_s)
        self._next_shuffle = now + self._jittered(self.cfg.shuffle_period_s)
        self._next_ping = now + self._jittered(self.cfg.ping_period_s)
        self._next_boot = now
        self._next_beacon = now
        self.started = True
        self.timer(now)

    def datagrams_to_send(self) -> list[Send]:
        """Drain the datagrams produced since the last call."""
        out, self._sends = self._sends, []
        return out

    def events(self) -> list[Event]:
        """Drain the events produced since the last call."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        """When :meth:`timer` must next be called."""
        times = [self._next_gossip, self._next_shuffle, self._next_ping]
        if not self.view and self.bootstrap:
            times.append(self._next_boot)
        if self.beacon is not None:
            times.append(self._next_beacon)
        for t in (self.liveness.next_deadline(), self.wire.next_deadline()):
            if t is not None:
                times.append(t)
        return min(times)

    def receive(self, datagram: bytes, addr: Addr, now: float) -> None:
        """Feed one received datagram."""
        self._now = now
        source = f"{addr[0]}:{addr[1]}"
        if self.scores.addr_graylisted(f"addr:{source}", now):
            self._count("dropped_graylisted_addr")
            return
        self._rx_addr = addr  # for the rejection listener, called from inside wire.receive
        for inbound in self.wire.receive(datagram, now, source):
            if inbound.sender == self.identity.peer_id:  # our own beacon, looped back
                self._count("own_datagram_ignored")
                continue
            if self.scores.is_graylisted(inbound.sender, now):
                self._count("dropped_graylisted_peer")
                continue
            self._handle(inbound, addr, now)
        peer = self.wire.fragment_from
        if peer is not None and peer not in self._addr_of:
            # An authenticated piece of a new peer's first message (an intro fragment): the
            # peer is at this address, and our NACKs for the missing pieces must reach it.
            self._addr_of[peer] = addr
            self.view.rehost(peer)
        self._flush_wire()

    def timer(self, now: float) -> None:
        """Run everything due at ``now``."""
        self._now = now
        if not self.started:
            return
        if not self.view and self.bootstrap and now >= self._next_boot:
            for addr in self.bootstrap:
                self._send_plain(addr, self._hello())
            self._count("bootstrap_hellos")
            self._next_boot = now + BOOT_RETRY_S
        if self.beacon is not None and now >= self._next_beacon:
            group, period = self.beacon
            self._send_plain(group, self._hello(want_reply=False))
            self._count("beacons_sent")
            self._next_beacon = now + self._jittered(period)
        if now >= self._next_gossip:
            self._gossip_round(now)
            self._next_gossip = now + self._jittered(self.cfg.period_s)
        if now >= self._next_shuffle:
            self._shuffle(now)
            self._next_shuffle = now + self._jittered(self.cfg.shuffle_period_s)
        if now >= self._next_ping:
            self._probe(now)
            self._next_ping = now + self._jittered(self.cfg.ping_period_s)
        for peer, state in self.liveness.expire(now):
            if state is not PeerState.DEAD:
                continue
            if peer in self.view:
                self._drop_peer(peer, "dead")
            else:
                # Died while out of the view (e.g. as the target Q of a shuffle): quarantine
                # it all the same, or the next exchange brings it back with a liveness record
                # already DEAD, which no later timeout would change, so it would stay for good.
                self._quarantine(peer)
                self.liveness.forget(peer)
        self.wire.poll(now)
        self._flush_wire()

    def local_update(
        self, model: Vec, sample_count: int, dp: DpInfo, now: float, base: Vec | None = None
    ) -> None:
        """The driver's training result: adopt it and gossip its delta to ``fanout`` peers.

        ``base`` is the model the burst started from. When a gossip round merged peers' models
        into ours while the burst ran (training slower than the period), the burst is applied
        as an update on top of the merged model: overwriting would silently throw the merge
        away, and with it everything the peers contributed that round.
        """
        self._now = now
        trained = np.asarray(model, dtype=np.float32)
        start = self.model if base is None else np.asarray(base, dtype=np.float32)
        update = trained - start
        self._own_progress += update
        if not np.array_equal(self.model, start):
            trained = self.model + update
            self._count("merged_during_training")
        self.model = trained.copy()
        self.sample_count = sample_count
        self.dp = dp
        targets = [
            p
            for p in self.view.sample(self.cfg.fanout + 2)
            if not self.scores.is_graylisted(p, now) and p in self._addr_of
        ]
        for peer in targets[: self.cfg.fanout]:
            outgoing: Vec | None = self.model
            if self.outgoing_hook is not None:
                outgoing = self.outgoing_hook(self, peer, self.model)
            if outgoing is not None:
                self.send_model(peer, outgoing, now)

    def send_model(self, peer: bytes, model: Vec, now: float) -> None:
        """Seal ``model − genesis`` as a DELTA to ``peer``."""
        delta = np.asarray(model, dtype=np.float32) - self.genesis
        dp = self.dp
        if self.message_noise is not None:  # every release is counted before it leaves
            mn = self.message_noise
            assert self._noise_rng is not None
            delta = mn.release(delta, self._noise_rng)
            dp = replace(
                dp,
                message_noise_multiplier=mn.noise_multiplier,
                message_clip=mn.clip,
                message_epsilon=mn.epsilon(),
                message_delta=mn.delta,
            )
        vec = encode_vector(delta, self.cfg.compression)
        msg = Delta(self.schema, self.genesis_hash, self.round, self.sample_count, vec, dp)
        for d in self.wire.seal(peer, msg, now, round=self.round, schema=self.schema):
            self._sends.append(Send(self._addr_of[peer], d))
        self._count("deltas_sent")

    def restore_view(self, descriptors: list[PeerDescriptor]) -> None:
        """Re-admit peers saved before a restart (their keys are re-checked)."""
        for d in self._usable(self.identity.peer_id, tuple(descriptors)):
            self._learn(d)
        self._register_addrs(list(descriptors))

    def view_descriptors(self) -> list[PeerDescriptor]:
        """The current view, for checkpoints."""
        return [d for p in self.view.peers() if (d := self.view.descriptor(p)) is not None]

    def address_of(self, peer: bytes) -> Addr | None:
        """Last known address of ``peer``."""
        return self._addr_of.get(peer)

    def received_models(self) -> list[Vec]:
        """Models received this round (what an omniscient attacker would look at)."""
        return [r.model for r in self._inbox.values()]

    # ------------------------------------------------------------------ handlers
    def _handle(self, inbound: Inbound, addr: Addr, now: float) -> None:
        sender, msg = inbound.sender, inbound.message
        if not self._admitted(sender, msg, inbound.work):
            return
        if self.cfg.trust_ramp_s > 0 and sender not in self.memory.first_heard:
            self.memory.first_heard[sender] = now
            if len(self.memory.first_heard) > 4096:  # bounded: the oldest acquaintance goes
                self.memory.first_heard.pop(next(iter(self.memory.first_heard)))
        self._heard_from(inbound, addr, now)
        if isinstance(msg, Hello):  # HelloAck is a subclass
            if self._schema_conflict(sender, msg):
                # Answer anyway, so that the other side learns why we will not talk to it.
                if msg.want_reply and not isinstance(msg, HelloAck):
                    self._send_plain(addr, self._hello(ack=True))
                return
            self._learn(
                PeerDescriptor(
                    sender,
                    msg.box_key,
                    msg.box_key_sig,
                    msg.addrs or _seen_at(addr, sender),
                    work=msg.work,
                )
            )
            if msg.want_reply and not isinstance(msg, HelloAck):
                self._send_plain(addr, self._hello(ack=True))
        elif isinstance(msg, Pong):
            self.liveness.pong(sender, msg.nonce, now)
        elif isinstance(msg, Ping):
            self._send(sender, Pong(msg.nonce))
        elif isinstance(msg, ShuffleReply):
            valid = self._usable(sender, msg.peers)
            self.view.merge(valid, replaceable=self._pending_shuffle.pop(sender, []))
            self._unanswered.pop(sender, None)
            self._register_addrs(valid)
            self._learn_direct(sender)  # it just answered: keep it (small networks need this)
        elif isinstance(msg, Shuffle):
            valid = self._usable(sender, msg.peers)
            reply = self.view.answer_shuffle(sender, valid, self.cfg.shuffle_length)
            self._register_addrs(valid)
            self._send(sender, ShuffleReply(tuple(reply)))
        elif isinstance(msg, Delta):
            self._on_delta(sender, msg, inbound, now)

    def _admitted(self, sender: bytes, msg: Message, work: bytes = b"") -> bool:
        """Identity work: a HELLO must carry a valid nonce; anything else is heard only from
        peers admitted before (by HELLO or through a checked descriptor) or introducing
        themselves with a valid nonce (``work``)."""
        if isinstance(msg, Hello):
            if self.sybil.admit(sender, msg.work):
                return True
            self._count("identity_work_missing")
            return False
        if self.sybil.proven(sender):
            return True
        if work and self.sybil.admit(sender, work):
            return True
        # A peer we never admitted, or forgot (a restart, or the bounded memory of checked
        # nonces): ask for its HELLO, which carries the work (rate-limited per address).
        self._count("unadmitted_sender")
        self._introduce()
        return False

    def _on_delta(self, sender: bytes, msg: Delta, inbound: Inbound, now: float) -> None:
        if msg.schema_hash != self.schema or msg.genesis_hash != self.genesis_hash:
            self._penalize(sender, "schema_mismatch", now)
            return
        # Rounds are local counters: nodes that started at different times disagree. A node
        # more than max_staleness rounds behind the sender is a late starter and jumps to the
        # sender's round. (Always adopting the maximum, Lamport-style, was tried and inflates
        # rounds N-fold: every tick anywhere pushes everyone on.) A delta too far behind is
        # dropped but not held against its sender: being slow or restarted is not misbehaviour.
        if msg.round > self.round + self.cfg.max_staleness:
            self.round = msg.round
        if msg.round + self.cfg.max_staleness < self.round:
            self._count("stale_delta_dropped")
            return
        assert inbound.vector is not None
        if inbound.vector.shape != self.genesis.shape:
            self._penalize(sender, "schema_mismatch", now)
            return
        self._inbox[sender] = _Received(self.genesis + inbound.vector, msg.sample_count, msg.round)
        self._learn_direct(sender)
        self.scores.reward(sender, now)
        self._count("deltas_received")

    def _learn_direct(self, peer: bytes) -> None:
        """Add a peer that just talked to us directly (keys known, address observed)."""
        keys = self.wire.peer_keys(peer)
        addr = self._addr_of.get(peer)
        if peer in self.view or keys is None or addr is None:
            return
        self._learn(
            PeerDescriptor(
                peer,
                keys.box_key,
                keys.box_key_sig,
                (make_multiaddr(*addr, peer),),
                work=self.sybil.nonce_of(peer),
            )
        )

    def _usable(self, sender: bytes, peers: tuple[PeerDescriptor, ...]) -> list[PeerDescriptor]:
        """Descriptors whose keys check out; a peer sending forged ones is penalised."""
        good = []
        for d in peers:
            if d.peer_id != self.identity.peer_id and not self.sybil.admit(d.peer_id, d.work):
                self._count("identity_work_missing")
                continue
            try:
                keys = _keys_of(d)
                if d.peer_id != self.identity.peer_id:
                    self.wire.add_peer(keys)
                good.append(d)
            except IdentityError:
                self._penalize(sender, "identity_mismatch", self._now)
        usable = [
            d
            for d in good
            if not self.scores.is_graylisted(d.peer_id, self._now)
            and self._dead_until.get(d.peer_id, -1.0) <= self._now  # no zombies via gossip
            and d.peer_id not in self._schema_refused  # another model: nothing to exchange
        ]
        return self._host_capped(usable)

    def _host_capped(self, descs: list[PeerDescriptor]) -> list[PeerDescriptor]:
        """Descriptors of new peers whose host already fills its view slots are dropped
        (``gossip.max_peers_per_host``); peers already in the view are always refreshed."""
        fresh = [d for d in descs if d.peer_id not in self.view]
        if not fresh or self.sybil.max_per_host is None:
            return descs
        kept, cut = self.sybil.within_view_cap(fresh, _descriptor_host, self.view.host_counts)
        if not cut:
            return descs  # the usual case, and this runs for every descriptor received
        self._count("host_cap_view", cut)
        keep = {d.peer_id for d in kept}
        return [d for d in descs if d.peer_id in self.view or d.peer_id in keep]

    def _host_of(self, peer: bytes) -> str | None:
        """The host a peer counts against: where its datagrams come from, else what its
        descriptor advertises."""
        addr = self._addr_of.get(peer)
        if addr is not None:
            return host_key(addr[0])
        desc = self.view.descriptor(peer)
        return _descriptor_host(desc) if desc is not None else None

    def _heard_from(self, inbound: Inbound, addr: Addr, now: float) -> None:
        """A peer talked to us: alive, reachable at ``addr`` (its host for the caps may
        change), and in our view if it introduced itself (what its HELLO would have done)."""
        peer = inbound.sender
        self.liveness.heard_from(peer, now)
        self._dead_until.pop(peer, None)  # direct contact: alive after all
        if self._addr_of.get(peer) != addr:
            self._addr_of[peer] = addr
            self.view.rehost(peer)
        if inbound.introduced and peer not in self.view:
            self._learn_direct(peer)

    def _register_addrs(self, descs: list[PeerDescriptor]) -> None:
        if len(self._addr_of) > 2 * self.wire.max_peers:
            self._forget_strangers()
        for d in descs:
            if d.peer_id in self._addr_of or d.peer_id == self.identity.peer_id:
                continue
            addr = best_endpoint(d.addrs, self.carriers)
            if addr is not None:
                self._addr_of[d.peer_id] = addr
                self.view.rehost(d.peer_id)

    def _forget_strangers(self) -> None:
        """Drop what this node keeps on peers its wire directory has forgotten (the least
        recently heard beyond ``gossip.max_known_peers``) and that are not in the view: their
        addresses, join announcements and idle liveness records. Without this, every peer a
        shuffle ever mentioned stayed: ~600 per node after 36 rounds of a 10,000-node run,
        12 GB in all. Amortised: runs when the address book reaches twice the bound."""

        def keep(p: bytes) -> bool:
            return p in self.view or self.wire.knows(p)

        self._addr_of = {p: a for p, a in self._addr_of.items() if keep(p)}
        self._announced = {p for p in self._announced if keep(p)}
        self.liveness.forget_idle(keep)
        self._count("strangers_forgotten")

    def _learn(self, desc: PeerDescriptor) -> None:
        if self.scores.is_graylisted(desc.peer_id, self._now) or not self._host_capped([desc]):
            return
        if not self.wire.knows(desc.peer_id):
            # A peer remembered from an unanswered shuffle whose keys the directory has
            # forgotten since (gossip.max_known_peers): the view may only hold peers the
            # wire can seal to. Its descriptor carries the keys; check them again.
            try:
                self.wire.add_peer(_keys_of(desc))
            except IdentityError:
                return
        if self.view.add(desc) and desc.peer_id not in self._announced:
            self._announced.add(desc.peer_id)
            self._events.append(PeerJoined(desc.peer_id))

    # ------------------------------------------------------------------ periodic work
    def _gossip_round(self, now: float) -> None:
        fresh = {
            p: r for p, r in self._inbox.items() if r.round + self.cfg.max_staleness >= self.round
        }
        self._inbox.clear()
        if len(fresh) > 1:
            peers, cut = self.sybil.one_per_host(sorted(fresh), self._host_of, self.rng)
            if cut:
                self._count("host_cap_merge", cut)
                fresh = {p: fresh[p] for p in peers}
        judged = sorted(fresh)
        if fresh:
            fresh = self._screen(fresh, now)
        self.last_inputs = {p: r.model for p, r in fresh.items()}
        if fresh:
            self._merge(fresh, now)
        if self.reference_anchor is not None:
            self.model = self.reference_anchor(self.model)
        self._remember_verdicts(judged, now)
        self.round += 1
        self._events.append(ModelMerged(self.round, self.model.copy(), len(fresh)))
        if len(self.view) >= self.cfg.train_min_peers:
            self._events.append(TrainRequest(self.round))
        else:  # no budget spent alone: see GossipConfig.train_min_peers
            self._count("train_waiting_for_peers")

    def _merge(self, fresh: dict[bytes, _Received], now: float) -> None:
        """Merge the screened models into ours (``gossip.aggregation``)."""
        peers = sorted(fresh)
        models = np.stack([fresh[p].model for p in peers])
        ages = [max(0, self.round - fresh[p].round) for p in peers]
        weights = staleness_weights(
            self._capped_samples([fresh[p].samples for p in peers]),
            ages,
            self.cfg.staleness_half_life,
        ) * self._trust(peers, now)
        dist = np.linalg.norm(models - self.model, axis=1)
        self._flag_outliers(peers, dist, now)
        self.memory.distances.extend(float(d) for d in dist)
        params = AggParams(
            clip_tau=float(np.median(self.memory.distances)),
            self_weight=float(max(self.sample_count, 1)),
            byzantine=max(1, len(peers) // 4),
        )
        self.model = aggregate(self.cfg.aggregation, self.model, models, weights, params)

    def _trust(self, peers: list[bytes], now: float) -> npt.NDArray[np.float32]:
        """Merge-weight factor per peer from how long we have known it (``trust_ramp_s``)."""
        ramp = self.cfg.trust_ramp_s
        if ramp <= 0:
            return np.ones(len(peers), np.float32)
        heard = self.memory.first_heard
        ages = np.array([now - heard.get(p, now) for p in peers], dtype=np.float64)
        return np.minimum(1.0, 0.1 + 0.9 * ages / ramp).astype(np.float32)

    def _remember_verdicts(self, judged: list[bytes], now: float) -> None:
        """Add this round's screening verdicts to each judged sender's reputation."""
        for peer in judged:
            if self.scores.observe(peer, peer in self.memory.verdicts, now):
                self._count("graylisted_by_reputation")
                self._events.append(Graylisted(peer.hex()))
                if peer in self.view:
                    self._drop_peer(peer, "graylisted")
        self.memory.verdicts.clear()

    def _screen(self, fresh: dict[bytes, _Received], now: float) -> dict[bytes, _Received]:
        """Drop received models no honest peer of this task would send (``screens.py``),
        charging each refused sender."""
        typical = float(np.median(self.memory.cosines)) if len(self.memory.cosines) >= 8 else None
        result = self.screens.judge(
            self.model,
            self.genesis,
            self._own_progress,
            {p: r.model for p, r in fresh.items()},
            typical_cosine=typical,
        )
        self.memory.cosines.extend(result.cosines[p] for p in sorted(result.cosines))
        if result.direction_from_own_training:
            self._count("direction_from_own_training")
        for peer, reason in result.refused:
            self._penalize(peer, reason, now)
        kept = {p: fresh[p] for p in result.kept}
        return self._reference_screen(kept, now)

    def _reference_screen(self, kept: dict[bytes, _Received], now: float) -> dict[bytes, _Received]:
        """Judge models by their loss on the public reference set (``max_reference_loss``).

        A model is not merged when its loss exceeds ``ratio`` × the larger of our model's
        loss and the median loss of recently received models (honest models at this stage of
        training), and it costs its sender score only when it is also worse than an untrained
        model by that ratio: a peer that is merely behind is skipped, never graylisted."""
        score, ratio = self.reference_loss, self.cfg.max_reference_loss
        if score is None or ratio is None or not kept:
            return kept
        if self._genesis_reference is None:
            self._genesis_reference = score(self.genesis)
        losses = {p: score(rec.model) for p, rec in sorted(kept.items())}
        own = score(self.model)
        window = self.memory.reference_losses
        typical = float(np.median(window)) if len(window) >= 8 else self._genesis_reference
        window.extend(losses.values())
        ceiling = ratio * max(own, typical)
        out = {}
        for peer, rec in kept.items():
            if losses[peer] <= ceiling:
                out[peer] = rec
            elif losses[peer] > ratio * self._genesis_reference:
                self._penalize(peer, "reference", now)
            else:
                self._count("reference_skipped")
        return out

    def screen_state(self) -> dict[str, Any]:
        """What the screens and scores remember across rounds, for a crash-safe restart:
        the node's own progress, the recent distance and cosine windows, the peer scores.
        Plain msgpack-able values; the vector as raw float64 bytes with its length."""
        return {
            "own_progress": self._own_progress.astype("<f8").tobytes(),
            "size": int(self._own_progress.size),
            "distances": list(self.memory.distances),
            "cosines": list(self.memory.cosines),
            "reference_losses": list(self.memory.reference_losses),
            "first_heard": [[p, t] for p, t in self.memory.first_heard.items()],
            "scores": self.scores.to_state(),
        }

    def load_screen_state(self, doc: dict[str, Any]) -> None:
        """Restore :meth:`screen_state`; ValueError (nothing changed) if it does not fit."""
        raw, size = doc["own_progress"], int(doc["size"])
        if not isinstance(raw, bytes) or size != self._own_progress.size or len(raw) != 8 * size:
            raise ValueError(
                f"saved screening state is for a model of {size} weights, this one has "
                f"{self._own_progress.size}"
            )
        progress = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(progress)):
            raise ValueError("saved screening state holds non-finite values")
        PeerScores().load_state(doc["scores"])  # validate before touching the live state
        first_heard = {p: float(t) for p, t in doc.get("first_heard", [])}
        if not all(isinstance(p, bytes) for p in first_heard):
            raise ValueError("saved screening state: a peer id is not a byte string")
        self._own_progress = progress
        self.memory.distances.clear()
        self.memory.distances.extend(float(d) for d in doc["distances"])
        self.memory.cosines.clear()
        self.memory.cosines.extend(float(c) for c in doc["cosines"])
        self.memory.reference_losses.clear()
        self.memory.reference_losses.extend(float(x) for x in doc.get("reference_losses", []))
        self.memory.first_heard = first_heard
        self.scores.load_state(doc["scores"])

    def _capped_samples(self, claimed: list[int]) -> list[int]:
        """Peers' claimed sample counts, capped (``screens.cap_samples``)."""
        capped, cut = cap_samples(self.sample_count, claimed)
        if cut:
            self._count("sample_count_capped")
        return capped

    def _flag_outliers(self, peers: list[bytes], dist: npt.NDArray[np.float32], now: float) -> None:
        """Peers much farther from us than the typical recent neighbour lose score."""
        if len(self.memory.distances) < 4:
            return
        med = float(np.median(self.memory.distances))
        for p, d in zip(peers, dist, strict=True):
            if med > 0 and d > 4 * med:
                self._penalize(p, "outlier", now)

    def _shuffle(self, now: float) -> None:
        me = PeerDescriptor(
            self.identity.peer_id,
            self.identity.keys.box_key,
            self.identity.keys.box_key_sig,
            tuple(self.advertised),
            work=self.sybil.own_work,
        )
        # A shuffle whose reply never came (lost datagram) must not cost us the peer: Cyclon
        # drops Q when shuffling with it, so without this a lossy link slowly empties views.
        # Liveness still removes Q if it is really gone.
        silent = set(self._unanswered)
        for peer, desc in list(self._unanswered.items()):
            if peer not in self.view and self._dead_until.get(peer, -1.0) <= now:
                self._learn(desc)
        self._unanswered.clear()
        self._pending_shuffle.clear()
        started = self.view.start_shuffle(self.cfg.shuffle_length, me)
        if started is None:
            return
        q, sent = started
        if q in self._addr_of:
            self._pending_shuffle[q] = [d.peer_id for d in sent[1:]]
            if self.view.last_removed is not None:
                self._unanswered[q] = self.view.last_removed
            self._send(q, Shuffle(tuple(sent)))
            if not self.view and q not in silent:
                # Q was our only peer. Its reply (one round trip away) refills the view; a
                # HELLO to the bootstrap now would only make it answer twice. Every joining
                # node first shuffles with the bootstrap, its only peer: that doubled the
                # bootstrap's HELLOs (~9,250 extra in protocol_10k). Once only: a Q that left
                # the last shuffle unanswered may be gone, and then the bootstrap is the way
                # back.
                self._next_boot = max(self._next_boot, now + BOOT_RETRY_S)
        # Q left the view (Cyclon); it comes back when it answers (or at the next shuffle).

    def _probe(self, now: float) -> None:
        peers, known = self.view.order, self._addr_of
        if not all(map(known.__contains__, peers)):  # a C loop: views can be large
            peers = [p for p in peers if p in known]
        if not peers:
            return
        peer = self.rng.choice(peers)
        nonce = self.rng.getrandbits(63)
        self.liveness.probe_sent(peer, nonce, now)
        self._send(peer, Ping(nonce))

    # ------------------------------------------------------------------ helpers
    def _send(self, peer: bytes, msg: Message) -> None:
        addr = self._addr_of.get(peer)
        if addr is None or not self.wire.knows(peer):
            return
        for d in self.wire.seal(peer, msg, self._now):
            self._sends.append(Send(addr, d))

    def _send_plain(self, addr: Addr, msg: Hello) -> None:
        for d in self.wire.seal(None, msg, self._now):
            self._sends.append(Send(addr, d))

    def _flush_wire(self) -> None:
        for peer, d in self.wire.take_outbox():
            addr = self._addr_of.get(peer)
            if addr is not None:
                self._sends.append(Send(addr, d))

    def _quarantine(self, peer: bytes) -> None:
        self._dead_until[peer] = self._now + 10 * self.cfg.shuffle_period_s

    def _drop_peer(self, peer: bytes, reason: str) -> None:
        if reason == "dead":
            self._quarantine(peer)
        self.view.remove(peer)
        self._announced.discard(peer)
        self.liveness.forget(peer)
        self._inbox.pop(peer, None)
        self._events.append(PeerLeft(peer, reason))

    def _penalize(self, peer: bytes, reason: str, now: float) -> None:
        self._count(f"penalty_{reason}")
        if reason in SCREEN_VERDICTS:
            self.memory.verdicts.add(peer)
        if self.scores.penalize(peer, reason, now):
            self._events.append(Graylisted(peer.hex()))
            if peer in self.view:
                self._drop_peer(peer, "graylisted")

    def _on_reject(self, source: str, reason: str) -> None:
        if reason == "unknown_sender":
            # A sealed datagram from a peer whose keys we lack: it heard of us through peer
            # sampling before we heard of it. That is normal in networks larger than a view,
            # so introduce ourselves (it answers with its keys) instead of counting it against
            # the address. Nothing is authenticated yet, so the answer is bounded per address:
            # at most one HELLO per shuffle period.
            self._introduce()
            return
        if source.startswith("addr:"):
            if self.scores.addr_rejected(source, self._now):
                self._events.append(Graylisted(source))
            return
        try:
            peer = peer_id_from_str(source)
        except IdentityError:
            return
        self._penalize(peer, reason, self._now)

    def _introduce(self) -> None:
        addr = self._rx_addr
        if (
            addr is None
            or self._introduced.get(addr, -1e18) > self._now - self.cfg.shuffle_period_s
        ):
            return
        self._introduced[addr] = self._now
        if len(self._introduced) > 4 * self.cfg.view_size + 64:  # bounded
            self._introduced.pop(next(iter(self._introduced)))
        self._count("hello_to_unknown_sender")
        self._send_plain(addr, self._hello())

    def _hello(self, want_reply: bool = True, ack: bool = False) -> Hello:
        """Our HELLO (or HELLO_ACK): keys, addresses and the model schema we train."""
        keys = self.identity.keys
        cls = HelloAck if ack else Hello
        return cls(
            keys.box_key,
            keys.box_key_sig,
            tuple(self.advertised),
            want_reply and not ack,
            self.schema,
            self.schema_card,
            self.sybil.own_work,
        )

    def _schema_conflict(self, sender: bytes, msg: Hello) -> bool:
        """True (and reported once) when ``msg`` says its sender trains another model."""
        if not msg.schema_hash or msg.schema_hash == self.schema:
            return False
        self._count("schema_mismatch_hello")
        if sender not in self._schema_refused:
            if len(self._schema_refused) < 4096:  # bounded: one report per peer is enough
                self._schema_refused.add(sender)
            diff = schema_differences(self.schema_card, msg.schema) or [
                "schema hash differs (no schema card to compare)"
            ]
            self._events.append(SchemaMismatch(sender, tuple(diff)))
        return True

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _jittered(self, period: float) -> float:
        return period * (1 + self.cfg.jitter * (2 * self.rng.random() - 1))
