"""Model + privacy-ledger checkpoints: msgpack with raw tensor bytes, written atomically.

Never unpickled, never read with torch's loader: a checkpoint may be copied between devices,
so reading one must not be able to run code. Writes go to a temp file, are fsynced, then
renamed over the old file (and the directory fsynced), so a crash leaves either the old or the
new checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from flava_p2p.atomic import write_atomic
from flava_p2p.errors import FlavaError
from flava_p2p.learning.ledger import PrivacyLedger
from flava_p2p.wire.tensors import TensorCodecError, decode_named, encode_named

FORMAT = "flava-checkpoint"
VERSION = 1
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024


class CheckpointError(FlavaError):
    """A checkpoint file is missing, corrupt or of another format."""


@dataclass
class Checkpoint:
    """Everything needed to resume training or to run inference."""

    meta: dict[str, Any]
    """model/feature config, labels, schema hash."""
    weights: dict[str, npt.NDArray[Any]]
    ledger: PrivacyLedger | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for the runtime (view, seqno, round); plain msgpack values only."""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Serialise and atomically write ``ckpt``."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "meta": ckpt.meta,
        "weights": encode_named(ckpt.weights),
        "ledger": ckpt.ledger.to_dict() if ckpt.ledger else None,
        "extra": ckpt.extra,
    }
    write_atomic(path, msgpack.packb(doc, use_bin_type=True))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; any problem raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {size} bytes is larger than any FLAVA checkpoint.")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found.") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc}).") from None
    try:
        doc = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_bin_len=size, max_str_len=1 << 20
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CheckpointError(f"{path}: not a valid checkpoint ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a FLAVA-P2P checkpoint.")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {doc.get('version')!r} unsupported.")
    try:
        weights = decode_named(doc["weights"])
        ledger = PrivacyLedger.from_dict(doc["ledger"]) if doc.get("ledger") else None
        meta, extra = doc["meta"], doc.get("extra") or {}
    except (TensorCodecError, KeyError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}).") from None
    if not isinstance(meta, dict) or not isinstance(extra, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (meta/extra not maps).")
    return Checkpoint(meta, {k: np.array(v) for k, v in weights.items()}, ledger, extra)
