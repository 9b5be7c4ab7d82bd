"""Node state that must survive crashes besides the checkpoint: seqno reservation, view, round,
the merged model and the screens' memory.

Sequence numbers are *reserved* in blocks: the file always holds a value above every seqno that
may have been sent, written (atomically) before any datagram using the new block leaves the
node. After kill -9 the node resumes from the reservation, so a seqno is never reused and peers'
replay windows never reject a restarted node's fresh messages.

The merged model and the screening state (own progress, distance and cosine windows, peer
scores and graylists) are written after every merge, so a node killed at any moment resumes
screening exactly where its last completed round left it: replayed input gets the same
decisions (tests/test_resume.py kills and restarts a node 20 times to check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from flava_p2p.atomic import write_atomic
from flava_p2p.node.assembly import Resume
from flava_p2p.wire.messages import MessageError, PeerDescriptor

if TYPE_CHECKING:
    from flava_p2p.protocol.node import NodeCore

SEQ_BLOCK = 1000
STATE_FILE = "node_state.msgpack"
#: A node state is read no further than this (a DS-CNN model is ~0.3 MB; the head 8 kB).
MAX_STATE_BYTES = 64 << 20


@dataclass
class NodeState:
    """Everything besides the model/ledger that a restart needs."""

    seq_reserved: int = 0
    round: int = 0
    view: list[PeerDescriptor] = field(default_factory=list)
    message_releases: int = 0
    """Message-level noise releases so far (node-level ε is computed from it)."""
    model: bytes | None = None
    """The core's model after the last merge (float32, little-endian), if one happened."""
    screen: dict[str, Any] | None = None
    """``NodeCore.screen_state()`` after the last merge."""
    sample_count: int = 0
    """The node's own sample count at the last merge (peers' claims are capped by it)."""

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "format": "flava-node-state",
            "version": 2,
            "seq_reserved": self.seq_reserved,
            "round": self.round,
            "view": [d.to_wire() for d in self.view],
            "message_releases": self.message_releases,
            "model": self.model,
            "screen": self.screen,
            "sample_count": self.sample_count,
        }
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
        return packed

    @classmethod
    def load(cls, path: Path) -> NodeState:
        """Read the state; a missing file is a fresh node, a corrupt one an error."""
        if not path.exists():
            return cls()
        try:
            doc = msgpack.unpackb(path.read_bytes()[:MAX_STATE_BYTES], raw=False)
            view = [PeerDescriptor.from_wire(v) for v in doc["view"]]
            releases = int(doc.get("message_releases", 0))
            model, screen = doc.get("model"), doc.get("screen")
            if model is not None and not isinstance(model, bytes):
                raise TypeError("model is not raw bytes")
            if screen is not None and not isinstance(screen, dict):
                raise TypeError("screen state is not a map")
            samples = int(doc.get("sample_count", 0))
            return cls(
                int(doc["seq_reserved"]), int(doc["round"]), view, releases, model, screen, samples
            )
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


def capture(state: NodeState, core: NodeCore) -> None:
    """Copy what a restart needs from the running core into ``state`` (then ``save`` it)."""
    state.round = core.round
    state.view = core.view_descriptors()
    state.seq_reserved = max(state.seq_reserved, core.wire.next_seq + 1)
    state.model = np.asarray(core.model, dtype="<f4").tobytes()
    state.screen = core.screen_state()
    state.sample_count = core.sample_count


def resume_record(state: NodeState, checkpoint_model: np.ndarray) -> Resume:
    """What a restarted core loads: the model after the last merge when the state holds one
    of the checkpoint's size (else the checkpoint's), the round, view, screens' memory."""
    model = np.asarray(checkpoint_model, dtype=np.float32)
    raw = state.model
    if raw is not None and len(raw) == 4 * model.size:
        merged = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if np.all(np.isfinite(merged)):
            model = merged
    return Resume(
        model=model,
        round=state.round,
        sample_count=state.sample_count,
        view=state.view,
        message_releases=state.message_releases,
        screen=state.screen,
    )


WORK_FILE = "identity_work.json"


def load_or_mint_work(home: Path, peer_id: bytes, network_id: str, bits: int) -> bytes:
    """Our identity-work nonce for ``network_id`` at ``bits``: the one saved in the node's
    home if it still proves the work for this PeerID, else a new one (minted, then saved).

    The file is checked, never trusted: a stale or edited nonce is simply minted again."""
    import json

    from flava_p2p.protocol.identity_work import has_work, mint_work

    if bits <= 0:
        return b""
    path = home / WORK_FILE
    try:
        doc = json.loads(path.read_text())
        nonce = bytes.fromhex(doc["nonce"])
        if doc.get("network_id") == network_id and has_work(peer_id, network_id, nonce, bits):
            return nonce
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or unreadable: mint
    import time

    import structlog

    log = structlog.get_logger(__name__)
    log.info("minting identity work", bits=bits, expected_hashes=2**bits)
    started = time.perf_counter()
    nonce = mint_work(peer_id, network_id, bits)
    log.info("identity work minted", bits=bits, seconds=round(time.perf_counter() - started, 2))
    record = {"network_id": network_id, "bits": bits, "nonce": nonce.hex()}
    write_atomic(path, json.dumps(record).encode())
    return nonce
