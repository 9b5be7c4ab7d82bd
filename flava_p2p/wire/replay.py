"""Replay and freshness protection, bounded in memory.

Three layers: a timestamp window (old or far-future messages are refused outright), a per-sender
sequence-number high-water mark with a sliding bitmap (IPsec-style: out-of-order delivery within
the window is fine, a repeat is not), and a global seen cache with TTL that still catches
repeats from senders whose per-sender state was evicted under memory pressure. State is only
*committed* after the signature verified, so a forger cannot advance anyone's window.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _SenderWindow:
    high: int = -1
    bitmap: int = 0  # bit i set ⇔ seq (high - i) was seen


class ReplayGuard:
    """Decides whether (sender, seq, timestamp) is fresh; all inputs explicit (no clock)."""

    def __init__(
        self,
        window: int = 1024,
        time_window_ms: int = 120_000,
        max_senders: int = 4096,
        max_seen: int = 65536,
    ) -> None:
        self.window = window
        self.time_window_ms = time_window_ms
        self.max_senders = max_senders
        self.max_seen = max_seen
        self._senders: OrderedDict[bytes, _SenderWindow] = OrderedDict()
        self._seen: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # → expiry (ms)

    def check(self, sender: bytes, seq: int, timestamp_ms: int, now_ms: int) -> str | None:
        """The rejection reason, or None if the message is fresh. Does not change state."""
        if timestamp_ms < now_ms - self.time_window_ms:
            return "stale_timestamp"
        if timestamp_ms > now_ms + self.time_window_ms:
            return "future_timestamp"
        self._expire(now_ms)
        if (sender, seq) in self._seen:
            return "replay"
        w = self._senders.get(sender)
        if w is not None and seq <= w.high:
            age = w.high - seq
            if age >= self.window or (w.bitmap >> age) & 1:
                return "replay"
        return None

    def commit(self, sender: bytes, seq: int, now_ms: int) -> None:
        """Record an authenticated message as seen."""
        w = self._senders.get(sender)
        if w is None:
            w = self._senders[sender] = _SenderWindow()
            if len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
        self._senders.move_to_end(sender)
        if seq > w.high:
            shift = seq - w.high
            w.bitmap = (
                ((w.bitmap << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            )
            w.high = seq
        else:
            w.bitmap |= 1 << (w.high - seq)
        self._seen[(sender, seq)] = now_ms + 2 * self.time_window_ms
        if len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)

    def _expire(self, now_ms: int) -> None:
        while self._seen:
            key, expiry = next(iter(self._seen.items()))
            if expiry > now_ms:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
