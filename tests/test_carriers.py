"""Which carrier reaches a peer, and the settings that choose them (no sockets here)."""

from __future__ import annotations

import pytest

from flava_p2p.config import NetworkConfig
from flava_p2p.errors import FlavaError
from flava_p2p.identity import Identity, IdentityError, parse_libp2p_multiaddr, peer_id_to_str
from flava_p2p.protocol.carriers import (
    best_endpoint,
    bootstrap_endpoints,
    carrier_of,
    carriers_of,
    libp2p_endpoint,
    libp2p_peer,
)

PEER = Identity.from_seed(b"p" * 32)
RELAY = Identity.from_seed(b"r" * 32)
PID = peer_id_to_str(PEER.peer_id)
UDP = f"/ip4/10.0.0.2/udp/7946/p2p/{PID}"
TCP = f"/ip4/10.0.0.2/tcp/4001/p2p/{PID}"
RELAYED = f"/ip4/10.0.0.9/tcp/4001/p2p/{peer_id_to_str(RELAY.peer_id)}/p2p-circuit/p2p/{PID}"
QUIC = f"/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{PID}"


def test_libp2p_addresses_name_their_peer_and_refuse_what_cannot_be_dialled() -> None:
    assert parse_libp2p_multiaddr(TCP) == PEER.peer_id
    assert parse_libp2p_multiaddr(RELAYED) == PEER.peer_id  # the destination, not the relay
    for bad in (UDP, QUIC, "/ip4/10.0.0.2/tcp/4001", f"/ip4/1.2.3.4/tcp/1/ws/p2p/{PID}"):
        with pytest.raises(IdentityError):
            parse_libp2p_multiaddr(bad)
    assert [carrier_of(a) for a in (UDP, TCP, RELAYED, QUIC)] == ["udp", "libp2p", "libp2p", None]


def test_pseudo_addresses_round_trip() -> None:
    addr = libp2p_endpoint(PEER.peer_id)
    assert addr == (f"/p2p/{PID}", 0)
    assert libp2p_peer(addr) == PEER.peer_id
    assert libp2p_peer(("10.0.0.2", 7946)) is None


@pytest.mark.parametrize(
    ("transport", "addrs", "expected"),
    [
        ("udp", (TCP, UDP), ("10.0.0.2", 7946)),
        ("libp2p", (UDP, TCP), (f"/p2p/{PID}", 0)),
        ("both", (TCP, UDP), ("10.0.0.2", 7946)),  # UDP preferred where offered
        ("both", (RELAYED,), (f"/p2p/{PID}", 0)),
        ("udp", (TCP, RELAYED), None),  # a libp2p-only peer is unreachable for a UDP node
        ("libp2p", (UDP,), None),
    ],
)
def test_best_endpoint(transport: str, addrs: tuple[str, ...], expected: object) -> None:
    assert best_endpoint(addrs, carriers_of(transport)) == expected


def test_bootstrap_takes_a_full_address_list_but_refuses_nonsense() -> None:
    # a peer's whole address list: the UDP node skips the libp2p address and vice versa
    assert bootstrap_endpoints([UDP, TCP], carriers_of("udp")) == [("10.0.0.2", 7946)]
    assert bootstrap_endpoints([UDP, TCP], carriers_of("libp2p")) == [(f"/p2p/{PID}", 0)]
    # speaking both, the same peer is greeted once, on UDP
    assert bootstrap_endpoints([TCP, UDP], carriers_of("both")) == [("10.0.0.2", 7946)]
    assert bootstrap_endpoints([RELAYED], carriers_of("both")) == [(f"/p2p/{PID}", 0)]
    with pytest.raises(FlavaError, match="is neither a UDP peer address"):
        bootstrap_endpoints([QUIC], carriers_of("both"))
    with pytest.raises(FlavaError, match=r"set network\.transport to match"):
        bootstrap_endpoints([TCP], carriers_of("udp"))


def test_config_checks_transport_relay_and_bootstrap_together() -> None:
    NetworkConfig(transport="libp2p", relays=[f"/ip4/10.0.0.9/tcp/4001/p2p/{PID}"])
    NetworkConfig(transport="both", relay="serve", bootstrap=[UDP, TCP])
    cases = {
        r"relay and relays need network\.transport": {"relay": "serve"},
        "is itself relayed": {"transport": "libp2p", "relays": [RELAYED]},
        r"set network\.transport to match": {"bootstrap": [TCP]},
        "needs a libp2p_listen address": {
            "transport": "libp2p",
            "relay": "serve",
            "libp2p_listen": [],
        },
        "multicast_beacons announce a UDP address": {
            "transport": "libp2p",
            "multicast_beacons": True,
        },
    }
    for message, settings in cases.items():
        with pytest.raises(ValueError, match=message):
            NetworkConfig(**settings)  # type: ignore[arg-type]


def test_metrics_count_peers_per_carrier_and_relay() -> None:
    from flava_p2p.runtime.api import prometheus_text

    peers = [
        {"transport": "udp", "relayed": False},
        {"transport": "libp2p", "relayed": True},
        {"transport": "libp2p", "relayed": True},
        {"transport": "libp2p", "relayed": False},
    ]
    snapshot = {
        "round": 3,
        "peers": peers,
        "bytes_in": 1,
        "bytes_out": 2,
        "rejections_by_reason": {},
        "privacy": {"example_level": None},
        "data": {"clips": 10},
        "accuracy": {},
        "graylisted_peers": [],
        "graylisted_addresses": [],
    }
    text = prometheus_text(snapshot)
    assert 'flava_peers_by_transport{transport="libp2p",relayed="true"} 2' in text
    assert 'flava_peers_by_transport{transport="libp2p",relayed="false"} 1' in text
    assert 'flava_peers_by_transport{transport="udp",relayed="false"} 1' in text
    assert "flava_peers 4" in text
