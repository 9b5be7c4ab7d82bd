"""Which carrier reaches a peer: FLAVA's UDP wire, libp2p, or both (no I/O here).

The core addresses every peer by an ``Addr``. A UDP peer's is its ``(host, port)``; a peer
reached over libp2p gets the pseudo-address ``("/p2p/<PeerID>", 0)``, which the runtime routes
to its libp2p host (dialling the addresses the peer advertised). So the core never knows which
carrier carried a datagram, and a node that speaks both prefers UDP where a peer offers it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from flava_p2p.errors import FlavaError
from flava_p2p.identity import (
    IdentityError,
    parse_libp2p_multiaddr,
    parse_multiaddr,
    peer_id_from_str,
    peer_id_to_str,
)

Addr = tuple[str, int]
Carrier = Literal["udp", "libp2p"]
LIBP2P_PREFIX = "/p2p/"
UDP_ONLY: frozenset[str] = frozenset({"udp"})


@lru_cache(maxsize=8)
def carriers_of(transport: str) -> frozenset[str]:
    """``network.transport`` (udp | libp2p | both) → the set of carriers a node speaks."""
    return frozenset({"udp", "libp2p"}) if transport == "both" else frozenset({transport})


def libp2p_endpoint(peer_id: bytes) -> Addr:
    """The pseudo-address of a peer reached over libp2p."""
    return (LIBP2P_PREFIX + peer_id_to_str(peer_id), 0)


def libp2p_peer(addr: Addr) -> bytes | None:
    """The PeerID behind a libp2p pseudo-address, or None for a UDP address."""
    if not addr[0].startswith(LIBP2P_PREFIX):
        return None
    return peer_id_from_str(addr[0][len(LIBP2P_PREFIX) :])


def endpoint_of(text: str, carriers: frozenset[str]) -> Addr | None:
    """The address one advertised multiaddr gives, on a carrier we speak; None otherwise."""
    if "udp" in carriers:
        try:
            return parse_multiaddr(text)[:2]
        except IdentityError:
            pass
    if "libp2p" in carriers:
        try:
            return libp2p_endpoint(parse_libp2p_multiaddr(text))
        except IdentityError:
            pass
    return None


def best_endpoint(addrs: tuple[str, ...], carriers: frozenset[str]) -> Addr | None:
    """UDP first (cheaper, no connection), then libp2p; None if we speak none of them."""
    for wanted in ("udp", "libp2p"):
        if wanted in carriers:
            for text in addrs:
                if (addr := endpoint_of(text, frozenset({wanted}))) is not None:
                    return addr
    return None


def carrier_of(text: str) -> Carrier | None:
    """Which carrier an address belongs to; None if it is neither a FLAVA UDP address nor a
    dialable libp2p one."""
    for carrier in ("udp", "libp2p"):
        if endpoint_of(text, frozenset({carrier})) is not None:
            return carrier
    return None


def bootstrap_endpoints(addrs: list[str], carriers: frozenset[str]) -> list[Addr]:
    """``network.bootstrap`` as core addresses.

    A peer's full address list may be given (UDP and libp2p): addresses of a carrier this node
    does not speak are skipped; a malformed address, or a list none of whose addresses this
    node can dial, is an error that says what to write instead.
    """
    out = []
    for text in addrs:
        carrier = carrier_of(text)
        if carrier is None:
            raise FlavaError(
                f"network.bootstrap: {text!r} is neither a UDP peer address "
                "(/ip4/HOST/udp/PORT/p2p/PEERID) nor a libp2p one (/ip4/HOST/tcp/PORT/p2p/PEERID, "
                "or RELAY/p2p-circuit/p2p/PEERID)."
            )
        if carrier in carriers and (addr := endpoint_of(text, carriers)) is not None:
            out.append(addr)
    # First contact prefers UDP: a peer given by a UDP and a libp2p address is greeted on UDP
    # only (afterwards replies go back over whichever carrier the peer last used).
    if "udp" in carriers:
        on_udp = {parse_multiaddr(t)[2] for t in addrs if carrier_of(t) == "udp"} - {None}
        out = [a for a in out if libp2p_peer(a) not in on_udp]
    if addrs and not out:
        speaks = " and ".join(sorted(carriers))
        raise FlavaError(
            f"network.bootstrap: none of {addrs} can be dialled over this node's transport "
            f"({speaks}); set network.transport to match (udp, libp2p or both)."
        )
    return list(dict.fromkeys(out))  # one peer given by several addresses of one carrier
