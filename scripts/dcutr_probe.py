#!/usr/bin/env python3
"""What DCUtR (Direct Connection Upgrade through Relay) does on one machine. Prints JSON.

R relays; B has no listening address and a reservation at R; A dials B through R, then B runs
py-libp2p's DCUtR towards A. On 127.0.0.1 there is no NAT: the upgrade can succeed by a plain
direct dial (DCUtR's first step), so a success here says the protocol plumbing works, not that
hole punching through real NATs does. The node does not use DCUtR yet.

    .venv/bin/python scripts/dcutr_probe.py
"""

from __future__ import annotations

import json
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.discovery import RelayDiscovery
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as Noise
from libp2p.tools.anyio_service import background_trio_service

from flava_p2p.runtime.libp2p_transport import quiet_libp2p_logs

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


def _host(seed: bytes) -> Any:
    kp = create_new_key_pair(seed)
    return new_host(key_pair=kp, sec_opt={NOISE: Noise(kp, noise_privkey=new_x25519().private_key)})


def _relay(host: Any, hop: bool) -> tuple[Any, Any]:
    limits = RelayLimits(duration=3600, data=100 << 20, max_circuit_conns=10, max_reservations=5)
    roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if hop else RelayRole(0))
    proto = CircuitV2Protocol(host, limits=limits, allow_hop=hop)
    host.set_stream_handler(HOP, proto._handle_hop_stream)
    host.set_stream_handler(STOP, proto._handle_stop_stream)
    return proto, RelayConfig(roles=roles, limits=limits)


def _kinds(host: Any, peer: Any) -> list[str]:
    return [
        "relayed"
        if any("/p2p-circuit" in str(a) for a in c.get_transport_addresses())
        else "direct"
        for c in host.get_network().get_connections(peer)
    ]


async def probe() -> dict[str, Any]:
    """Relay A→B, then DCUtR from B; the connection kinds before and after."""
    quiet_libp2p_logs()
    r, a, b = _host(b"r" * 32), _host(b"a" * 32), _host(b"b" * 32)
    (rp, _), (ap, ac), (bp, bc) = _relay(r, True), _relay(a, False), _relay(b, False)
    ad, bd = DCUtRProtocol(a), DCUtRProtocol(b)
    a.set_stream_handler(DCUTR, ad._handle_dcutr_stream)
    b.set_stream_handler(DCUTR, bd._handle_dcutr_stream)
    out: dict[str, Any] = {}
    async with (
        r.run([LOOPBACK]),
        a.run([LOOPBACK]),
        b.run([]),
        background_trio_service(rp),
        background_trio_service(ap),
        background_trio_service(bp),
        background_trio_service(ad),
        background_trio_service(bd),
    ):
        at, bt = CircuitV2Transport(a, ap, ac), CircuitV2Transport(b, bp, bc)
        discovery = RelayDiscovery(b, auto_reserve=False)
        bt.discovery = discovery
        raddr = r.get_addrs()[0]
        await b.connect(info_from_p2p_addr(raddr))
        async with background_trio_service(discovery):
            await discovery._add_relay(r.get_id())
            out["reservation"] = bool(await discovery.make_reservation(r.get_id()))
            await at.dial(multiaddr.Multiaddr(f"{raddr}/p2p-circuit/p2p/{b.get_id()}"))
            out["before"] = {"A->B": _kinds(a, b.get_id()), "B->A": _kinds(b, a.get_id())}
            b.get_peerstore().add_addrs(a.get_id(), a.get_addrs(), 3600)
            t = time.perf_counter()
            out["dcutr_ok"] = bool(await bd.initiate_hole_punch(a.get_id()))
            out["dcutr_s"] = round(time.perf_counter() - t, 3)
            out["after"] = {"A->B": _kinds(a, b.get_id()), "B->A": _kinds(b, a.get_id())}
    return out


if __name__ == "__main__":
    print(json.dumps(trio.run(probe), indent=1))
