#!/usr/bin/env python3
"""A 1 MiB delta over UDP, libp2p direct and libp2p relayed, on this machine. Prints JSON.

The same sealed envelopes every time: a 1 MiB Delta (262,144 float32) sealed by a real
WireEndpoint into 1,200-byte datagrams (signed, encrypted, fragmented), carried, and opened and
reassembled by the receiver's WireEndpoint. The time is from sealing to the reassembled,
verified vector at the receiver, so it includes the wire's cryptography (the same on every
carrier) as well as the carrier. Latency is the median round trip of one small envelope echoed
back (warm connection; libp2p's connection set-up is reported on its own).

    .venv/bin/python scripts/bench_transport.py [--reps 5] [--pings 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flava_p2p.identity import Identity
from flava_p2p.runtime.libp2p_transport import Libp2pTransport, RelayService
from flava_p2p.runtime.trio_bridge import TrioThread
from flava_p2p.wire.endpoint import WireEndpoint
from flava_p2p.wire.messages import Delta, DpInfo, Ping
from flava_p2p.wire.tensors import encode_vector

A, B, R = (Identity.from_seed(bytes([c]) * 32) for c in b"ABR")
SCHEMA = b"s" * 32
MIB = 1 << 20


def endpoints() -> tuple[WireEndpoint, WireEndpoint]:
    """Fresh sender/receiver wire endpoints that know each other's keys."""
    a, b = WireEndpoint(A, "bench"), WireEndpoint(B, "bench")
    a.add_peer(B.keys)
    b.add_peer(A.keys)
    return a, b


class Carrier:
    """Send datagrams A→B (and B→A for echoes); B's datagrams go to ``on_b``, A's to ``on_a``."""

    on_a: Callable[[bytes], None] = staticmethod(lambda d: None)
    on_b: Callable[[bytes], None] = staticmethod(lambda d: None)

    def a_to_b(self, datagram: bytes) -> None:
        raise NotImplementedError

    def b_to_a(self, datagram: bytes) -> None:
        raise NotImplementedError


class UdpCarrier(Carrier, asyncio.DatagramProtocol):
    """Two UDP sockets on 127.0.0.1 (receive buffers raised to 8 MiB, so a burst fits)."""

    async def open(self) -> UdpCarrier:
        loop = asyncio.get_running_loop()
        self.ta, _ = await loop.create_datagram_endpoint(
            lambda: _Rx(self._to_a), sock=_udp_socket()
        )
        self.tb, _ = await loop.create_datagram_endpoint(
            lambda: _Rx(self._to_b), sock=_udp_socket()
        )
        self.addr_a = self.ta.get_extra_info("sockname")
        self.addr_b = self.tb.get_extra_info("sockname")
        return self

    def _to_a(self, d: bytes) -> None:
        self.on_a(d)  # looked up per datagram: each measurement installs its own handler

    def _to_b(self, d: bytes) -> None:
        self.on_b(d)

    def a_to_b(self, datagram: bytes) -> None:
        self.ta.sendto(datagram, self.addr_b)

    def b_to_a(self, datagram: bytes) -> None:
        self.tb.sendto(datagram, self.addr_a)

    async def close(self) -> None:
        self.ta.close()
        self.tb.close()


class _Rx(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self.deliver = deliver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.deliver(data)


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MIB)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Libp2pCarrier(Carrier):
    """Two libp2p hosts, directly or with B reachable only through a relay R."""

    def __init__(self, relayed: bool) -> None:
        self.relayed = relayed
        self.bridges: list[TrioThread] = []
        self.transports: list[Libp2pTransport] = []

    async def open(self) -> Libp2pCarrier:
        relays: list[str] = []
        if self.relayed:
            r = await self._host(R, lambda d, p: None, relay=RelayService())
            relays = [a for a in r.addrs if "/tcp/" in a][:1]
        self.a = await self._host(A, lambda d, p: self.on_a(d))
        self.b = await self._host(
            B, lambda d, p: self.on_b(d), listen=() if self.relayed else None, relays=relays
        )
        return self

    async def _host(
        self,
        ident: Identity,
        on_frame: Callable[[bytes, bytes], None],
        listen: tuple[str, ...] | None = None,
        **kw: Any,
    ) -> Libp2pTransport:
        bridge = TrioThread()
        bridge.start()
        t = Libp2pTransport(
            ident,
            bridge,
            on_frame,
            listen=("/ip4/127.0.0.1/tcp/0",) if listen is None else listen,
            limits=None,
            **kw,
        )
        await t.start()
        self.bridges.append(bridge)
        self.transports.append(t)
        return t

    def a_to_b(self, datagram: bytes) -> None:
        self.a.send(datagram, B.peer_id, self.b.addrs)

    def b_to_a(self, datagram: bytes) -> None:
        self.b.send(datagram, A.peer_id)  # over the connection A opened

    async def close(self) -> None:
        for t, bridge in zip(self.transports, self.bridges, strict=True):
            await t.stop()
            bridge.stop()


async def one_delta(carrier: Carrier, timeout: float = 60.0) -> dict[str, Any]:
    """Seal, carry and reassemble one 1 MiB delta; seconds and whether it arrived whole."""
    vec = np.random.default_rng(0).normal(size=MIB // 4).astype(np.float32)
    a, b = endpoints()
    done = asyncio.Event()
    got: list[Any] = []

    def on_b(d: bytes) -> None:
        for inbound in b.receive(d, time.time()):
            got.append(inbound)
            done.set()

    carrier.on_b = on_b
    t = time.perf_counter()
    msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(vec), DpInfo(1.0, 1e-5))
    datagrams = a.seal(B.peer_id, msg, time.time(), schema=SCHEMA)
    for d in datagrams:
        carrier.a_to_b(d)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        return {"ok": False, "datagrams": len(datagrams)}
    seconds = time.perf_counter() - t
    whole = got[0].vector is not None and np.array_equal(got[0].vector, vec)
    return {"ok": bool(whole), "seconds": seconds, "datagrams": len(datagrams)}


async def ping_rtt(carrier: Carrier, n: int) -> float:
    """Median round trip (ms) of a small sealed envelope echoed back."""
    a, b = endpoints()
    back = asyncio.Event()

    def echo(d: bytes) -> None:
        if b.receive(d, time.time()):
            carrier.b_to_a(d)

    carrier.on_b = echo
    carrier.on_a = lambda d: back.set()
    rtts = []
    for i in range(n):
        back.clear()
        t = time.perf_counter()
        for d in a.seal(B.peer_id, Ping(i), time.time()):
            carrier.a_to_b(d)
        await asyncio.wait_for(back.wait(), 10)
        rtts.append((time.perf_counter() - t) * 1000)
    return statistics.median(rtts)


async def measure(name: str, carrier: Any, reps: int, pings: int) -> dict[str, Any]:
    t = time.perf_counter()
    await carrier.open()
    opened = time.perf_counter() - t
    # The first exchange pays libp2p's dial (+ relay circuit); measured on its own.
    t = time.perf_counter()
    first_ms = await ping_rtt(carrier, 1)
    first = time.perf_counter() - t
    runs = [await one_delta(carrier) for _ in range(reps)]
    rtt = await ping_rtt(carrier, pings)
    await carrier.close()
    ok = [r["seconds"] for r in runs if r["ok"]]
    med = statistics.median(ok) if ok else None
    return {
        "carrier": name,
        "start_s": round(opened, 3),
        "first_contact_ms": round(first * 1000, 1),
        "first_rtt_ms": round(first_ms, 1),
        "delta_mib": 1,
        "datagrams": runs[0]["datagrams"],
        "delivered": f"{len(ok)}/{reps}",
        "delta_seconds_median": None if med is None else round(med, 4),
        "delta_mib_per_s": None if med is None else round(1 / med, 2),
        "rtt_ms_median": round(rtt, 2),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = [await measure("udp", UdpCarrier(), args.reps, args.pings)]
    out.append(await measure("libp2p direct", Libp2pCarrier(False), args.reps, args.pings))
    out.append(await measure("libp2p relayed", Libp2pCarrier(True), args.reps, args.pings))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="1 MiB deltas per carrier")
    parser.add_argument("--pings", type=int, default=50, help="round trips per carrier")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
