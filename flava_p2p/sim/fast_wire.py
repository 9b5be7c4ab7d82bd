"""``wire: fast``: an UNSEALED wire endpoint for scale studies whose question is not the wire.

Simulation only, never the default, never reachable from a real node's configuration. It skips
exactly the public-key cryptography of :class:`~flava_p2p.wire.endpoint.WireEndpoint` — the
Ed25519 signature on every envelope, its verification, the X25519/XSalsa20-Poly1305 payload
encryption and the check of a peer's signed encryption key — and keeps everything else: the same
envelope bytes (a zero signature, the payload in clear), the same parsing, network-key MAC,
replay window, fragmentation with its pairwise MACs, safe decoding and tensor validation. Every
run that uses it says so in its summary (``"wire": "fast (unsealed)"``).

Why it exists: with real cryptography one process spends ~0.1 ms of libsodium time per datagram
(an Ed25519 verify alone is ~65 µs here), which caps a protocol-only simulation at roughly a
thousand node-rounds per second however lean the Python around it is.
"""

from __future__ import annotations

from flava_p2p.identity import PeerKeys
from flava_p2p.wire.endpoint import WireEndpoint, _Known
from flava_p2p.wire.envelope import (
    _LEN,
    SIGNATURE_BYTES,
    Header,
    ParsedEnvelope,
    payload_digest,
)

_NO_SIGNATURE = bytes(SIGNATURE_BYTES)


class UnsealedEndpoint(WireEndpoint):
    """A :class:`WireEndpoint` without signatures or encryption (see the module docstring)."""

    def _check_keys(self, keys: PeerKeys) -> None:
        pass  # the simulator hands out only genuine keys

    def _seal_envelope(
        self, fields: dict[str, object], plaintext: bytes, to: _Known | None
    ) -> bytes:
        header = Header(
            payload_len=len(plaintext),
            payload_hash=payload_digest(plaintext),
            **fields,  # type: ignore[arg-type]
        )
        hbytes = header.encode()
        return _LEN.pack(len(hbytes)) + hbytes + _NO_SIGNATURE + plaintext

    def _verify(self, env: ParsedEnvelope) -> None:
        pass

    def _decrypt(self, env: ParsedEnvelope, known: _Known) -> bytes:
        return env.payload
