"""LAN multicast beacons: the sockets (the beacon itself is a signed HELLO made by the core).

Beacons leave through the node's own unicast socket, so receivers see the address to answer on
as the datagram's source; they are heard on a second socket bound to the group port and joined
to the group. Several nodes on one host share that port (SO_REUSEPORT), and every one of them
gets every beacon.
"""

from __future__ import annotations

import socket
import struct
from asyncio.trsock import TransportSocket

from flava_p2p.errors import FlavaError

DEFAULT_INTERFACE = "0.0.0.0"  # noqa: S104 - picks the multicast interface; binds nothing


def parse_group(text: str) -> tuple[str, int]:
    """``"239.255.70.71:7947"`` → ``("239.255.70.71", 7947)`` (validated by the config)."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def enable_multicast_send(sock: socket.socket | TransportSocket, interface: str) -> None:
    """Let the node's unicast socket send beacons: TTL 1 (never routed), looped back locally."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    if interface != DEFAULT_INTERFACE:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))


def open_beacon_socket(group: tuple[str, int], interface: str) -> socket.socket:
    """A non-blocking UDP socket that receives the group's datagrams on ``interface``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound to the group address (Linux): unicast datagrams to this port are not ours.
        sock.bind((group[0], group[1]))
        membership = struct.pack("4s4s", socket.inet_aton(group[0]), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as exc:
        sock.close()
        raise FlavaError(
            f"network.multicast_beacons: cannot join {group[0]}:{group[1]} on {interface} "
            f"({exc}). Check network.beacon_group / network.beacon_interface, or turn beacons "
            f"off and use network.bootstrap."
        ) from None
    sock.setblocking(False)
    return sock
