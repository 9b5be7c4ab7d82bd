"""libp2p as a second carrier of FLAVA's sealed envelopes: TCP + Noise (only) + yamux.

The envelopes are the very bytes the UDP wire sends: already signed, encrypted and bound to
the network. libp2p adds what UDP cannot give a device behind NAT: an outbound connection that
the peer can answer on, and Circuit Relay v2 for peers nobody can dial. Each envelope is one
length-prefixed frame (u32 big-endian) on one long-lived ``/flava/wire/1.0.0`` stream per peer
and direction; the node's core neither knows nor cares which carrier a datagram came by.

Security: the host's key is the node's own Ed25519 identity (the PeerID is unchanged), and the
only security protocol offered is Noise (a peer offering only ``/plaintext/2.0.0`` fails the
handshake). The network key is proved on every stream: its first frame is a BLAKE2b MAC under
the network key over both PeerIDs, which the Noise session has already authenticated, so a peer
of another network is reset before any envelope is read. (libp2p's own private-network
protector, pnet, would do this at the connection, but in py-libp2p 0.8 relayed connections fail
under it.) Defences that live here because the kernel filter covers only UDP: graylisted PeerIDs
are refused and disconnected, each peer gets a bounded number of inbound streams, a frame must
arrive whole within ``io_timeout_s`` (a peer that stalls mid-frame is reset), frames above
``max_frame`` are refused, and a peer's outbound queue is bounded (when it is full, new frames
are dropped and counted, as a congested UDP link would).

NAT: Circuit Relay v2. A node with ``relay="serve"`` relays for others within
:class:`RelayService` limits; a node given ``relays`` (typically one with no listening address
at all, as behind NAT) keeps a reservation at each and advertises
``<relay>/p2p-circuit/p2p/<PeerID>``, which peers dial through the relay.

Everything here runs in the trio thread of a :class:`~flava_p2p.runtime.trio_bridge.TrioThread`;
the asyncio side only calls :meth:`Libp2pTransport.start`, :meth:`send`, :meth:`block` and
:meth:`stop`, and receives frames through ``on_frame`` on its own loop.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol

from flava_p2p.errors import FlavaError
from flava_p2p.identity import Identity, peer_id_from_str, peer_id_to_str
from flava_p2p.runtime.trio_bridge import TrioThread

PROTOCOL = TProtocol("/flava/wire/1.0.0")
HEADER = 4
TAG_BYTES = 32
log = logging.getLogger("flava_p2p.libp2p")


class Libp2pError(FlavaError):
    """A libp2p address or setting the node cannot use."""


@dataclass(frozen=True)
class Libp2pLimits:
    """Bounds that keep one slow, dead or hostile peer from costing more than its share."""

    max_frame: int = 64 * 1024
    """Largest envelope accepted (the UDP wire's are ~1.2 kB; fragments keep them small)."""
    queue_bytes: int = 8 * 1024 * 1024
    """Bytes waiting to go to one peer (several 1 MiB deltas' fragments); beyond this new
    frames are dropped and counted, as a congested UDP link would drop them."""
    write_batch_bytes: int = 64 * 1024
    """Queued frames are coalesced into writes of up to this size (one Noise frame each)."""
    io_timeout_s: float = 10.0
    """A frame must be written, or arrive whole once its header has, within this."""
    dial_timeout_s: float = 10.0
    """Connecting to a peer and opening the stream."""
    max_inbound_streams_per_peer: int = 2
    reservation_refresh_s: float = 600.0
    """How often a relay reservation is renewed (relays grant ~1 h)."""


@dataclass
class LinkInfo:
    """What ``status`` shows about a libp2p peer."""

    peer_id: bytes
    relayed: bool
    remote: str


def admission_tag(network_key: bytes | None, sender: bytes, receiver: bytes) -> bytes:
    """The first frame of a stream: proof that ``sender`` holds the network key.

    Bound to both PeerIDs (which Noise authenticated), so it is useless on any other stream
    pair; with no network key it is a fixed tag that still names the protocol version.
    """
    key = network_key or b"flava-open-network"
    mac = blake2b(key=key[:64], digest_size=TAG_BYTES, person=b"flava-libp2p-adm")
    mac.update(sender)
    mac.update(receiver)
    return mac.digest()


@dataclass(frozen=True)
class RelayService:
    """Limits of a node that relays for others (``network.relay: serve``)."""

    max_reservations: int = 32
    max_circuits: int = 64
    max_circuit_seconds: int = 3600
    max_circuit_bytes: int = 256 * 1024 * 1024
    reservation_ttl_s: int = 3600


def split_p2p_addr(text: str) -> tuple[multiaddr.Multiaddr, bytes]:
    """``/ip4/…/tcp/…/p2p/<PeerID>`` or ``…/p2p-circuit/p2p/<PeerID>`` → (addr, PeerID)."""
    try:
        ma = multiaddr.Multiaddr(text)
        protos = [p.name for p in ma.protocols()]
    except Exception as exc:  # the multiaddr package raises many exception types
        raise Libp2pError(f"{text!r} is not a multiaddr ({exc}).") from None
    if not protos or protos[-1] != "p2p" or "tcp" not in protos:
        raise Libp2pError(
            f"{text!r}: a libp2p peer address must be /ip4/HOST/tcp/PORT/p2p/PEERID "
            "(or a relay's address followed by /p2p-circuit/p2p/PEERID)."
        )
    pid = peer_id_from_str(text.rsplit("/p2p/", 1)[1])
    return ma, pid


class Libp2pTransport:
    """One libp2p host carrying envelopes to and from peers addressed by PeerID."""

    def __init__(
        self,
        identity: Identity,
        bridge: TrioThread,
        on_frame: Callable[[bytes, bytes], None],
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        network_key: bytes | None = None,
        limits: Libp2pLimits | None = None,
        relay: RelayService | None = None,
        relays: Sequence[str] = (),
    ) -> None:
        self.identity = identity
        self.bridge = bridge
        self._on_frame = on_frame
        self.listen = [multiaddr.Multiaddr(a) for a in listen]
        self.network_key = network_key
        self.relay_service = relay
        self.relays = [split_p2p_addr(a) for a in relays]
        self.limits = limits or Libp2pLimits()
        self.counters: collections.Counter[str] = collections.Counter()
        self.addrs: list[str] = []
        self.last_error = ""
        self.errors: collections.deque[str] = collections.deque(maxlen=16)
        """The last failure to reach a peer (for status and debugging)."""
        # trio-thread state (only touched from the trio thread)
        self._host: Any = None
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self._stopping = trio.Event()
        self._stopped = trio.Event()
        self._outbound: dict[bytes, trio.MemorySendChannel[bytes]] = {}
        self._inbound_streams: collections.Counter[bytes] = collections.Counter()
        self._queued: collections.Counter[bytes] = collections.Counter()
        self._pending: list[tuple[bytes, bytes, list[multiaddr.Multiaddr]]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._known_addrs: dict[bytes, list[multiaddr.Multiaddr]] = {}
        self._blocked: frozenset[bytes] = frozenset()
        self._failure: BaseException | None = None
        self._circuit: Any = None

    # ------------------------------------------------------------------ asyncio side
    async def start(self, timeout: float = 30.0) -> list[str]:
        """Start the host; its listening multiaddrs (with ``/p2p/<PeerID>``)."""
        self.bridge.spawn(self._serve)
        await self.bridge.call(self._wait_started, timeout=timeout)
        if self._failure is not None:
            raise Libp2pError(f"the libp2p host did not start: {self._failure}")
        return list(self.addrs)

    def send(self, frame: bytes, peer_id: bytes, addrs: Sequence[str] = ()) -> None:
        """Queue one envelope for ``peer_id`` (dialled at ``addrs`` if not connected)."""
        parsed = []
        for text in addrs:
            with contextlib.suppress(Libp2pError):
                parsed.append(split_p2p_addr(text)[0])
        if not self.bridge.running:
            self.counters["libp2p_send_dropped_stopped"] += 1
            return
        # One hop into trio per burst, not per datagram: a delta is hundreds of fragments.
        with self._pending_lock:
            self._pending.append((frame, peer_id, parsed))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self.bridge.to_trio(self._flush)

    def _flush(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
            self._flush_scheduled = False
        for frame, peer_id, parsed in pending:
            self._enqueue(frame, peer_id, parsed)

    def block(self, peer_ids: set[bytes]) -> None:
        """Refuse (and disconnect) these PeerIDs: the graylist, applied on this carrier."""
        blocked = frozenset(peer_ids)
        if self.bridge.running:
            self.bridge.to_trio(lambda: self._set_blocked(blocked))

    async def links(self) -> list[LinkInfo]:
        """Connected peers, with whether each connection goes through a relay."""
        return await self.bridge.call(self._links, timeout=5.0)

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every stream and connection and stop the host."""
        if self.bridge.running:
            with contextlib.suppress(Exception):
                await self.bridge.call(self._stop, timeout=timeout)

    # ------------------------------------------------------------------ trio side
    async def _wait_started(self) -> None:
        await self._started.wait()

    async def _stop(self) -> None:
        self._stopping.set()
        await self._stopped.wait()

    def _make_host(self) -> Any:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
        from libp2p.rcmgr import new_resource_manager
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
        from libp2p.security.noise.transport import Transport as Noise

        key_pair = create_new_key_pair(bytes(self.identity.signing_key))
        if (
            str(key_pair.public_key.to_bytes().hex())
            != bytes(self.identity.signing_key.verify_key).hex()
        ):
            raise Libp2pError("libp2p derived another public key from the node's seed.")
        noise_only = {NOISE: Noise(key_pair, noise_privkey=new_x25519().private_key)}
        # Two parts of py-libp2p 0.8's resource manager are off. Its connection tracker counts
        # established inbound connections but does not uncount those the remote closes, so a
        # host refuses every connection after its 256th (measured: tests/
        # test_libp2p_transport.py, 1,000 connects). Its circuit breaker refuses every new
        # connection for 60 s after 5 failed acquisitions: five bad dials by anyone would shut
        # the node off. The manager's own connection and stream caps stay on, and the node
        # bounds peers itself (streams, frames, graylist).
        resources = new_resource_manager(
            enable_circuit_breaker=False, enable_connection_tracking=False
        )
        host = new_host(key_pair=key_pair, sec_opt=noise_only, resource_manager=resources)
        _release_inbound_slots(host.get_network())
        return host

    async def _serve(self) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        quiet_libp2p_logs()
        try:
            self._host = self._make_host()
            self._host.set_stream_handler(PROTOCOL, self._handle_inbound)
            circuit, protocol, discovery = self._make_relay_parts()
            async with (
                self._host.run(listen_addrs=self.listen),
                background_trio_service(protocol),
                background_trio_service(discovery),
                trio.open_nursery() as nursery,
            ):
                self._circuit = circuit
                self._nursery = nursery
                pid = peer_id_to_str(self.identity.peer_id)
                self.addrs = [
                    f"{a}" if "/p2p/" in str(a) else f"{a}/p2p/{pid}"
                    for a in self._host.get_addrs()
                ]
                for relay_addr, relay_pid in self.relays:
                    if await self._reserve(discovery, relay_addr, relay_pid):
                        self.addrs.append(f"{relay_addr}/p2p-circuit/p2p/{pid}")
                        nursery.start_soon(self._keep_reservation, discovery, relay_addr, relay_pid)
                self._started.set()
                await self._stopping.wait()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            self._failure = exc
            raise
        finally:
            self._started.set()
            self._stopped.set()

    def _make_relay_parts(self) -> tuple[Any, Any, Any]:
        """Circuit Relay v2: every node can dial and accept relayed connections; hop if serving."""
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.discovery import RelayDiscovery
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
        from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        svc = self.relay_service or RelayService(max_reservations=0, max_circuits=0)
        limits = RelayLimits(
            duration=svc.max_circuit_seconds,
            data=svc.max_circuit_bytes,
            max_circuit_conns=svc.max_circuits,
            max_reservations=svc.max_reservations,
            reservation_ttl=svc.reservation_ttl_s,
        )
        serving = self.relay_service is not None
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if serving else RelayRole(0))
        protocol = CircuitV2Protocol(self._host, limits=limits, allow_hop=serving)
        self._host.set_stream_handler(HOP, protocol._handle_hop_stream)
        self._host.set_stream_handler(STOP, protocol._handle_stop_stream)
        circuit = CircuitV2Transport(self._host, protocol, RelayConfig(roles=roles, limits=limits))
        discovery = RelayDiscovery(self._host, auto_reserve=False)
        circuit.discovery = discovery
        return circuit, protocol, discovery

    async def _reserve(self, discovery: Any, addr: multiaddr.Multiaddr, pid: bytes) -> bool:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        try:
            with trio.fail_after(self.limits.dial_timeout_s):
                await self._host.connect(PeerInfo(ID(pid), [addr]))
                await discovery._add_relay(ID(pid))
                ok = bool(await discovery.make_reservation(ID(pid)))
        except Exception as exc:  # an unreachable relay is counted, the node runs on
            log.warning("libp2p relay %s: no reservation (%r)", addr, exc)
            ok = False
        self.counters["libp2p_reservations" if ok else "libp2p_reservation_failed"] += 1
        return ok

    async def _keep_reservation(
        self, discovery: Any, addr: multiaddr.Multiaddr, pid: bytes
    ) -> None:
        """Renew well before the relay's TTL runs out (and after the relay drops us)."""
        while True:
            await trio.sleep(self.limits.reservation_refresh_s)
            await self._reserve(discovery, addr, pid)

    def _set_blocked(self, blocked: frozenset[bytes]) -> None:
        newly = blocked - self._blocked
        self._blocked = blocked
        for pid in newly:
            chan = self._outbound.pop(pid, None)
            if chan is not None:
                chan.close()
            if self._nursery is not None and self._host is not None:
                self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, pid: bytes) -> None:
        from libp2p.peer.id import ID

        with contextlib.suppress(Exception), trio.move_on_after(self.limits.io_timeout_s):
            await self._host.disconnect(ID(pid))

    def _enqueue(self, frame: bytes, pid: bytes, addrs: list[multiaddr.Multiaddr]) -> None:
        if pid in self._blocked:
            self.counters["libp2p_send_refused_graylisted"] += 1
            return
        if addrs:
            self._known_addrs[pid] = addrs
        if self._queued[pid] + len(frame) > self.limits.queue_bytes:
            self.counters["libp2p_send_dropped_backpressure"] += 1
            return
        chan = self._outbound.get(pid)
        if chan is None:
            if self._nursery is None:
                self.counters["libp2p_send_dropped_stopped"] += 1
                return
            chan, receive = trio.open_memory_channel[bytes](math.inf)  # bounded in bytes
            self._outbound[pid] = chan
            self._nursery.start_soon(self._writer, pid, receive)
        try:
            chan.send_nowait(frame)
            self._queued[pid] += len(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.counters["libp2p_send_dropped_closed"] += 1

    def _next_batch(
        self, first: bytes, frames: trio.MemoryReceiveChannel[bytes]
    ) -> tuple[bytes, int]:
        """``first`` and whatever else is queued, framed, up to ``write_batch_bytes``; and
        how many queued (unframed) bytes that takes off the queue."""
        parts = [len(first).to_bytes(HEADER, "big"), first]
        payload = len(first)
        while payload + HEADER * len(parts) // 2 < self.limits.write_batch_bytes:
            try:
                frame = frames.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            parts += [len(frame).to_bytes(HEADER, "big"), frame]
            payload += len(frame)
        return b"".join(parts), payload

    async def _writer(self, pid: bytes, frames: trio.MemoryReceiveChannel[bytes]) -> None:
        """Send one peer's queued frames on one stream, coalesced into large writes; a broken
        stream is re-opened once per write (the receiver resets a stream it refuses), a failed
        dial ends the link."""
        stream: Any = None
        try:
            async with frames:
                async for first in frames:
                    batch, payload = self._next_batch(first, frames)
                    for attempt in (0, 1):
                        if stream is None:
                            with trio.fail_after(self.limits.dial_timeout_s):
                                stream = await self._open_stream(pid)
                        try:
                            with trio.fail_after(self.limits.io_timeout_s):
                                await stream.write(batch)
                        except trio.TooSlowError:
                            raise
                        except Exception:
                            await _reset(stream)
                            stream = None
                            self.counters["libp2p_stream_reopened"] += 1
                            if attempt:
                                raise
                            continue
                        self.counters["libp2p_writes"] += 1
                        break
                    self._queued[pid] -= payload
        except trio.TooSlowError:
            self.counters["libp2p_send_failed"] += 1
            self.counters["libp2p_send_timeout"] += 1
        except Exception as exc:  # one peer's failure ends its link, never the host
            self.counters["libp2p_send_failed"] += 1
            self.last_error = f"{peer_id_to_str(pid)}: {exc!r}"
            self.errors.append(self.last_error)
            log.debug("libp2p send to %s failed: %r", peer_id_to_str(pid), exc)
        finally:
            self._queued.pop(pid, None)
            chan = self._outbound.pop(pid, None)
            if chan is not None:
                chan.close()
            if stream is not None:
                await _reset(stream)

    async def _open_stream(self, pid: bytes) -> Any:
        from libp2p.peer.id import ID

        network = self._host.get_network()
        if network.get_connections(ID(pid)):
            try:
                stream = await self._host.new_stream(ID(pid), [PROTOCOL])
            except Exception:
                # the connection was closing (the peer went away): drop it and dial afresh
                with contextlib.suppress(Exception):
                    await network.close_peer(ID(pid))
                self.counters["libp2p_redials"] += 1
                stream = await self._dial_and_open(pid)
        else:
            stream = await self._dial_and_open(pid)
        await stream.write(admission_tag(self.network_key, self.identity.peer_id, pid))
        return stream

    async def _dial_and_open(self, pid: bytes) -> Any:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        addrs = self._known_addrs.get(pid, [])
        # libp2p refuses to redial a peer whose last dial failed for a while (its negative
        # cache); the node's own sends decide when to try again, so that cache is cleared
        with contextlib.suppress(Exception):
            self._host.get_network().unblock_peer(ID(pid))
        direct = [a for a in addrs if "/p2p-circuit" not in str(a)]
        relayed = [a for a in addrs if "/p2p-circuit" in str(a)]
        if direct or not relayed:
            await self._host.connect(PeerInfo(ID(pid), direct))
        else:
            await self._circuit.dial(relayed[0])
            self.counters["libp2p_relayed_dials"] += 1
        return await self._host.new_stream(ID(pid), [PROTOCOL])

    async def _handle_inbound(self, stream: Any) -> None:
        """One peer's stream: admission, then frames until it ends or misbehaves."""
        pid = bytes(stream.muxed_conn.peer_id.to_bytes())
        if pid in self._blocked:
            self.counters["libp2p_refused_graylisted"] += 1
            await _reset(stream)
            return
        if self._inbound_streams[pid] >= self.limits.max_inbound_streams_per_peer:
            self.counters["libp2p_refused_stream_cap"] += 1
            await _reset(stream)
            return
        self._inbound_streams[pid] += 1
        try:
            refusal = await self._read_frames(stream, pid)
            if refusal is not None:
                self.counters[refusal] += 1
        except Exception as exc:  # a broken stream ends this peer's stream only
            self.counters["libp2p_stream_errors"] += 1
            log.debug("libp2p stream from %s: %r", peer_id_to_str(pid), exc)
        finally:
            self._inbound_streams[pid] -= 1
            if self._inbound_streams[pid] <= 0:
                del self._inbound_streams[pid]
            await _reset(stream)

    async def _read_frames(self, stream: Any, pid: bytes) -> str | None:
        """Deliver frames; the counter naming why the stream was refused, or None at its end."""
        reader = _Reader(stream)
        tag: bytes | None = None
        with trio.move_on_after(self.limits.io_timeout_s):
            tag = await reader.exactly(TAG_BYTES)
        expected = admission_tag(self.network_key, pid, self.identity.peer_id)
        if tag is None or not hmac.compare_digest(tag, expected):
            return "libp2p_refused_network"
        batch: list[bytes] = []
        while pid not in self._blocked:
            header = await reader.exactly(HEADER)  # idle between frames is fine
            if header is None:
                return None
            size = int.from_bytes(header, "big")
            if size == 0 or size > self.limits.max_frame:
                return "libp2p_refused_frame_size"
            body: bytes | None = None
            with trio.move_on_after(self.limits.io_timeout_s):
                body = await reader.exactly(size)
            if body is None:
                return "libp2p_refused_stalled"  # or closed mid-frame: the same to us
            self.counters["libp2p_frames_received"] += 1
            batch.append(body)
            if not reader.holds_frame():  # deliver what the buffer held in one hop to asyncio
                self.bridge.to_asyncio(self._deliver, batch, pid)
                batch = []
        return "libp2p_refused_graylisted"

    def _deliver(self, frames: list[bytes], pid: bytes) -> None:
        for frame in frames:
            self._on_frame(frame, pid)

    async def _links(self) -> list[LinkInfo]:
        out = []
        network = self._host.get_network()
        for peer in self._host.get_connected_peers():
            for conn in network.get_connections(peer):
                addrs = [str(a) for a in _transport_addrs(conn)]
                relayed = any("/p2p-circuit" in a for a in addrs)
                out.append(LinkInfo(bytes(peer.to_bytes()), relayed, addrs[0] if addrs else ""))
        return out


class _InboundConnectionClosed(Exception):  # noqa: N818 - control flow inside py-libp2p only
    """Raised into py-libp2p's inbound handler when its connection has closed."""


def _release_inbound_slots(swarm: Any) -> None:
    """Let py-libp2p 0.8's inbound handler end when its connection does.

    Its handler for an accepted TCP connection upgrades it and then waits for the whole swarm to
    stop, holding one of its ``max_connections - min_connections`` (250) inbound slots and one
    task for the host's lifetime: after 250 inbound connections in all, a host refuses every
    new one (measured: the 251st connect fails; ``tests/test_libp2p_transport.py``). Here the
    upgrade, on this host's swarm only, waits for its connection to close and then raises; the
    handler treats that as the end of the connection, releases the slot and returns. Version
    specific by nature: the package pin (``libp2p>=0.8,<0.9``) is what keeps it valid.
    """
    upgrade = swarm.upgrade_inbound_raw_conn

    async def upgrade_until_closed(raw_conn: Any, maddr: Any) -> Any:
        muxed = await upgrade(raw_conn, maddr)
        closed = getattr(muxed, "event_closed", None)
        if closed is None:
            return muxed  # another muxer: leave the library's behaviour alone
        await closed.wait()
        raise _InboundConnectionClosed

    swarm.upgrade_inbound_raw_conn = upgrade_until_closed


def quiet_libp2p_logs(level: int = logging.WARNING) -> None:
    """py-libp2p logs every dial and handshake at INFO; keep its records at ``level`` and up,
    unless the node runs at debug level. Its records reach the node's structlog handler (JSON
    or console) through the root logger like every other library's."""
    if logging.getLogger().level <= logging.DEBUG and logging.getLogger().level != 0:
        return  # the operator asked for debug (--log-level debug): show libp2p's too
    names = ["libp2p", *(n for n in logging.root.manager.loggerDict if n.startswith("libp2p."))]
    for name in names:  # some of its modules pin their own logger to INFO at import
        lib = logging.getLogger(name)
        if lib.level < level:
            lib.setLevel(level)


class _Reader:
    """Buffered reads: one ``stream.read`` of up to 64 KiB serves many small frames (a read
    through yamux and Noise costs far more than slicing a buffer)."""

    CHUNK = 64 * 1024

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()

    def holds_frame(self) -> bool:
        """Whether the buffer already holds a whole length-prefixed frame."""
        if len(self.buf) < HEADER:
            return False
        return len(self.buf) >= HEADER + int.from_bytes(self.buf[:HEADER], "big")

    async def exactly(self, n: int) -> bytes | None:
        """The next ``n`` bytes, or None if the stream ends first."""
        while len(self.buf) < n:
            chunk = await self.stream.read(max(self.CHUNK, n - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


async def _reset(stream: Any) -> None:
    with contextlib.suppress(Exception), trio.move_on_after(1.0):
        await stream.reset()


def _transport_addrs(conn: Any) -> list[Any]:
    get = getattr(conn, "get_transport_addresses", None)
    try:
        return list(get() or []) if callable(get) else []
    except Exception:
        return []
