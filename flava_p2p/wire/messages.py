"""Message types carried in envelopes: discovery, liveness, peer exchange, model deltas.

Each type is a frozen dataclass with ``to_wire()`` (plain msgpack-able values) and a strict
``from_wire()`` that checks every field's type and bound, raising :class:`MessageError` — so a
decoded message is always well-formed, whatever a peer sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from flava_p2p.identity import PEER_ID_BYTES

MAX_ADDRS = 4
MAX_ADDR_LEN = 160
MAX_PEERS_PER_MESSAGE = 32
WORK_BYTES = 8
"""An identity-work nonce (see ``protocol/identity_work.py``)."""


class MessageError(ValueError):
    """A payload does not decode to a valid message of its declared type."""


class MsgType(IntEnum):
    """Envelope ``type`` field."""

    HELLO = 1
    """Discovery: sender's public keys and addresses (plaintext, signed)."""
    HELLO_ACK = 2
    """Reply to HELLO with the responder's keys (plaintext, signed)."""
    PING = 3
    """Liveness probe (encrypted)."""
    PONG = 4
    """Liveness answer echoing the probe's nonce."""
    SHUFFLE = 5
    """Cyclon peer-exchange request carrying a sample of the sender's view."""
    SHUFFLE_REPLY = 6
    """Cyclon peer-exchange answer."""
    DELTA = 7
    """A model delta against the genesis model."""


#: Types whose payload is public and sent in the clear (still signed): a first contact cannot
#: encrypt because it does not know the recipient's X25519 key yet.
PLAINTEXT_TYPES = frozenset({MsgType.HELLO, MsgType.HELLO_ACK})


# ----------------------------------------------------------------------------- field checks
def _bytes(x: Any, name: str, size: int | None = None, max_len: int = 1 << 16) -> bytes:
    if not isinstance(x, bytes) or (size is not None and len(x) != size) or len(x) > max_len:
        want = f"{size} bytes" if size is not None else f"≤ {max_len} bytes"
        raise MessageError(f"{name}: expected {want}")
    return x


def _int(x: Any, name: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise MessageError(f"{name}: expected an integer in [{lo}, {hi}]")
    return x


def _float(x: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise MessageError(f"{name}: expected a number")
    v = float(x)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise MessageError(f"{name}: expected a finite number in [{lo}, {hi}]")
    return v


def _str(x: Any, name: str, max_len: int) -> str:
    if not isinstance(x, str) or len(x) > max_len:
        raise MessageError(f"{name}: expected a string of ≤ {max_len} characters")
    return x


def _list(x: Any, name: str, max_len: int) -> list[Any]:
    if not isinstance(x, list) or len(x) > max_len:
        raise MessageError(f"{name}: expected a list of ≤ {max_len} items")
    return x


def _addrs(x: Any) -> tuple[str, ...]:
    return tuple(_str(a, "addr", MAX_ADDR_LEN) for a in _list(x, "addrs", MAX_ADDRS))


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class PeerDescriptor:
    """What one node tells others about a peer: identity, signed encryption key, addresses."""

    peer_id: bytes
    box_key: bytes
    box_key_sig: bytes
    addrs: tuple[str, ...]
    age: int = 0
    """Cyclon age: rounds since the descriptor was created by its owner."""
    work: bytes = b""
    """The peer's identity-work nonce (``protocol/identity_work.py``); empty when the network
    asks for none. Sent as a sixth field only when present."""

    def to_wire(self) -> list[Any]:
        out = [self.peer_id, self.box_key, self.box_key_sig, list(self.addrs), self.age]
        return [*out, self.work] if self.work else out

    @classmethod
    def from_wire(cls, obj: Any) -> PeerDescriptor:
        f = _list(obj, "peer", 6)
        if len(f) not in (5, 6):
            raise MessageError("peer: expected 5 or 6 fields")
        return cls(
            _bytes(f[0], "peer_id", PEER_ID_BYTES),
            _bytes(f[1], "box_key", 32),
            _bytes(f[2], "box_key_sig", 64),
            _addrs(f[3]),
            _int(f[4], "age", 0, 2**32 - 1),
            _bytes(f[5], "work", max_len=WORK_BYTES) if len(f) == 6 else b"",
        )


MAX_SCHEMA_FIELDS = 12
MAX_SCHEMA_KEY = 32
MAX_SCHEMA_VALUE = 200


def _schema(x: Any) -> tuple[tuple[str, str], ...]:
    """The model schema card: a small map of short strings (what the model is, for people)."""
    if not isinstance(x, dict) or len(x) > MAX_SCHEMA_FIELDS:
        raise MessageError(f"schema: expected a map of ≤ {MAX_SCHEMA_FIELDS} entries")
    return tuple(
        (_str(k, "schema key", MAX_SCHEMA_KEY), _str(v, "schema value", MAX_SCHEMA_VALUE))
        for k, v in x.items()
    )


def schema_differences(
    ours: dict[str, str] | tuple[tuple[str, str], ...],
    theirs: dict[str, str] | tuple[tuple[str, str], ...],
) -> list[str]:
    """One line per field where two schema cards differ: ``field: ours X, theirs Y``."""
    a, b = dict(ours), dict(theirs)
    keys = list(dict.fromkeys([*a, *b]))
    return [
        f"{k}: ours {a.get(k, '(none)')}, theirs {b.get(k, '(none)')}"
        for k in keys
        if a.get(k) != b.get(k)
    ]


@dataclass(frozen=True)
class Hello:
    """Discovery. The envelope's sender PeerID certifies ``box_key`` via ``box_key_sig``.

    ``schema_hash`` / ``schema`` say which model the sender trains (hash and a short card of
    encoder, front end, head, labels): a node that trains another model is refused at first
    contact with a message naming what differs, rather than by silently rejected deltas.
    Empty for nodes without a model (protocol-only runs).
    """

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    box_key: bytes
    box_key_sig: bytes
    addrs: tuple[str, ...] = ()
    want_reply: bool = True
    schema_hash: bytes = b""
    schema: tuple[tuple[str, str], ...] = ()
    work: bytes = b""
    """The sender's identity-work nonce; sent as a seventh field only when present."""

    def to_wire(self) -> list[Any]:
        out = [
            self.box_key,
            self.box_key_sig,
            list(self.addrs),
            self.want_reply,
            self.schema_hash,
            dict(self.schema),
        ]
        return [*out, self.work] if self.work else out

    @classmethod
    def from_wire(cls, obj: Any) -> Hello:
        f = _list(obj, "hello", 7)
        if len(f) not in (6, 7) or not isinstance(f[3], bool):
            raise MessageError(
                "hello: expected [box_key, sig, addrs, want_reply, schema_hash, schema, work?]"
            )
        digest = _bytes(f[4], "schema_hash", max_len=32)
        if len(digest) not in (0, 32):
            raise MessageError("schema_hash: expected 0 or 32 bytes")
        return cls(
            _bytes(f[0], "box_key", 32),
            _bytes(f[1], "box_key_sig", 64),
            _addrs(f[2]),
            f[3],
            digest,
            _schema(f[5]),
            _bytes(f[6], "work", max_len=WORK_BYTES) if len(f) == 7 else b"",
        )


@dataclass(frozen=True)
class HelloAck(Hello):
    """Answer to HELLO; same content, never answered itself."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO_ACK
    want_reply: bool = False

    @classmethod
    def from_wire(cls, obj: Any) -> HelloAck:
        h = Hello.from_wire(obj)
        return cls(h.box_key, h.box_key_sig, h.addrs, h.want_reply, h.schema_hash, h.schema, h.work)


@dataclass(frozen=True)
class Ping:
    """Liveness probe; ``nonce`` is echoed so the prober can match answers and measure RTT."""

    TYPE: ClassVar[MsgType] = MsgType.PING
    nonce: int

    def to_wire(self) -> list[Any]:
        return [self.nonce]

    @classmethod
    def from_wire(cls, obj: Any) -> Ping:
        f = _list(obj, "ping", 1)
        if len(f) != 1:
            raise MessageError("ping: expected [nonce]")
        return cls(_int(f[0], "nonce"))


@dataclass(frozen=True)
class Pong(Ping):
    """Liveness answer."""

    TYPE: ClassVar[MsgType] = MsgType.PONG

    @classmethod
    def from_wire(cls, obj: Any) -> Pong:
        return cls(Ping.from_wire(obj).nonce)


@dataclass(frozen=True)
class Shuffle:
    """Cyclon shuffle: a sample of the sender's peer-sampling view."""

    TYPE: ClassVar[MsgType] = MsgType.SHUFFLE
    peers: tuple[PeerDescriptor, ...]

    def to_wire(self) -> list[Any]:
        return [[p.to_wire() for p in self.peers]]

    @classmethod
    def from_wire(cls, obj: Any) -> Shuffle:
        f = _list(obj, "shuffle", 1)
        if len(f) != 1:
            raise MessageError("shuffle: expected [peers]")
        peers = _list(f[0], "peers", MAX_PEERS_PER_MESSAGE)
        return cls(tuple(PeerDescriptor.from_wire(p) for p in peers))


@dataclass(frozen=True)
class ShuffleReply(Shuffle):
    """Cyclon shuffle answer."""

    TYPE: ClassVar[MsgType] = MsgType.SHUFFLE_REPLY

    @classmethod
    def from_wire(cls, obj: Any) -> ShuffleReply:
        return cls(Shuffle.from_wire(obj).peers)


@dataclass(frozen=True)
class DpInfo:
    """The sender's privacy guarantees at the time of sending, each with its unit."""

    example_epsilon: float | None
    """Example-level ε spent by the sender's DP-SGD so far (None: not private)."""
    example_delta: float | None
    message_noise_multiplier: float | None = None
    """z of the optional message-level Gaussian noise (N(0, z²C²)), None when off."""
    message_clip: float | None = None
    """C, the L2 bound each outgoing delta was clipped to."""
    message_epsilon: float | None = None
    """Node-level ε of all message releases so far (None when message noise is off)."""
    message_delta: float | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.example_epsilon,
            self.example_delta,
            self.message_noise_multiplier,
            self.message_clip,
            self.message_epsilon,
            self.message_delta,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> DpInfo:
        f = _list(obj, "dp", 6)
        if len(f) != 6:
            raise MessageError("dp: expected 6 fields")
        vals = [None if v is None else _float(v, "dp", 0.0) for v in f]
        return cls(*vals)


@dataclass(frozen=True)
class Delta:
    """A model delta against the genesis model, with what a receiver needs to weigh it."""

    TYPE: ClassVar[MsgType] = MsgType.DELTA
    schema_hash: bytes
    genesis_hash: bytes
    round: int
    sample_count: int
    vector: dict[str, Any]
    """:func:`flava_p2p.wire.tensors.encode_vector` output; decoded and checked by the receiver."""
    dp: DpInfo = field(default_factory=lambda: DpInfo(None, None))

    def to_wire(self) -> list[Any]:
        return [
            self.schema_hash,
            self.genesis_hash,
            self.round,
            self.sample_count,
            self.vector,
            self.dp.to_wire(),
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> Delta:
        f = _list(obj, "delta", 6)
        if len(f) != 6 or not isinstance(f[4], dict):
            raise MessageError("delta: expected [schema, genesis, round, samples, vector, dp]")
        return cls(
            _bytes(f[0], "schema_hash", 32),
            _bytes(f[1], "genesis_hash", 32),
            _int(f[2], "round", 0, 2**32 - 1),
            _int(f[3], "sample_count", 0, 2**32 - 1),
            f[4],
            DpInfo.from_wire(f[5]),
        )

    def compression(self) -> str:
        """The vector's encoding name (fp32/fp16/int8/topk)."""
        return str(self.vector.get("enc"))


Message = Hello | HelloAck | Ping | Pong | Shuffle | ShuffleReply | Delta
M = TypeVar("M")
DECODERS: dict[int, Callable[[Any], Message]] = {
    MsgType.HELLO: Hello.from_wire,
    MsgType.HELLO_ACK: HelloAck.from_wire,
    MsgType.PING: Ping.from_wire,
    MsgType.PONG: Pong.from_wire,
    MsgType.SHUFFLE: Shuffle.from_wire,
    MsgType.SHUFFLE_REPLY: ShuffleReply.from_wire,
    MsgType.DELTA: Delta.from_wire,
}
