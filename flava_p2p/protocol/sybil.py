"""Sybil defences of the node core: identity work and caps per host.

Two prices on identities, checked where peers enter a node's world:

* **Identity work** (``protocol/identity_work.py``): a peer is admitted (HELLO, or a descriptor
  learned through a shuffle) only with a nonce proving ``bits`` of work for its PeerID on this
  network. Anything else it sends is ignored and counted.
* **Caps per host**: however many identities one address holds, it gets at most
  ``max_per_host`` slots in the view and one model per merge. Identities are cheap next to
  addresses, so an attacker with one machine stays one voice. Loopback addresses are exempt:
  a cluster on one machine is one operator testing, not an attack.

The host of a peer is the address its datagrams come from (for merges) or the one its
descriptor advertises (for the view: a peer that lies about it cannot be reached there).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TypeVar

from flava_p2p.protocol.identity_work import has_work

T = TypeVar("T")
Addr = tuple[str, int]
#: Peers whose work was checked are remembered (a bound: the oldest are checked again later).
MAX_PROVEN = 65_536


@lru_cache(maxsize=65_536)
def host_key(host: str) -> str | None:
    """The host an address counts against, or None when caps do not apply (loopback).
    Cached: it is asked for every view peer whenever descriptors arrive."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()  # a DNS name: one name, one host
    return None if ip.is_loopback else str(ip)


class SybilGuard:
    """One node's identity-work checks and per-host caps."""

    def __init__(
        self,
        network_id: str,
        work_bits: int = 0,
        own_work: bytes = b"",
        max_per_host: int | None = None,
    ) -> None:
        self.network_id = network_id
        self.work_bits = work_bits
        self.own_work = own_work
        """Our nonce, sent in our HELLOs and descriptors."""
        self.max_per_host = max_per_host
        self._proven: dict[bytes, bytes] = {}

    # ------------------------------------------------------------------ identity work
    def admit(self, peer: bytes, nonce: bytes) -> bool:
        """Whether ``peer`` proved its identity work with ``nonce`` (remembered when so)."""
        if self.work_bits <= 0:
            return True
        if self._proven.get(peer) == nonce:
            return True
        if not has_work(peer, self.network_id, nonce, self.work_bits):
            return False
        self._proven[peer] = nonce
        if len(self._proven) > MAX_PROVEN:
            self._proven.pop(next(iter(self._proven)))
        return True

    def proven(self, peer: bytes) -> bool:
        """Whether ``peer`` was admitted (always, when the network asks for no work)."""
        return self.work_bits <= 0 or peer in self._proven

    def nonce_of(self, peer: bytes) -> bytes:
        """The nonce ``peer`` proved its work with (empty if none is needed or known)."""
        return self._proven.get(peer, b"")

    # ------------------------------------------------------------------ caps per host
    def within_view_cap(
        self, incoming: list[T], host_of: Callable[[T], str | None], in_view: Mapping[str, int]
    ) -> tuple[list[T], int]:
        """``incoming`` (descriptors) minus those whose host already fills its view slots,
        counting the view's current peers per host (``in_view``) and earlier items of
        ``incoming``; and how many were cut."""
        cap = self.max_per_host
        if cap is None:
            return incoming, 0
        added: dict[str, int] = {}  # a plain dict: this runs for every descriptor received
        kept: list[T] = []
        for item in incoming:
            host = host_of(item)
            if host is not None:
                n = added.get(host, 0)
                if in_view.get(host, 0) + n >= cap:
                    continue
                added[host] = n + 1
            kept.append(item)
        return kept, len(incoming) - len(kept)

    def one_per_host(
        self, peers: list[bytes], host_of: Callable[[bytes], str | None], rng: random.Random
    ) -> tuple[list[bytes], int]:
        """At most one of ``peers`` (sorted) per host, chosen at random among a host's; and
        how many were cut. ``rng`` is drawn from only when two peers share a host."""
        if self.max_per_host is None:
            return peers, 0
        by_host: dict[str, list[bytes]] = {}
        kept: list[bytes] = []
        for p in peers:
            host = host_of(p)
            if host is None:
                kept.append(p)
            else:
                by_host.setdefault(host, []).append(p)
        for group in by_host.values():
            kept.append(group[0] if len(group) == 1 else rng.choice(group))
        return sorted(kept), len(peers) - len(kept)
