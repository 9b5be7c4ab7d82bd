"""Cyclon peer-sampling view (Voulgaris, Gavidia & van Steen, 2005).

A bounded set of peer descriptors with ages. Each shuffle the node ages its entries, removes the
oldest peer Q, and swaps a random sample (plus a fresh descriptor of itself) with Q; Q answers
with a sample of its own. Entries received replace the ones sent. Dead peers age out; a peer
that never answers is simply gone after its shuffle (Cyclon's implicit failure detection).
All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from flava_p2p.wire.messages import PeerDescriptor


@dataclass
class ViewEntry:
    """One peer in the view. Its age is the view's shuffle count minus ``born``: a shuffle
    ages every entry at once by counting, not by touching each entry."""

    descriptor: PeerDescriptor
    born: int


class PeerSamplingView:
    """The node's partial view of the network."""

    def __init__(
        self,
        me: bytes,
        size: int,
        rng: random.Random,
        host_of: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self.me = me
        self.size = size
        self.rng = rng
        self._entries: dict[bytes, ViewEntry] = {}
        self._order: list[bytes] = []  # PeerIDs kept sorted (bisect), for stable sampling
        self._shuffles = 0  # ages are counted from this clock (see ViewEntry)
        # (born, PeerID) of every entry, oldest first; stale pairs (dropped or refreshed
        # entries) are skipped when they surface. Finding the oldest peer is then O(log n),
        # not a pass over the view: a full view of 1,024 evicts on most datagrams from a
        # stranger, and the pass was a fifth of a 2,000-node simulation.
        self._by_age: list[tuple[int, bytes]] = []
        self.last_removed: PeerDescriptor | None = None
        """The stored descriptor of the peer the last :meth:`start_shuffle` took out (Q)."""
        self._host_of = host_of
        self._host: dict[bytes, str | None] = {}
        self.host_counts: Counter[str] = Counter()
        """View peers per host, by ``host_of`` (kept up to date on every change, so the
        per-host cap costs O(1) per peer instead of a pass over the view)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def peers(self) -> list[bytes]:
        """PeerIDs in the view, in a stable order (sorted) so seeded sampling reproduces."""
        return list(self._order)

    @property
    def order(self) -> Sequence[bytes]:
        """The same PeerIDs without a copy (read only; it changes with the view)."""
        return self._order

    def descriptor(self, peer: bytes) -> PeerDescriptor | None:
        """The stored descriptor of ``peer``."""
        e = self._entries.get(peer)
        return e.descriptor if e else None

    def add(self, desc: PeerDescriptor) -> bool:
        """Insert (or refresh) a peer; when full, evict the oldest. False for self."""
        if desc.peer_id == self.me:
            return False
        existing = self._entries.get(desc.peer_id)
        if existing is not None:
            if desc.age <= self._shuffles - existing.born:
                existing.descriptor, existing.born = desc, self._shuffles - desc.age
                self._track(existing.born, desc.peer_id)
                self.rehost(desc.peer_id)  # the new descriptor may advertise another host
            return True
        if len(self._entries) >= self.size:
            self._drop(self._oldest())
        born = self._shuffles - desc.age
        self._entries[desc.peer_id] = ViewEntry(desc, born)
        self._track(born, desc.peer_id)
        bisect.insort(self._order, desc.peer_id)
        self.rehost(desc.peer_id)
        return True

    def _track(self, born: int, peer: bytes) -> None:
        if len(self._by_age) > 4 * len(self._entries) + 64:  # mostly stale: rebuild
            self._by_age = [(e.born, p) for p, e in self._entries.items()]
            heapq.heapify(self._by_age)
        heapq.heappush(self._by_age, (born, peer))

    def _oldest(self) -> bytes:
        """The oldest peer (the smallest PeerID among equals). The view must not be empty."""
        heap, entries = self._by_age, self._entries
        while True:
            born, peer = heap[0]
            e = entries.get(peer)
            if e is not None and e.born == born:
                return peer
            heapq.heappop(heap)

    def remove(self, peer: bytes) -> None:
        """Drop a peer (dead or graylisted)."""
        if peer in self._entries:
            self._drop(peer)

    def rehost(self, peer: bytes) -> None:
        """Recount ``peer``'s host (call when what ``host_of`` answers for it may change)."""
        if self._host_of is None or peer not in self._entries:
            return
        host = self._host_of(peer)
        old = self._host.get(peer)
        if peer in self._host and old == host:
            return
        if old is not None:
            self._uncount(old)
        self._host[peer] = host
        if host is not None:
            self.host_counts[host] += 1

    def _uncount(self, host: str) -> None:
        self.host_counts[host] -= 1
        if not self.host_counts[host]:
            del self.host_counts[host]

    def _drop(self, peer: bytes) -> ViewEntry:
        del self._order[bisect.bisect_left(self._order, peer)]
        if self._host_of is not None:
            host = self._host.pop(peer, None)
            if host is not None:
                self._uncount(host)
        return self._entries.pop(peer)

    def sample(self, k: int, exclude: set[bytes] | None = None) -> list[bytes]:
        """Up to ``k`` distinct random peers (gossip targets)."""
        pool = [p for p in self._order if p not in exclude] if exclude else self._order
        return self.rng.sample(pool, min(k, len(pool)))

    # ------------------------------------------------------------------ Cyclon
    def start_shuffle(
        self, length: int, me: PeerDescriptor
    ) -> tuple[bytes, list[PeerDescriptor]] | None:
        """Age entries, pick the oldest peer Q and the descriptors to send it (incl. self)."""
        if not self._entries:
            return None
        self._shuffles += 1  # every entry one older
        q = self._oldest()
        self.last_removed = self._drop(q).descriptor
        others = self.sample(length - 1)
        sent = [self._with_age(p) for p in others]
        return q, [replace(me, age=0), *sent]

    def answer_shuffle(self, sender: bytes, received: list[PeerDescriptor],
                       length: int) -> list[PeerDescriptor]:  # fmt: skip
        """Reply to a SHUFFLE: a random sample for the sender, then merge what it sent."""
        reply = [self._with_age(p) for p in self.sample(length, exclude={sender})]
        self.merge(received, replaceable=[d.peer_id for d in reply])
        return reply

    def merge(self, received: list[PeerDescriptor], replaceable: list[bytes]) -> None:
        """Cyclon merge: new entries fill free slots, then replace ``replaceable`` ones."""
        victims = [p for p in replaceable if p in self._entries]
        for desc in received:
            if desc.peer_id == self.me:
                continue
            if desc.peer_id in self._entries:
                self.add(desc)  # keeps the younger descriptor
            elif len(self._entries) < self.size:
                self.add(desc)
            elif victims:
                self._drop(victims.pop())
                self.add(desc)

    def _with_age(self, peer: bytes) -> PeerDescriptor:
        e = self._entries[peer]
        d = e.descriptor  # built directly: dataclasses.replace costs 4x as much, per descriptor
        age = self._shuffles - e.born
        return PeerDescriptor(d.peer_id, d.box_key, d.box_key_sig, d.addrs, age, d.work)
