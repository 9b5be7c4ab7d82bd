"""Envelopes: a canonical signed header plus a NaCl-Box-encrypted (or, for HELLO, plain) payload.

Layout (big-endian)::

    u16 header_len | header (canonical msgpack array) | signature (64) | payload

The signature is Ed25519 over ``DOMAIN || header``; the header binds the payload through its
length and BLAKE2b-256 hash, so one signature covers everything and can be checked before any
decryption. Parsing is split from verification so the receiver can run the cheap checks first
(see :mod:`flava_p2p.wire.endpoint` for the order).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import msgpack
import nacl.exceptions
from nacl.public import Box
from nacl.signing import SigningKey, VerifyKey

from flava_p2p.identity import PEER_ID_BYTES

DOMAIN = b"flava-p2p/v1\x00envelope\x00"
VERSION = 1
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 512
_HEADER_FIELDS = 11
_LEN = struct.Struct("!H")


class EnvelopeError(ValueError):
    """Malformed envelope; ``reason`` is the rejection counter it belongs to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """The signed envelope header (every field is covered by the signature)."""

    version: int
    type: int
    network: str
    sender: bytes
    recipient: bytes
    """Recipient PeerID; empty for plaintext first-contact messages."""
    seq: int
    """Per-sender sequence number, strictly increasing, never reused (even across crashes)."""
    timestamp_ms: int
    round: int
    schema: bytes
    """Model schema hash (32 bytes) for DELTA, empty otherwise."""
    payload_len: int
    payload_hash: bytes

    def encode(self) -> bytes:
        """Canonical encoding: a fixed-order msgpack array with minimal-width integers."""
        packed: bytes = msgpack.packb(
            [
                self.version,
                self.type,
                self.network,
                self.sender,
                self.recipient,
                self.seq,
                self.timestamp_ms,
                self.round,
                self.schema,
                self.payload_len,
                self.payload_hash,
            ],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        """Strict decode; rejects any non-canonical encoding (no malleable headers)."""
        try:
            f = msgpack.unpackb(
                raw,
                raw=False,
                use_list=True,
                max_bin_len=64,
                max_str_len=64,
                max_array_len=16,
                max_map_len=0,
            )
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            raise EnvelopeError("malformed", "header is not msgpack") from None
        if not isinstance(f, list) or len(f) != _HEADER_FIELDS:
            raise EnvelopeError("malformed", "header must be an 11-field array")
        ints = (0, 1, 5, 6, 7, 9)
        if any(not isinstance(f[i], int) or isinstance(f[i], bool) or f[i] < 0 for i in ints):
            raise EnvelopeError("malformed", "header integer fields")
        if not isinstance(f[2], str) or not all(isinstance(f[i], bytes) for i in (3, 4, 8, 10)):
            raise EnvelopeError("malformed", "header field types")
        h = cls(*f)
        if len(h.sender) != PEER_ID_BYTES or len(h.recipient) not in (0, PEER_ID_BYTES):
            raise EnvelopeError("malformed", "PeerID length")
        if len(h.schema) not in (0, 32) or len(h.payload_hash) != 32:
            raise EnvelopeError("malformed", "hash length")
        if h.encode() != raw:
            raise EnvelopeError("malformed", "non-canonical header encoding")
        return h


def payload_digest(payload: bytes) -> bytes:
    """BLAKE2b-256 of the payload as sent (ciphertext for encrypted types)."""
    return hashlib.blake2b(payload, digest_size=32).digest()


def seal(
    signing_key: SigningKey,
    header_fields: dict[str, object],
    plaintext: bytes,
    box: Box | None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt (when ``box``), fill in payload length/hash, sign, and frame one envelope."""
    payload = bytes(box.encrypt(plaintext, nonce)) if box is not None else plaintext
    header = Header(
        payload_len=len(payload),
        payload_hash=payload_digest(payload),
        **header_fields,  # type: ignore[arg-type]
    )
    hbytes = header.encode()
    signature = signing_key.sign(DOMAIN + hbytes).signature
    return _LEN.pack(len(hbytes)) + hbytes + signature + payload


@dataclass(frozen=True)
class ParsedEnvelope:
    """An envelope split into parts; nothing has been verified yet except its shape."""

    header: Header
    header_bytes: bytes
    signature: bytes
    payload: bytes


def parse(data: bytes, max_payload: int) -> ParsedEnvelope:
    """Split and decode the header; checks sizes and the payload hash, not the signature."""
    if len(data) < _LEN.size:
        raise EnvelopeError("malformed", "truncated")
    (hlen,) = _LEN.unpack_from(data)
    if hlen > MAX_HEADER_BYTES or len(data) < _LEN.size + hlen + SIGNATURE_BYTES:
        raise EnvelopeError("malformed", "truncated or oversized header")
    hbytes = data[_LEN.size : _LEN.size + hlen]
    sig = data[_LEN.size + hlen : _LEN.size + hlen + SIGNATURE_BYTES]
    payload = data[_LEN.size + hlen + SIGNATURE_BYTES :]
    header = Header.decode(hbytes)
    if header.payload_len != len(payload):
        raise EnvelopeError("malformed", "payload length differs from header")
    if len(payload) > max_payload:
        raise EnvelopeError("oversize", f"payload of {len(payload)} bytes")
    return ParsedEnvelope(header, hbytes, sig, payload)


def verify(env: ParsedEnvelope, verify_key: bytes) -> None:
    """Check the signature, then that the payload matches the signed hash."""
    try:
        VerifyKey(verify_key).verify(DOMAIN + env.header_bytes, env.signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise EnvelopeError("bad_signature") from None
    if payload_digest(env.payload) != env.header.payload_hash:
        raise EnvelopeError("bad_signature", "payload does not match signed hash")


def decrypt(env: ParsedEnvelope, box: Box) -> bytes:
    """Open the Box payload (authenticated encryption: tampering fails here too)."""
    try:
        return bytes(box.decrypt(env.payload))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise EnvelopeError("decrypt_failed") from None
