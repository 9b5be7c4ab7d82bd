"""Kernel drop filter for graylisted addresses, on real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from flava_p2p.runtime.kernel_filter import MAX_FILTERED, drop_filter, set_drop_filter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket filter")


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    return s


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    try:
        while True:
            got.append(sock.recv(64))
    except TimeoutError:
        return got


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    socks = (udp(), udp(), udp())
    yield socks
    for s in socks:
        s.close()


class TestKernelFilter:
    def test_drops_only_listed_source(self, sockets: tuple[socket.socket, ...]) -> None:
        """Datagrams from the graylisted (address, port) vanish; another port of the same
        host and other hosts' entries do not affect delivery."""
        node, flooder, honest = sockets
        bad = ("127.0.0.1", flooder.getsockname()[1])
        assert set_drop_filter(node, [("192.0.2.9", honest.getsockname()[1]), bad])
        for i in range(5):
            flooder.sendto(b"f%d" % i, node.getsockname())
            honest.sendto(b"h%d" % i, node.getsockname())
        assert drain(node) == [b"h%d" % i for i in range(5)]

    def test_replace_and_clear(self, sockets: tuple[socket.socket, ...]) -> None:
        """A new list replaces the old one; an empty list lets everyone in again."""
        node, a, b = sockets
        set_drop_filter(node, [("127.0.0.1", a.getsockname()[1])])
        set_drop_filter(node, [("127.0.0.1", b.getsockname()[1])])
        a.sendto(b"a", node.getsockname())
        b.sendto(b"b", node.getsockname())
        assert drain(node) == [b"a"]
        set_drop_filter(node, [])
        b.sendto(b"b2", node.getsockname())
        assert drain(node) == [b"b2"]

    def test_long_lists_are_truncated(self, sockets: tuple[socket.socket, ...]) -> None:
        """More addresses than one filter can reach keep the first MAX_FILTERED."""
        node, a, _ = sockets
        many = [(f"10.0.{i // 256}.{i % 256}", 9) for i in range(3 * MAX_FILTERED)]
        assert set_drop_filter(node, [*many, ("127.0.0.1", a.getsockname()[1])])
        assert len(drop_filter(many)) == 4 * MAX_FILTERED + 2
        a.sendto(b"a", node.getsockname())  # beyond the cap: still delivered (core drops it)
        assert drain(node) == [b"a"]

    def test_ipv6_socket_is_left_alone(self) -> None:
        """Unsupported socket families report False instead of failing."""
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            assert set_drop_filter(s, [("127.0.0.1", 1)]) is False
        finally:
            s.close()

    def test_the_beacon_socket_drops_a_graylisted_sender(self) -> None:
        """The multicast beacon socket takes the same list: a flooder's beacons are dropped
        in the kernel, an honest node's beacons still arrive."""
        from flava_p2p.runtime.multicast import enable_multicast_send, open_beacon_socket

        group = ("239.255.70.93", _free_port())
        beacon = open_beacon_socket(group, "127.0.0.1")
        beacon.setblocking(True)
        beacon.settimeout(0.3)
        flooder, honest = udp(), udp()
        try:
            for s in (flooder, honest):
                enable_multicast_send(s, "127.0.0.1")
            assert set_drop_filter(beacon, [("127.0.0.1", flooder.getsockname()[1])])
            for i in range(5):
                flooder.sendto(b"f%d" % i, group)
                honest.sendto(b"h%d" % i, group)
            assert drain(beacon) == [b"h%d" % i for i in range(5)]
        finally:
            for s in (beacon, flooder, honest):
                s.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
