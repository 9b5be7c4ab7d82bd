"""Node state that must survive crashes besides the model: seqno reservation, view, round.

Sequence numbers are *reserved* in blocks: the file always holds a value above every seqno that
may have been sent, written (atomically) before any datagram using the new block leaves the
node. After kill -9 the node resumes from the reservation, so a seqno is never reused and peers'
replay windows never reject a restarted node's fresh messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from flava_p2p.atomic import write_atomic
from flava_p2p.wire.messages import MessageError, PeerDescriptor

SEQ_BLOCK = 1000
STATE_FILE = "node_state.msgpack"


@dataclass
class NodeState:
    """Everything besides the model/ledger that a restart needs."""

    seq_reserved: int = 0
    round: int = 0
    view: list[PeerDescriptor] = field(default_factory=list)
    message_releases: int = 0
    """Message-level noise releases so far (node-level ε is computed from it)."""

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "format": "flava-node-state",
            "version": 1,
            "seq_reserved": self.seq_reserved,
            "round": self.round,
            "view": [d.to_wire() for d in self.view],
            "message_releases": self.message_releases,
        }
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
        return packed

    @classmethod
    def load(cls, path: Path) -> NodeState:
        """Read the state; a missing file is a fresh node, a corrupt one an error."""
        if not path.exists():
            return cls()
        try:
            doc = msgpack.unpackb(path.read_bytes()[: 1 << 20], raw=False)
            view = [PeerDescriptor.from_wire(v) for v in doc["view"]]
            releases = int(doc.get("message_releases", 0))
            return cls(int(doc["seq_reserved"]), int(doc["round"]), view, releases)
        except (ValueError, KeyError, TypeError, MessageError, msgpack.ExtraData) as exc:
            raise ValueError(f"{path}: node state is corrupt ({exc})") from None

    def save(self, path: Path) -> None:
        """Atomic write (temp + fsync + rename)."""
        write_atomic(path, self.to_bytes())

    def reserve_before_transmit(self, next_seq: int, releases: int | None, path: Path) -> bool:
        """Persist a new seqno block (and the message-noise release count) if datagrams about
        to leave would use a seqno at or above the reservation, or releases were made since
        the last save. Returns True when it wrote the file. Call it before every transmit."""
        new_releases = releases is not None and releases != self.message_releases
        if next_seq < self.seq_reserved and not new_releases:
            return False
        self.seq_reserved = max(self.seq_reserved, next_seq + SEQ_BLOCK)
        if releases is not None:
            self.message_releases = releases
        self.save(path)
        return True
