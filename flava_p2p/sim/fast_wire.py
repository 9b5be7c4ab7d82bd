"""``wire: fast``: an UNSEALED wire endpoint for scale studies whose question is not the wire.

Simulation only, never the default, never reachable from a real node's configuration. It skips
exactly the cryptography of :class:`~flava_p2p.wire.endpoint.WireEndpoint` — the Ed25519
signature of first-contact envelopes and its verification, the X25519 exchange, the
XChaCha20-Poly1305 sealing of every other envelope, and the check of a peer's signed encryption
key — and keeps everything else: envelopes of the same sizes (a zero signature; a zero nonce
and tag around the payload in clear; the same intros), the same parsing, network-key MAC,
replay window, fragmentation with its pairwise MACs, safe decoding and tensor validation.
Every run that uses it says so in its summary (``"wire": "fast (unsealed)"``).

Why it exists: the real wire's cryptography is a fixed cost per datagram and per new pair of
peers; a study of peer sampling or churn at 10,000 nodes does not need to pay it.
"""

from __future__ import annotations

from flava_p2p.identity import PeerKeys
from flava_p2p.wire.endpoint import WireEndpoint, _Known
from flava_p2p.wire.envelope import (
    _LEN,
    NONCE_BYTES,
    SEALED_OVERHEAD,
    SIGNATURE_BYTES,
    TAG_BYTES,
    Header,
    ParsedEnvelope,
    payload_digest,
)

_NO_SIGNATURE = bytes(SIGNATURE_BYTES)
_NO_NONCE = bytes(NONCE_BYTES)
_NO_TAG = bytes(TAG_BYTES)


class UnsealedEndpoint(WireEndpoint):
    """A :class:`WireEndpoint` without signatures or encryption (see the module docstring)."""

    def _check_keys(self, keys: PeerKeys) -> None:
        pass  # the simulator hands out only genuine keys

    def _seal_envelope(
        self, fields: dict[str, object], plaintext: bytes, to: _Known | None, intro: bytes = b""
    ) -> bytes:
        if to is None:
            header = Header(
                payload_len=len(plaintext),
                payload_hash=payload_digest(plaintext),
                **fields,  # type: ignore[arg-type]
            )
            hbytes = header.encode()
            return _LEN.pack(len(hbytes)) + hbytes + _NO_SIGNATURE + plaintext
        header = Header(
            payload_len=len(plaintext) + SEALED_OVERHEAD,
            payload_hash=b"",
            **fields,  # type: ignore[arg-type]
        )
        hbytes = header.encode()
        return _LEN.pack(len(hbytes)) + hbytes + _NO_NONCE + plaintext + _NO_TAG

    def _verify(self, env: ParsedEnvelope) -> None:
        pass

    def _open(self, env: ParsedEnvelope, known: _Known, intro: bytes) -> bytes:
        return env.payload[NONCE_BYTES:-TAG_BYTES]
