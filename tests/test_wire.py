"""Secure wire: round trips, tampering, replay, confidentiality, admission, chunking, codec."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flava_p2p.config import Compression
from flava_p2p.identity import Identity
from flava_p2p.sim.lossy_link import send_over_lossy_link
from flava_p2p.wire import envelope as env_mod
from flava_p2p.wire.endpoint import (
    KIND_ENVELOPE,
    KIND_FRAGMENT,
    KIND_INTRO,
    KIND_INTRO_FRAGMENT,
    WireEndpoint,
)
from flava_p2p.wire.envelope import DOMAIN, Header, parse
from flava_p2p.wire.fragments import Reassembler
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
)
from flava_p2p.wire.tensors import TensorCodecError, decode_vector, encode_vector

NOW = 1_800_000_000.0
A, B, C = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
SCHEMA = b"s" * 32
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def endpoints(
    network_key: bytes | None = None, *, talked: bool = True
) -> tuple[WireEndpoint, WireEndpoint, WireEndpoint]:
    """A, B and C, who all know each other's keys; with ``talked``, each has already received
    a sealed PING from each other one, so their envelopes carry no intro."""
    eps = tuple(WireEndpoint(i, "testnet", network_key=network_key) for i in (A, B, C))
    for ep in eps:
        for other in (A, B, C):
            if other is not ep.identity:
                ep.add_peer(other.keys)
    if talked:
        for x in eps:
            for y in eps:
                if x is not y:
                    (d,) = x.seal(y.identity.peer_id, Ping(0), NOW - 1)
                    assert y.receive(d, NOW - 1)
    return eps  # type: ignore[return-value]


def deliver(receiver: WireEndpoint, datagrams: list[bytes], now: float = NOW) -> list[Message]:
    out = []
    for d in datagrams:
        out += [m.message for m in receiver.receive(d, now, "test")]
    return out


# ----------------------------------------------------------------------------- strategies
peer_desc = st.builds(
    PeerDescriptor,
    peer_id=st.sampled_from([A.peer_id, B.peer_id, C.peer_id]),
    box_key=st.binary(min_size=32, max_size=32),
    box_key_sig=st.binary(min_size=64, max_size=64),
    addrs=st.lists(st.text(max_size=40), max_size=4).map(tuple),
    age=st.integers(0, 2**32 - 1),
)
finite = st.floats(0, 1e6, allow_nan=False)
dp_info = st.builds(
    DpInfo,
    st.none() | finite,
    st.none() | finite,
    st.none() | finite,
    st.none() | finite,
    st.none() | finite,
    st.none() | finite,
)
vectors = hnp.arrays(np.float32, st.integers(0, 3000), elements=st.floats(-1e3, 1e3, width=32))
encodings: st.SearchStrategy[Compression] = st.sampled_from(["fp32", "fp16", "int8", "topk"])


@st.composite
def delta_msgs(draw: st.DrawFn) -> Delta:
    vec = draw(vectors)
    enc = encode_vector(vec, draw(encodings), compress=draw(st.booleans()))
    return Delta(
        SCHEMA,
        b"g" * 32,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        enc,
        draw(dp_info),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        st.just(A.keys.box_key),
        st.just(A.keys.box_key_sig),
        st.lists(st.text(max_size=60), max_size=4).map(tuple),
        st.booleans(),
    ),
    st.builds(HelloAck, st.just(A.keys.box_key), st.just(A.keys.box_key_sig)),
    st.builds(Ping, st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**64 - 1)),
    st.builds(Shuffle, st.lists(peer_desc, max_size=8).map(tuple)),
    st.builds(ShuffleReply, st.lists(peer_desc, max_size=8).map(tuple)),
    delta_msgs(),
)


def seal_from_a(msg: Message, ep_a: WireEndpoint) -> list[bytes]:
    to = None if isinstance(msg, Hello) else B.peer_id
    return ep_a.seal(to, msg, NOW, schema=SCHEMA if isinstance(msg, Delta) else b"")


# ----------------------------------------------------------------------------- properties
class TestRoundTrip:
    @PROPS
    @given(msg=messages)
    def test_every_message_type_round_trips(self, msg: Message) -> None:
        """Any valid message of any type arrives intact, exactly once."""
        a, b, _ = endpoints()
        got = deliver(b, seal_from_a(msg, a))
        assert got == [msg]
        assert b.rejections.total() == 0

    @PROPS
    @given(vec=vectors, enc=encodings, z=st.booleans())
    def test_delta_vector_decoded_within_codec_error(
        self, vec: np.ndarray, enc: str, z: bool
    ) -> None:
        """The receiver gets the decoded delta; lossless for fp32, bounded error otherwise."""
        a, b, _ = endpoints()
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(vec, enc, compress=z))  # type: ignore[arg-type]
        (inb,) = [m for d in a.seal(B.peer_id, msg, NOW, schema=SCHEMA) for m in b.receive(d, NOW)]
        assert inb.vector is not None and inb.vector.shape == vec.shape
        if enc == "fp32":
            assert np.array_equal(inb.vector, vec)
        elif enc in ("fp16", "int8") and vec.size:
            tol = np.abs(vec).max() * (1e-3 if enc == "fp16" else 1 / 127) + 1e-6
            assert np.abs(inb.vector - vec).max() <= tol


class TestTampering:
    @PROPS
    @given(msg=messages, data=st.data())
    def test_any_single_bit_flip_is_rejected_and_counted(
        self, msg: Message, data: st.DataObject
    ) -> None:
        """Flipping any one bit of any datagram: no message, one counted rejection, no raise."""
        a, b, _ = endpoints()
        datagrams = seal_from_a(msg, a)
        i = data.draw(st.integers(0, len(datagrams) - 1))
        bit = data.draw(st.integers(0, 8 * len(datagrams[i]) - 1))
        flipped = bytearray(datagrams[i])
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert b.receive(bytes(flipped), NOW, "x") == []
        assert b.rejections.total() == 1
        # and the untouched message still arrives afterwards (nothing was poisoned)
        others = [d for j, d in enumerate(datagrams) if j != i]
        assert deliver(b, [*others, datagrams[i]]) == [msg]

    @PROPS
    @given(msg=messages, data=st.data())
    def test_truncated_or_extended_is_rejected(self, msg: Message, data: st.DataObject) -> None:
        """Cutting bytes off or appending any bytes gets the datagram rejected and counted."""
        a, b, _ = endpoints()
        d = seal_from_a(msg, a)[0]
        if data.draw(st.booleans()):
            bad = d[: data.draw(st.integers(0, len(d) - 1))]
        else:
            bad = d + data.draw(st.binary(min_size=1, max_size=64))
        assert b.receive(bad, NOW) == []
        assert b.rejections.total() == 1

    def test_replayed_datagram_is_rejected(self) -> None:
        """The same authentic datagram twice: accepted once, then rejected as replay."""
        a, b, _ = endpoints()
        (d,) = a.seal(B.peer_id, Ping(1), NOW)
        assert deliver(b, [d]) == [Ping(1)]
        assert deliver(b, [d], NOW + 1) == []
        assert b.rejections.by_reason() == {"replay": 1}

    def test_replayed_fragmented_message_is_rejected(self) -> None:
        """Replaying every fragment of a delivered large message yields nothing new."""
        a, b, _ = endpoints()
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(np.ones(5000, np.float32)))
        ds = a.seal(B.peer_id, msg, NOW, schema=SCHEMA)
        assert len(ds) > 1 and deliver(b, ds) == [msg]
        assert deliver(b, ds, NOW + 2) == []

    def test_out_of_order_within_window_accepted(self) -> None:
        """Later seqnos may arrive first (UDP reorders); each still counts once."""
        a, b, _ = endpoints()
        d1, d2 = a.seal(B.peer_id, Ping(1), NOW)[0], a.seal(B.peer_id, Ping(2), NOW)[0]
        assert deliver(b, [d2, d1, d2, d1]) == [Ping(2), Ping(1)]

    def test_stale_and_future_timestamps_rejected(self) -> None:
        """Messages outside the time window are refused before the signature check."""
        a, b, _ = endpoints()
        (old,) = a.seal(B.peer_id, Ping(1), NOW - 3600)
        (new,) = a.seal(B.peer_id, Ping(2), NOW + 3600)
        assert deliver(b, [old, new]) == []
        assert b.rejections.by_reason() == {"stale_timestamp": 1, "future_timestamp": 1}

    def test_c_cannot_read_or_accept_message_for_b(self) -> None:
        """A→B traffic delivered to C is refused, and C's keys cannot open the seal."""
        a, _b, c = endpoints()
        (d,) = a.seal(B.peer_id, Ping(7), NOW)
        assert deliver(c, [d]) == []
        assert c.rejections.by_reason() == {"wrong_recipient": 1}
        env = parse(d[1:], 1 << 20)
        assert env.header.sealed and env.signature == b""
        assert msgpack.packb(Ping(7).to_wire()) not in env.payload  # not in clear
        from nacl.public import Box, PublicKey

        c_pair = env_mod.PairKeys.derive(Box(C.box_key, PublicKey(A.keys.box_key)).shared_key())
        with pytest.raises(env_mod.EnvelopeError, match="bad_auth"):
            env_mod.open_sealed(env, c_pair)
        a_pair = env_mod.PairKeys.derive(Box(B.box_key, PublicKey(A.keys.box_key)).shared_key())
        assert env_mod.open_sealed(env, a_pair) == msgpack.packb(Ping(7).to_wire())

    def test_resealed_with_another_key_rejected(self) -> None:
        """C re-seals A's header to B with its own key (claiming to be A, or itself while
        unknown to B), or changes a header field: nothing is accepted, nobody honest blamed."""
        from nacl.public import Box, PublicKey

        a, b, _ = endpoints()
        (d,) = a.seal(B.peer_id, Ping(9), NOW)
        env = parse(d[1:], 1 << 20)
        c_pair = env_mod.PairKeys.derive(Box(C.box_key, PublicKey(B.keys.box_key)).shared_key())
        plain = msgpack.packb(Ping(9).to_wire())
        fields = {k: v for k, v in env.header.__dict__.items() if not k.startswith("payload")}
        # the genuine seal under a changed round: the tag covers the header
        tampered = Header(**{**env.header.__dict__, "round": 5}).encode()
        forged = [
            KIND_ENVELOPE + env_mod.seal_envelope(c_pair, {**fields, "seq": 10**6}, plain),
            KIND_ENVELOPE + len(tampered).to_bytes(2, "big") + tampered + env.payload,
        ]
        assert deliver(b, forged) == []
        assert b.rejections.by_reason() == {"bad_auth": 2}
        assert all(src.startswith("addr:") for src, _ in b.rejections.counts)
        assert deliver(b, [d]) == [Ping(9)]  # the genuine one still passes afterwards

    def test_signed_hello_cannot_be_resigned_by_another_key(self) -> None:
        """C re-signs A's HELLO claiming to be A: the signature does not check out."""
        a, b, _ = endpoints()
        (d,) = a.seal(None, Hello(A.keys.box_key, A.keys.box_key_sig), NOW)
        env = parse(d[1:], 1 << 20)
        assert not env.header.sealed and len(env.signature) == 64
        hb = env.header_bytes
        sig = C.signing_key.sign(DOMAIN + hb).signature
        forged = KIND_ENVELOPE + len(hb).to_bytes(2, "big") + hb + sig + env.payload
        assert deliver(b, [forged]) == []
        assert b.rejections.by_reason() == {"bad_signature": 1}

    def test_kind_must_match_type(self) -> None:
        """A PING framed as a signed envelope (or a HELLO as a sealed one) is refused: the
        kind follows from the type, so nobody can downgrade a sealed type to a signed one."""
        from nacl.public import Box, PublicKey

        a, b, _ = endpoints()
        (d,) = a.seal(B.peer_id, Ping(4), NOW)
        fields = {
            k: v
            for k, v in parse(d[1:], 1 << 20).header.__dict__.items()
            if not k.startswith("payload")
        }
        signed_ping = env_mod.sign_envelope(A.signing_key, fields, msgpack.packb([4]))
        pair = env_mod.PairKeys.derive(Box(A.box_key, PublicKey(B.keys.box_key)).shared_key())
        hello = Hello(A.keys.box_key, A.keys.box_key_sig)
        sealed_hello = env_mod.seal_envelope(
            pair, {**fields, "type": int(hello.TYPE), "seq": 99}, msgpack.packb(hello.to_wire())
        )
        assert deliver(b, [KIND_ENVELOPE + signed_ping, KIND_ENVELOPE + sealed_hello]) == []
        assert b.rejections.by_reason() == {"malformed": 2}

    def test_non_canonical_header_rejected(self) -> None:
        """A header re-encoded non-minimally (same values) is refused: no malleability."""
        a, b, _ = endpoints()
        for d in (a.seal(B.peer_id, Ping(3), NOW)[0], a.seal(None, Hello(b"k" * 32, b""), NOW)[0]):
            env = parse(d[1:], 1 << 20)
            fields = list(msgpack.unpackb(env.header_bytes))
            hb = b"\xdc\x00\x0b" + b"".join(msgpack.packb(f) for f in fields)  # array16 header
            sig = A.signing_key.sign(DOMAIN + hb).signature if env.signature else b""
            forged = KIND_ENVELOPE + len(hb).to_bytes(2, "big") + hb + sig + env.payload
            assert deliver(b, [forged]) == []
        assert b.rejections.by_reason() == {"malformed": 2}


class TestIntro:
    """A first sealed datagram to a peer carries our keys and work nonce (KIND_INTRO)."""

    def test_a_stranger_opens_it_and_learns_our_keys(self) -> None:
        """B never heard of A: A's intro lets B check A's keys and open the PING at once;
        once B has sealed something back, A's envelopes carry no intro any more."""
        a = WireEndpoint(A, "testnet")
        a.intro_work = b"w" * 8
        b = WireEndpoint(B, "testnet")
        a.add_peer(B.keys)
        (d,) = a.seal(B.peer_id, Ping(1), NOW)
        assert d[:1] == KIND_INTRO
        (inbound,) = b.receive(d, NOW)
        assert inbound.message == Ping(1) and inbound.introduced and inbound.work == b"w" * 8
        assert b.peer_keys(A.peer_id) == A.keys
        (back,) = b.seal(A.peer_id, Pong(1), NOW)
        assert back[:1] == KIND_ENVELOPE  # A sent B something sealed: A holds B's keys
        assert deliver(a, [back]) == [Pong(1)]
        assert a.seal(B.peer_id, Ping(2), NOW)[0][:1] == KIND_ENVELOPE

    @PROPS
    @given(data=st.data())
    def test_any_single_bit_flip_is_rejected(self, data: st.DataObject) -> None:
        """The intro is covered by the envelope's tag: a flipped bit anywhere, intro
        included, costs one counted rejection and teaches the stranger nothing false."""
        a = WireEndpoint(A, "testnet")
        a.intro_work = b"w" * 8
        a.add_peer(B.keys)
        (d,) = a.seal(B.peer_id, Ping(1), NOW)
        bit = data.draw(st.integers(8, 8 * len(d) - 1))  # the kind byte aside
        flipped = bytearray(d)
        flipped[bit // 8] ^= 1 << (bit % 8)
        b = WireEndpoint(B, "testnet")
        assert b.receive(bytes(flipped), NOW) == []
        assert b.rejections.total() == 1
        assert b.peer_keys(A.peer_id) in (None, A.keys)
        assert deliver(b, [d]) == [Ping(1)]  # the genuine one still passes afterwards

    def test_the_key_directory_is_bounded_least_recently_heard_first(self) -> None:
        """Minted identities announcing themselves cannot grow a node's key directory without
        bound: past ``max_peers`` the peer heard from longest ago is forgotten, and a peer
        that keeps talking is kept."""
        b = WireEndpoint(B, "testnet")
        b.max_peers = 3
        a = WireEndpoint(A, "testnet")
        a.add_peer(B.keys)
        deliver(b, a.seal(B.peer_id, Ping(1), NOW))  # A introduces itself
        strangers = [Identity.from_seed(bytes([50 + i]) * 32) for i in range(4)]
        for k, ident in enumerate(strangers):
            b.add_peer(ident.keys)
            assert deliver(b, a.seal(B.peer_id, Ping(10 + k), NOW)) == [Ping(10 + k)]
        assert b.knows(A.peer_id)  # heard after every newcomer: never the oldest
        assert [b.knows(i.peer_id) for i in strangers] == [False, False, True, True]

    def test_a_stranger_reassembles_a_fragmented_first_message(self) -> None:
        """A first delta too large for one datagram: every fragment carries the intro, so a
        stranger opens it whatever the order of arrival, and learns the sender's keys and
        work; once the stranger has answered, fragments go without it."""
        a = WireEndpoint(A, "testnet")
        a.intro_work = b"w" * 8
        a.add_peer(B.keys)
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(np.ones(3000, np.float32)))
        frags = a.seal(B.peer_id, msg, NOW, schema=SCHEMA)
        assert len(frags) > 2 and all(d[:1] == KIND_INTRO_FRAGMENT for d in frags)
        assert all(len(d) <= 1200 for d in frags)
        b = WireEndpoint(B, "testnet")
        got = [m for d in reversed(frags) for m in b.receive(d, NOW, "x")]
        assert b.rejections.total() == 0
        (inbound,) = got
        assert inbound.message == msg and inbound.introduced and inbound.work == b"w" * 8
        assert b.peer_keys(A.peer_id) == A.keys
        deliver(a, b.seal(A.peer_id, Pong(1), NOW))
        assert {d[:1] for d in a.seal(B.peer_id, msg, NOW, schema=SCHEMA)} == {KIND_FRAGMENT}

    def test_forged_intro_fragments_teach_nothing(self) -> None:
        """C claims to be A in a fragment: A's binding does not open C's MAC, and C's binding
        does not match A's PeerID. Counted, and nothing false is learnt."""
        c = WireEndpoint(C, "testnet")
        c.add_peer(B.keys)
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(np.ones(3000, np.float32)))
        first = c.seal(B.peer_id, msg, NOW, schema=SCHEMA)[0]
        at = 1 + 97  # kind, box key, binding, work length (no work), then the fragment
        assert first[at : at + 1] == KIND_FRAGMENT
        as_a = first[: at + 1] + A.peer_id + first[at + 1 + len(A.peer_id) :]
        with_a_binding = first[:1] + A.keys.box_key + A.keys.box_key_sig + first[97:]
        b = WireEndpoint(B, "testnet")
        assert b.receive(as_a, NOW, "x") == [] and b.receive(with_a_binding, NOW, "x") == []
        assert b.rejections.by_reason() == {"identity_mismatch": 2}
        assert not b.knows(C.peer_id) and not b.knows(A.peer_id)

    def test_someone_elses_key_in_the_intro_is_refused(self) -> None:
        """C introduces itself with A's key binding: it does not match C's PeerID."""
        c = WireEndpoint(C, "testnet")
        c.add_peer(B.keys)
        (d,) = c.seal(B.peer_id, Ping(1), NOW)
        forged = d[:1] + A.keys.box_key + A.keys.box_key_sig + d[97:]
        b = WireEndpoint(B, "testnet")
        assert b.receive(forged, NOW, "x") == [] and not b.knows(C.peer_id)
        assert b.rejections.by_reason() == {"identity_mismatch": 1}


class TestAdmission:
    def test_without_network_key_rejected_before_parsing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a network key, a datagram without it costs one MAC check; nothing is parsed."""
        key = bytes(range(32))
        _, b, _ = endpoints(network_key=key)
        outsider, _, _ = endpoints(network_key=None)
        wrong, _, _ = endpoints(network_key=bytes(32))
        called: list[bytes] = []
        monkeypatch.setattr("flava_p2p.wire.endpoint.parse", lambda *a, **k: called.append(a[0]))
        for ep in (outsider, wrong):
            for d in ep.seal(B.peer_id, Ping(1), NOW):
                assert b.receive(d, NOW, "1.2.3.4:5") == []
        assert called == []
        assert b.rejections.by_reason() == {"network_mac": 2}
        assert b.rejections.for_source("addr:1.2.3.4:5") == {"network_mac": 2}

    def test_members_with_key_talk(self) -> None:
        """Members sharing the key communicate normally, fragmented messages included."""
        key = bytes(range(32))
        a, b, _ = endpoints(network_key=key)
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(np.ones(3000, np.float32)))
        assert deliver(b, a.seal(B.peer_id, msg, NOW, schema=SCHEMA)) == [msg]
        assert all(len(d) <= 1200 for d in a.seal(B.peer_id, msg, NOW, schema=SCHEMA))

    def test_hello_registers_self_certified_keys(self) -> None:
        """A stranger's HELLO teaches its keys; a HELLO with a key not signed by it is refused."""
        a = WireEndpoint(A, "testnet")
        b = WireEndpoint(B, "testnet")
        assert not b.knows(A.peer_id)
        deliver(b, a.seal(None, Hello(A.keys.box_key, A.keys.box_key_sig), NOW))
        assert b.knows(A.peer_id)
        c = WireEndpoint(C, "testnet")
        deliver(b, c.seal(None, Hello(A.keys.box_key, A.keys.box_key_sig), NOW))
        assert not b.knows(C.peer_id)
        assert b.rejections.by_reason() == {"identity_mismatch": 1}

    def test_wrong_network_rejected(self) -> None:
        """A node of another network id is refused."""
        other = WireEndpoint(A, "othernet")
        other.add_peer(B.keys)
        _, b, _ = endpoints()
        assert deliver(b, other.seal(B.peer_id, Ping(1), NOW)) == []
        assert b.rejections.by_reason() == {"wrong_network": 1}


class TestChunking:
    def _big(self, n: int = 125_000) -> Delta:
        vec = np.random.default_rng(0).normal(size=n).astype(np.float32)
        return Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(vec))

    def test_all_datagrams_within_mtu_and_any_order(self) -> None:
        """A 500 kB delta is split under the MTU and reassembles from shuffled duplicates."""
        a, b, _ = endpoints()
        msg = self._big()
        ds = a.seal(B.peer_id, msg, NOW, schema=SCHEMA)
        assert len(ds) > 400 and max(map(len, ds)) <= 1200
        shuffled = ds + ds[:50]
        random.Random(0).shuffle(shuffled)
        assert deliver(b, shuffled) == [msg]

    @pytest.mark.parametrize(("loss", "required"), [(0.05, 0.99), (0.20, 0.95)])
    def test_loss_repaired_within_three_rounds(self, loss: float, required: float) -> None:
        """Independent loss on data and NACKs: delivered within 3 repair rounds often enough."""
        rng = random.Random(42)
        msg = self._big()
        trials, ok = 60, 0
        for _ in range(trials):
            a, b, _ = endpoints()
            r = send_over_lossy_link(
                a, b, a.seal(B.peer_id, msg, NOW, schema=SCHEMA), loss, rng, start=NOW
            )
            ok += (
                r.delivered
                and r.repair_rounds <= 3
                and r.message is not None
                and r.message.message == msg
            )
        assert ok / trials >= required

    def test_reassembly_caps_bound_memory(self) -> None:
        """Declared sizes are reserved up front: byte and count caps refuse before buffers grow."""
        a = WireEndpoint(A, "testnet")
        b = WireEndpoint(
            B, "testnet", reassembler=Reassembler(per_peer_bytes=350_000, max_partials_per_peer=2)
        )
        a.add_peer(B.keys)
        b.add_peer(A.keys)

        def first_fragment(n: int) -> bytes:  # the rest never arrives: stays incomplete
            return a.seal(B.peer_id, self._big(n), NOW, schema=SCHEMA)[0]

        b.receive(first_fragment(100_000), NOW)  # ~400 kB declared > 350 kB per peer
        assert b.rejections.by_reason() == {"reassembly_cap": 1}
        for _ in range(3):  # ~40 kB each: two fit, the third exceeds the partials cap
            b.receive(first_fragment(10_000), NOW)
        assert b.rejections.by_reason() == {"reassembly_cap": 2}
        assert 0 < b.reassembler.buffered_bytes <= 350_000

    def test_incomplete_reassembly_times_out(self) -> None:
        """A message whose repairs never come is dropped and counted after giving up."""
        a, b, _ = endpoints()
        ds = a.seal(B.peer_id, self._big(10_000), NOW, schema=SCHEMA)
        deliver(b, ds[:-1])
        for t in range(200):
            b.poll(NOW + t * 0.1)
        assert b.reassembler.buffered_bytes == 0
        assert b.rejections.by_reason() == {"reassembly_timeout": 1}

    def test_forged_nack_causes_no_retransmission(self) -> None:
        """Only the real recipient's NACK (pairwise MAC) triggers repairs; each round once."""
        a, b, _c = endpoints()
        ds = a.seal(B.peer_id, self._big(10_000), NOW, schema=SCHEMA)
        deliver(b, ds[:-2])
        b.poll(NOW + 1)
        nacks = [d for _, d in b.take_outbox()]
        assert len(nacks) == 2  # each NACK is sent twice
        deliver(a, nacks)
        assert len(a.take_outbox()) == 2 * 2  # round 1: two missing × two copies, once
        c_nack = bytearray(nacks[0])
        c_nack[-1] ^= 1
        deliver(a, [bytes(c_nack)])
        assert a.take_outbox() == []


class TestTensorCodec:
    @PROPS
    @given(vec=vectors, enc=encodings, z=st.booleans())
    def test_round_trip_shape_and_finiteness(self, vec: np.ndarray, enc: str, z: bool) -> None:
        """Every encoding decodes to a finite float32 vector of the same length."""
        out = decode_vector(encode_vector(vec, enc, compress=z))  # type: ignore[arg-type]
        assert out.dtype == np.float32 and out.shape == vec.shape and np.isfinite(out).all()

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda o: o.update(n=o["n"] + 1),
            lambda o: o.update(n=-1),
            lambda o: o.update(n=10**12),
            lambda o: o.update(enc="pickle"),
            lambda o: o.update(data=o["data"][:-1]),
            lambda o: o.update(data=b"\x00\x00\xc0\x7f" * o["n"]),  # NaN
            lambda o: o.update(data="text"),
        ],
    )
    def test_malformed_rejected_before_allocation(
        self, mutate: Callable[[dict[str, Any]], None]
    ) -> None:
        """Lies about size/type/content raise TensorCodecError, never anything else."""
        obj = encode_vector(np.ones(16, np.float32))
        mutate(obj)
        with pytest.raises(TensorCodecError):
            decode_vector(obj)

    def test_zstd_bomb_refused(self) -> None:
        """A small zstd payload expanding past its declared size is refused."""
        import zstandard

        obj = {
            "enc": "fp32",
            "n": 4,
            "zstd": True,
            "data": zstandard.ZstdCompressor().compress(b"\x00" * 10_000_000),
        }
        with pytest.raises(TensorCodecError):
            decode_vector(obj)

    def test_refuses_nan_on_encode(self) -> None:
        """A NaN in an outgoing delta is a bug upstream: refuse to send it."""
        with pytest.raises(TensorCodecError):
            encode_vector(np.array([1.0, np.nan], np.float32))


# ----------------------------------------------------------------------------- wire: fast
class TestUnsealedEndpoint:
    """The simulator's ``wire: fast`` endpoint: same envelopes, no public-key cryptography."""

    def test_round_trip_and_cleartext(self) -> None:
        """Messages go through the same parsing and decoding, but the payload is in clear and
        the signature is zero: nothing about it is secret or authenticated."""
        from flava_p2p.sim.fast_wire import UnsealedEndpoint

        a, b = (UnsealedEndpoint(i, "testnet") for i in (A, B))
        a.add_peer(B.keys)
        b.add_peer(A.keys)
        msg = Ping(nonce=7)
        (datagram,) = a.seal(B.peer_id, msg, NOW)
        assert deliver(b, [datagram]) == [msg]
        assert datagram[:1] == KIND_INTRO  # first contact: our keys ride along (97 bytes)
        env = parse(datagram[1 + 97 :], 1 << 20)
        assert env.header.sealed and env.signature == b""
        assert env.payload == bytes(24) + msgpack.packb(msg.to_wire()) + bytes(16)
        real = WireEndpoint(A, "testnet")
        real.add_peer(B.keys)
        assert len(real.seal(B.peer_id, msg, NOW)[0]) == len(datagram)  # same sizes as real
        (hello,) = a.seal(None, Hello(A.keys.box_key, A.keys.box_key_sig), NOW)
        assert parse(hello[1:], 1 << 20).signature == bytes(64)
        assert deliver(b, [datagram]) == []  # the replay window still holds
        assert b.rejections.by_reason() == {"replay": 1}

    def test_real_endpoints_reject_unsealed_datagrams(self) -> None:
        """An unsealed datagram can never pass for a real one."""
        from flava_p2p.sim.fast_wire import UnsealedEndpoint

        fast = UnsealedEndpoint(A, "testnet")
        fast.add_peer(B.keys)
        _, real_b, _ = endpoints(talked=False)
        assert deliver(real_b, fast.seal(B.peer_id, Ping(nonce=1), NOW)) == []
        hello = fast.seal(None, Hello(A.keys.box_key, A.keys.box_key_sig), NOW)
        assert deliver(real_b, hello) == []
        assert real_b.rejections.by_reason() == {"bad_auth": 1, "bad_signature": 1}
