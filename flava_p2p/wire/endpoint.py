"""The sans-I/O secure wire endpoint: datagrams in, authenticated messages out, nothing crashes.

Receive path, cheapest check first::

    size cap → network-key MAC → parse header → version/network/type/recipient/kind → time
    window → seqno/seen cache → signature (first contact) or AEAD open (everything else) →
    safe decode → dtype/shape/finite (DELTA vectors)

Every rejection is counted by (source, reason). The source is the PeerID once the datagram is
authenticated (signature, AEAD tag or pairwise MAC verified), otherwise the network address it
came from — so a forger cannot get an honest peer blamed. Replay state is committed only after
authentication. Time is always an argument; randomness is never needed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgpack
import numpy as np
import numpy.typing as npt
from nacl.bindings import crypto_box_beforenm

from flava_p2p.identity import (
    Identity,
    IdentityError,
    PeerKeys,
    peer_id_to_str,
    verify_key_from_peer_id,
)
from flava_p2p.wire import fragments as fr
from flava_p2p.wire.envelope import (
    VERSION,
    EnvelopeError,
    Header,
    PairKeys,
    ParsedEnvelope,
    open_sealed,
    parse,
    seal_envelope,
    sign_envelope,
    verify,
)
from flava_p2p.wire.messages import (
    DECODERS,
    PLAINTEXT_TYPES,
    Delta,
    Hello,
    Message,
    MessageError,
)
from flava_p2p.wire.replay import ReplayGuard
from flava_p2p.wire.tensors import TensorCodecError, decode_vector

KIND_ENVELOPE = b"\x01"
KIND_FRAGMENT = b"\x02"
KIND_NACK = b"\x03"
KIND_INTRO = b"\x04"
"""A sealed envelope to a peer that has not yet sent us anything sealed, prefixed with our
X25519 key, its binding signature (made once, by our identity key) and our identity-work nonce:
``box_key (32) | box_key_sig (64) | u8 work length | work | envelope``. The receiver may not
know us yet (it learnt of us through peer sampling); the prefix is self-certifying, so it
can check it against the sender's PeerID, compute the pair key and open the envelope at once,
instead of refusing it and trading HELLOs first. The prefix is part of the envelope's
associated data, so its tag covers it too."""
KIND_INTRO_FRAGMENT = b"\x05"
"""A fragment (KIND_FRAGMENT body, MAC and all) of a message to a peer that has not yet sent us
anything sealed, prefixed with the same intro as KIND_INTRO: ``intro | fragment``. Every
fragment of the message carries it, since any of them may arrive first. The fragment MAC,
keyed from the pair key the intro lets the receiver compute, authenticates the fragment; the
intro itself is self-certifying (binding signature against the PeerID, work nonce bound to
it), so it needs no tag of its own. Without it, a first delta too large for one datagram was
refused as from an unknown sender and lost."""
MAX_INTRO_WORK = 32
MAX_KNOWN_PEERS = 16_384
"""Keys kept in the directory. Anyone can mint identities and announce them (a HELLO, an intro,
a descriptor) before the node checks their identity work, so the directory is bounded; the
least recently heard peer goes first, and if it talks again it is learnt again."""
_INTRO_KEY_END = 32  # box_key
_INTRO_SIG_END = _INTRO_KEY_END + 64  # box_key_sig, then the work length byte
_INTRO_FIXED = _INTRO_SIG_END + 1
NETMAC_BYTES = 16
MAX_PAYLOAD_DECODE = 8 << 20


@dataclass(frozen=True)
class Inbound:
    """An authenticated, decrypted, validated message."""

    sender: bytes
    header: Header
    message: Message
    vector: npt.NDArray[np.float32] | None = None
    """For DELTA: the decoded, finite delta vector."""
    work: bytes = b""
    """The identity-work nonce of an introduced sender (KIND_INTRO), to be checked by the
    node; empty otherwise."""
    introduced: bool = False
    """Whether it came with an intro (its sender may be new to the node)."""


@dataclass
class RejectionCounter:
    """Rejections by (source, reason); source is a PeerID string or ``addr:…``."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    listener: Callable[[str, str], None] | None = None
    """Called with (source, reason) on every rejection (the protocol's peer scores)."""

    def add(self, source: str, reason: str) -> None:
        """Count one rejection and notify the listener."""
        self.counts[(source, reason)] += 1
        if self.listener is not None:
            self.listener(source, reason)

    def by_reason(self) -> dict[str, int]:
        """Totals per reason."""
        out: Counter[str] = Counter()
        for (_, reason), n in self.counts.items():
            out[reason] += n
        return dict(out)

    def for_source(self, source: str) -> dict[str, int]:
        """Totals per reason for one source."""
        return {r: n for (s, r), n in self.counts.items() if s == source}

    def total(self) -> int:
        return sum(self.counts.values())


class _Known:
    """A verified peer; the X25519 exchange with it is done on first use (a large network
    learns of many more peers through exchanges than it ever talks to)."""

    __slots__ = ("_frag_key", "_own", "_pair", "heard", "keys")

    def __init__(self, keys: PeerKeys, own: bytes) -> None:
        self.keys = keys
        self._own = own
        self._pair: PairKeys | None = None
        self._frag_key = b""
        self.heard = False
        """Whether it sent us a sealed envelope (so it holds our keys: no more intros)."""

    @property
    def pair(self) -> PairKeys:
        """The envelope keys shared with this peer."""
        if self._pair is None:
            # What Box(own, PublicKey(key)).shared_key() computes, without its two objects
            # (a tenth of the exchange's cost; the simulator does ~10 per node and round).
            shared = crypto_box_beforenm(self.keys.box_key, self._own)
            self._pair = PairKeys.derive(shared)
            self._frag_key = fr.pair_mac_key(shared)
        return self._pair

    @property
    def frag_key(self) -> bytes:
        """The fragment/NACK MAC key shared with this peer."""
        _ = self.pair  # derived from the same exchange
        return self._frag_key


class WireEndpoint:
    """One node's secure datagram layer (no sockets, no clock)."""

    def __init__(
        self,
        identity: Identity,
        network_id: str,
        *,
        network_key: bytes | None = None,
        mtu: int = 1200,
        max_datagram: int = 9000,
        time_window_s: float = 120.0,
        first_seq: int = 0,
        max_message: int = 4 << 20,
        reassembler: fr.Reassembler | None = None,
    ) -> None:
        if network_key is not None and len(network_key) != 32:
            raise ValueError("network key must be 32 bytes")
        self.identity = identity
        self.network_id = network_id
        self.network_key = network_key
        self.mtu = mtu
        self.max_datagram = max(max_datagram, mtu)
        self.max_message = max_message
        self.next_seq = first_seq
        self.replay = ReplayGuard(time_window_ms=int(time_window_s * 1000))
        self.reassembler = reassembler or fr.Reassembler(max_message=max_message)
        self.send_buffer = fr.SendBuffer(max_rounds=self.reassembler.max_rounds)
        self.rejections = RejectionCounter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._peers: dict[bytes, _Known] = {}  # in order of last contact or mention
        self._own_secret = bytes(identity.box_key)
        self.max_peers = MAX_KNOWN_PEERS
        self.pinned: Callable[[bytes], bool] | None = None
        """Peers never forgotten to make room (the node pins its view)."""
        self._outbox: list[tuple[bytes, bytes]] = []  # (peer, datagram)
        self._prefix = (NETMAC_BYTES if network_key else 0) + 1
        self.intro_work = b""
        """Our identity-work nonce, sent in intros (set by the node; empty: none needed)."""
        self.fragment_from: bytes | None = None
        """The sender of the last datagram received, if it was a fragment whose MAC checked
        out (else None): the node learns from it where to send its NACKs when the sender's
        first message is still in pieces."""

    # ------------------------------------------------------------------ directory
    def add_peer(self, keys: PeerKeys) -> None:
        """Learn a peer's keys (self-certifying: checked against its PeerID)."""
        known = self._peers.get(keys.peer_id)
        if known is not None and known.keys == keys:
            # These exact keys were checked when first learned. Mentioned again, it moves to
            # the young end: a peer about to enter the view must not be the next forgotten.
            self._peers[keys.peer_id] = self._peers.pop(keys.peer_id)
            return
        self._check_keys(keys)
        self._peers.pop(keys.peer_id, None)
        self._peers[keys.peer_id] = _Known(keys, self._own_secret)
        if len(self._peers) > self.max_peers:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Forget the least recently heard peer that is not pinned (in the node's view: the
        node sends to those without checking, so their keys must stay)."""
        pinned = self.pinned
        for peer in self._peers:
            if pinned is None or not pinned(peer):
                del self._peers[peer]  # and stop iterating at once
                return

    def knows(self, peer_id: bytes) -> bool:
        """Whether ``peer_id``'s encryption key is known."""
        return peer_id in self._peers

    def peer_keys(self, peer_id: bytes) -> PeerKeys | None:
        """Known keys of a peer."""
        k = self._peers.get(peer_id)
        return k.keys if k else None

    # ------------------------------------------------------------------ cryptography
    # The four places the wire touches cryptography, as methods so that the simulator's
    # explicitly labelled unsealed endpoint (sim/fast_wire.py) can skip them.
    def _check_keys(self, keys: PeerKeys) -> None:
        keys.check()

    def _seal_envelope(
        self, fields: dict[str, object], plaintext: bytes, to: _Known | None, intro: bytes = b""
    ) -> bytes:
        if to is None:  # first contact: signed, in clear
            return sign_envelope(self.identity.signing_key, fields, plaintext)
        return seal_envelope(to.pair, fields, plaintext, intro)

    def _verify(self, env: ParsedEnvelope) -> None:
        # Ed25519 PeerIDs embed their public key: the signature needs no directory lookup.
        verify(env, verify_key_from_peer_id(env.header.sender))

    def _open(self, env: ParsedEnvelope, known: _Known, intro: bytes) -> bytes:
        return open_sealed(env, known.pair, intro)

    # ------------------------------------------------------------------ sending
    def seal(
        self, to: bytes | None, msg: Message, now: float, *, round: int = 0, schema: bytes = b""
    ) -> list[bytes]:
        """Datagrams carrying ``msg`` to ``to`` (None only for HELLO/HELLO_ACK to an address)."""
        mtype = msg.TYPE
        recipient = None
        if mtype not in PLAINTEXT_TYPES:
            if to is None or to not in self._peers:
                raise ValueError(f"cannot encrypt {mtype.name}: recipient key unknown")
            recipient = self._peers[to]
        seq = self.next_seq
        self.next_seq += 1
        plaintext = msgpack.packb(msg.to_wire(), use_bin_type=True)
        fields = {
            "version": VERSION,
            "type": int(mtype),
            "network": self.network_id,
            "sender": self.identity.peer_id,
            "recipient": to or b"",
            "seq": seq,
            "timestamp_ms": int(now * 1000),
            "round": round,
            "schema": schema,
        }
        intro = self._intro() if recipient is not None and not recipient.heard else b""
        envelope = self._seal_envelope(fields, plaintext, recipient, intro)
        head = b""  # before each fragment: the intro, when it does not fit in one datagram
        if intro and len(intro) + len(envelope) + self._prefix > self.mtu:
            head, intro = KIND_INTRO_FRAGMENT + intro, b""
            envelope = self._seal_envelope(fields, plaintext, recipient)
        if intro:
            out = [self._wrap(KIND_INTRO + intro + envelope)]
        elif not head and len(envelope) + self._prefix <= self.mtu:
            out = [self._wrap(KIND_ENVELOPE + envelope)]
        else:
            if to is None or to not in self._peers:
                raise ValueError("large plaintext messages need a known recipient")
            chunk = fr.fragment_payload_size(self.mtu, self._prefix + len(head))
            bodies = fr.make_fragments(
                KIND_FRAGMENT, self.identity.peer_id, seq, envelope, self._peers[to].frag_key, chunk
            )
            out = [self._wrap(head + b) for b in bodies]
            self.send_buffer.remember(seq, to, out, now)
        self.bytes_out += sum(len(d) for d in out)
        return out

    def _intro(self) -> bytes:
        keys = self.identity.keys
        work = self.intro_work[:MAX_INTRO_WORK]
        return keys.box_key + keys.box_key_sig + bytes([len(work)]) + work

    def _wrap(self, body: bytes) -> bytes:
        if self.network_key is None:
            return body
        return _netmac(self.network_key, body) + body

    def take_outbox(self) -> list[tuple[bytes, bytes]]:
        """Control datagrams (NACKs, repairs) to send: (peer, datagram)."""
        out, self._outbox = self._outbox, []
        self.bytes_out += sum(len(d) for _, d in out)
        return out

    # ------------------------------------------------------------------ receiving
    def receive(self, datagram: bytes, now: float, source: str = "?") -> list[Inbound]:
        """Validate one datagram; returns the messages it completes (0 or 1)."""
        self.bytes_in += len(datagram)
        self.fragment_from = None
        addr = f"addr:{source}"
        try:
            return self._receive(datagram, now, addr)
        except _Reject as rej:
            self.rejections.add(rej.source, rej.reason)
            return []

    def _receive(self, datagram: bytes, now: float, addr: str) -> list[Inbound]:
        if len(datagram) > self.max_datagram:
            raise _Reject(addr, "oversize")
        body = datagram
        if self.network_key is not None:
            mac, body = datagram[:NETMAC_BYTES], datagram[NETMAC_BYTES:]
            if len(datagram) <= NETMAC_BYTES or not hmac.compare_digest(
                mac, _netmac(self.network_key, body)
            ):
                raise _Reject(addr, "network_mac")
        kind = body[:1]
        if kind == KIND_ENVELOPE:
            return self._envelope(body[1:], now, addr)
        if kind == KIND_INTRO:
            return self._introduced(body[1:], now, addr)
        if kind == KIND_FRAGMENT:
            return self._fragment(body, now, addr)
        if kind == KIND_INTRO_FRAGMENT:
            return self._introduced_fragment(body[1:], now, addr)
        if kind == KIND_NACK:
            self._nack(body, now, addr)
            return []
        raise _Reject(addr, "malformed")

    def _known_sender(self, body: bytes, addr: str) -> tuple[bytes, _Known]:
        try:
            sender = fr.peek_sender(body)
        except fr.FragmentError as exc:
            raise _Reject(addr, exc.reason) from None
        known = self._peers.get(sender)
        if known is None:
            raise _Reject(addr, "unknown_sender")
        return sender, known

    def _fragment(
        self, body: bytes, now: float, addr: str, intro: bytes | None = None
    ) -> list[Inbound]:
        sender, known = self._known_sender(body, addr)
        try:
            frag = fr.open_fragment(body, known.frag_key, self.max_message)
        except fr.FragmentError as exc:
            raise _Reject(addr, exc.reason) from None
        source = peer_id_to_str(sender)  # pairwise MAC verified: attributable from here on
        self.fragment_from = sender
        try:
            envelope = self.reassembler.add(frag, now)
        except fr.FragmentError as exc:
            raise _Reject(source, exc.reason) from None
        if envelope is None:
            return []
        inbound = self._envelope(envelope, now, addr)
        if inbound and (inbound[0].sender != sender or inbound[0].header.seq != frag.seq):
            raise _Reject(source, "bad_fragment")
        if inbound and intro is not None:  # its sender may be new to the node, as for KIND_INTRO
            return [replace(inbound[0], work=intro[_INTRO_FIXED:], introduced=True)]
        return inbound

    def _nack(self, body: bytes, now: float, addr: str) -> None:
        sender, known = self._known_sender(body, addr)
        try:
            seq, rnd, missing = fr.open_nack(body, known.frag_key)
        except fr.FragmentError as exc:
            raise _Reject(addr, exc.reason) from None
        for dgram in self.send_buffer.repair(sender, seq, rnd, missing, now):
            self._outbox.append((sender, dgram))

    def _introduced(self, body: bytes, now: float, addr: str) -> list[Inbound]:
        intro, envelope = _split_intro(body, addr)
        return self._envelope(envelope, now, addr, intro)

    def _introduced_fragment(self, body: bytes, now: float, addr: str) -> list[Inbound]:
        intro, frag = _split_intro(body, addr)
        if frag[:1] != KIND_FRAGMENT:
            raise _Reject(addr, "malformed")
        try:
            sender = fr.peek_sender(frag)
        except fr.FragmentError as exc:
            raise _Reject(addr, exc.reason) from None
        self._learn_intro(sender, intro, addr)  # its fragment MAC then authenticates it
        return self._fragment(frag, now, addr, intro)

    def _learn_intro(self, sender: bytes, intro: bytes, addr: str) -> None:
        """Learn an unknown sender's keys from its intro (self-certifying, like a
        descriptor); a binding that is not the sender's is charged to the address."""
        if sender in self._peers:
            return
        try:
            vk = verify_key_from_peer_id(sender)
            box_key, sig = intro[:_INTRO_KEY_END], intro[_INTRO_KEY_END:_INTRO_SIG_END]
            self.add_peer(PeerKeys(sender, vk, box_key, sig))
        except IdentityError:
            raise _Reject(addr, "identity_mismatch") from None

    def _envelope(
        self, data: bytes, now: float, addr: str, intro: bytes | None = None
    ) -> list[Inbound]:
        try:
            env = parse(data, self.max_message)
        except EnvelopeError as exc:
            raise _Reject(addr, exc.reason) from None
        h = env.header
        if h.version != VERSION:
            raise _Reject(addr, "bad_version")
        if h.network != self.network_id:
            raise _Reject(addr, "wrong_network")
        if h.type not in DECODERS:
            raise _Reject(addr, "unknown_type")
        plaintext_type = h.type in PLAINTEXT_TYPES
        if h.recipient != self.identity.peer_id and not (plaintext_type and not h.recipient):
            raise _Reject(addr, "wrong_recipient")
        if h.sealed == plaintext_type:  # first contact must be signed, the rest sealed
            raise _Reject(addr, "malformed")
        now_ms = int(now * 1000)
        stale = self.replay.check(h.sender, h.seq, h.timestamp_ms, now_ms)
        if stale:
            raise _Reject(addr, stale)
        if intro is not None and not h.sealed:
            raise _Reject(addr, "malformed")  # only sealed envelopes are introduced
        plaintext = self._authenticate(env, addr, intro)
        source = peer_id_to_str(h.sender)
        self.replay.commit(h.sender, h.seq, now_ms)
        message, vector = self._decode(h, plaintext, source)
        work = intro[_INTRO_FIXED:] if intro is not None else b""
        return [Inbound(h.sender, h, message, vector, work, intro is not None)]

    def _authenticate(self, env: ParsedEnvelope, addr: str, intro: bytes | None) -> bytes:
        """The plaintext of an envelope whose signature (signed) or tag (sealed) checks out;
        failures are charged to the address, as nothing is attributable before this. An
        intro teaches an unknown sender's keys first (self-certifying, like a descriptor)."""
        if not env.header.sealed:
            try:
                self._verify(env)
            except IdentityError:
                raise _Reject(addr, "malformed") from None
            except EnvelopeError as exc:
                raise _Reject(addr, exc.reason) from None
            return env.payload
        sender = env.header.sender
        if intro is not None:
            self._learn_intro(sender, intro, addr)
        known = self._peers.get(sender)
        if known is None:
            # Not attributable (only the claimed sender's key could tell), but normal in a
            # network larger than a view: the node answers the address with a HELLO.
            raise _Reject(addr, "unknown_sender")
        try:
            plaintext = self._open(env, known, intro or b"")
        except EnvelopeError as exc:
            raise _Reject(addr, exc.reason) from None
        known.heard = True
        self._peers[sender] = self._peers.pop(sender)  # most recently heard: evicted last
        return plaintext

    def _decode(
        self, h: Header, plaintext: bytes, source: str
    ) -> tuple[Message, npt.NDArray[np.float32] | None]:
        try:
            obj = msgpack.unpackb(
                plaintext,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_PAYLOAD_DECODE,
                max_str_len=4096,
                max_array_len=4096,
                max_map_len=64,
            )
            message = DECODERS[h.type](obj)
        except (
            ValueError,
            MessageError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            TypeError,
        ):
            raise _Reject(source, "bad_payload") from None
        vector = None
        if isinstance(message, Hello):
            try:
                vk = verify_key_from_peer_id(h.sender)
                self.add_peer(PeerKeys(h.sender, vk, message.box_key, message.box_key_sig))
            except IdentityError:
                raise _Reject(source, "identity_mismatch") from None
        elif isinstance(message, Delta):
            if h.schema != message.schema_hash:
                raise _Reject(source, "bad_payload")
            try:
                vector = decode_vector(message.vector)
            except TensorCodecError:
                raise _Reject(source, "bad_tensor") from None
        return message, vector

    # ------------------------------------------------------------------ timers
    def poll(self, now: float) -> None:
        """Emit due NACKs (each sent twice: a lost NACK costs a whole round) and expire state."""
        nacks, dropped = self.reassembler.poll(now)
        for req in nacks:
            known = self._peers.get(req.peer)
            if known is None:
                continue
            body = fr.make_nack(
                KIND_NACK,
                self.identity.peer_id,
                req.seq,
                req.round,
                req.count,
                req.missing,
                known.frag_key,
            )
            dgram = self._wrap(body)
            self._outbox.extend([(req.peer, dgram), (req.peer, dgram)])
        for sender, _ in dropped:
            self.rejections.add(peer_id_to_str(sender), "reassembly_timeout")
        self.send_buffer.expire(now)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work."""
        return self.reassembler.next_deadline()


class _Reject(Exception):  # noqa: N818 (internal control flow, never escapes receive())
    def __init__(self, source: str, reason: str) -> None:
        super().__init__(reason)
        self.source = source
        self.reason = reason


def _split_intro(body: bytes, addr: str) -> tuple[bytes, bytes]:
    """``intro | rest`` → (intro, rest); a malformed intro is charged to the address."""
    if len(body) < _INTRO_FIXED or body[_INTRO_SIG_END] > MAX_INTRO_WORK:
        raise _Reject(addr, "malformed")
    end = _INTRO_FIXED + body[_INTRO_SIG_END]
    return body[:end], body[end:]


def _netmac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=NETMAC_BYTES, key=key, person=b"flava-netmac").digest()
