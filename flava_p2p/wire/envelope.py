"""Envelopes: a canonical header, then either an Ed25519 signature and a plain payload (first
contact) or an AEAD-sealed payload whose tag covers the header (everything else).

Layout (big-endian)::

    u16 header_len | header (canonical msgpack array) | auth | payload

Two kinds, told apart by the header's ``payload_hash`` field:

* **Signed** (HELLO, HELLO_ACK: the receiver may not know us yet). ``payload_hash`` is the
  BLAKE2b-256 of the payload, ``auth`` is an Ed25519 signature over ``DOMAIN || header``, and the
  payload is in clear. Anyone can check it from the PeerID alone.
* **Sealed** (every other type: the two peers hold each other's X25519 keys, each signed by
  its owner's identity key). ``payload_hash`` is empty and ``auth`` is empty; the payload is
  ``nonce (24) || XChaCha20-Poly1305(pair key, nonce, AD = SEALED_DOMAIN || header, plaintext)``.
  The pair key comes from the static X25519 exchange, so only the two peers can compute it: a
  tag that verifies proves the datagram came from the other one, header included (only the
  receiver could have forged it, and it did not). The nonce is a keyed hash of header and
  plaintext (synthetic IV), so even a reused sequence number after a botched restore never
  reuses a nonce with different content.

Why sealed envelopes carry no signature: the X25519 exchange already authenticates the sender
to its receiver, and nothing in FLAVA forwards a peer's envelope to a third party, so a
per-envelope signature bought non-repudiation nobody used at ~90 µs per datagram (an Ed25519
sign and verify), nearly half of a protocol-only simulation's time. Parsing is split from
authentication so the receiver runs the cheap checks first (see
:mod:`flava_p2p.wire.endpoint`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import msgpack
import nacl.bindings
import nacl.exceptions
from nacl.signing import SigningKey, VerifyKey

from flava_p2p.identity import PEER_ID_BYTES

DOMAIN = b"flava-p2p/v2\x00envelope\x00"
SEALED_DOMAIN = b"flava-p2p/v2\x00sealed\x00"
VERSION = 2
SIGNATURE_BYTES = 64
NONCE_BYTES = 24
TAG_BYTES = 16
SEALED_OVERHEAD = NONCE_BYTES + TAG_BYTES
MAX_HEADER_BYTES = 512
_HEADER_FIELDS = 11
_LEN = struct.Struct("!H")
_INTS = (0, 1, 5, 6, 7, 9)
_BYTES = (3, 4, 8, 10)
_aead_encrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_decrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt


class EnvelopeError(ValueError):
    """Malformed envelope; ``reason`` is the rejection counter it belongs to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """The envelope header (covered by the signature or by the AEAD tag)."""

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
    """BLAKE2b-256 of a signed envelope's payload; empty for a sealed one."""

    @property
    def sealed(self) -> bool:
        """Whether the payload is AEAD-sealed (else it is signed and in clear)."""
        return not self.payload_hash

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
        if type(f) is not list or len(f) != _HEADER_FIELDS:
            raise EnvelopeError("malformed", "header must be an 11-field array")
        # exact type checks: bool is an int subclass and must not pass for one
        if any(type(f[i]) is not int or f[i] < 0 for i in _INTS):
            raise EnvelopeError("malformed", "header integer fields")
        if type(f[2]) is not str or any(type(f[i]) is not bytes for i in _BYTES):
            raise EnvelopeError("malformed", "header field types")
        h = cls(*f)
        if len(h.sender) != PEER_ID_BYTES or len(h.recipient) not in (0, PEER_ID_BYTES):
            raise EnvelopeError("malformed", "PeerID length")
        if len(h.schema) not in (0, 32) or len(h.payload_hash) not in (0, 32):
            raise EnvelopeError("malformed", "hash length")
        if h.encode() != raw:
            raise EnvelopeError("malformed", "non-canonical header encoding")
        return h


def payload_digest(payload: bytes) -> bytes:
    """BLAKE2b-256 of a signed envelope's payload."""
    return hashlib.blake2b(payload, digest_size=32).digest()


@dataclass(frozen=True)
class PairKeys:
    """The two symmetric keys two peers share, derived from their X25519 shared secret."""

    aead: bytes
    """XChaCha20-Poly1305 key of sealed envelopes (both directions)."""
    iv: bytes
    """BLAKE2b key that derives each sealed envelope's nonce."""

    @classmethod
    def derive(cls, shared_secret: bytes) -> PairKeys:
        """Domain-separated keys from ``crypto_box_beforenm``'s shared secret."""

        def kdf(person: bytes) -> bytes:
            return hashlib.blake2b(shared_secret, digest_size=32, person=person).digest()

        return cls(kdf(b"flava-aead-key"), kdf(b"flava-aead-iv"))


def sign_envelope(
    signing_key: SigningKey, header_fields: dict[str, object], payload: bytes
) -> bytes:
    """Frame a signed envelope with ``payload`` in clear (first-contact types)."""
    header = Header(
        payload_len=len(payload),
        payload_hash=payload_digest(payload),
        **header_fields,  # type: ignore[arg-type]
    )
    hbytes = header.encode()
    signature = signing_key.sign(DOMAIN + hbytes).signature
    return _LEN.pack(len(hbytes)) + hbytes + signature + payload


def seal_envelope(
    pair: PairKeys, header_fields: dict[str, object], plaintext: bytes, extra: bytes = b""
) -> bytes:
    """Frame a sealed envelope: ``plaintext`` encrypted; header, payload and ``extra`` (bytes
    framed before the envelope, e.g. an intro) authenticated."""
    header = Header(
        payload_len=len(plaintext) + SEALED_OVERHEAD,
        payload_hash=b"",
        **header_fields,  # type: ignore[arg-type]
    )
    hbytes = header.encode()
    iv = hashlib.blake2b(hbytes, digest_size=NONCE_BYTES, key=pair.iv)
    iv.update(plaintext)  # no copy of a large plaintext
    nonce = iv.digest()
    sealed = _aead_encrypt(plaintext, SEALED_DOMAIN + extra + hbytes, nonce, pair.aead)
    return _LEN.pack(len(hbytes)) + hbytes + nonce + sealed


@dataclass(frozen=True)
class ParsedEnvelope:
    """An envelope split into parts; nothing has been verified yet except its shape."""

    header: Header
    header_bytes: bytes
    signature: bytes
    """The Ed25519 signature of a signed envelope; empty for a sealed one."""
    payload: bytes


def parse(data: bytes, max_payload: int) -> ParsedEnvelope:
    """Split and decode the header; checks sizes, not the signature or tag."""
    if len(data) < _LEN.size:
        raise EnvelopeError("malformed", "truncated")
    (hlen,) = _LEN.unpack_from(data)
    end = _LEN.size + hlen
    if hlen > MAX_HEADER_BYTES or len(data) < end:
        raise EnvelopeError("malformed", "truncated or oversized header")
    hbytes = data[_LEN.size : end]
    header = Header.decode(hbytes)
    if header.sealed:
        sig = b""
        payload = data[end:]
        if len(payload) < SEALED_OVERHEAD:
            raise EnvelopeError("malformed", "sealed payload shorter than nonce and tag")
    else:
        if len(data) < end + SIGNATURE_BYTES:
            raise EnvelopeError("malformed", "truncated signature")
        sig = data[end : end + SIGNATURE_BYTES]
        payload = data[end + SIGNATURE_BYTES :]
    if header.payload_len != len(payload):
        raise EnvelopeError("malformed", "payload length differs from header")
    if len(payload) > max_payload:
        raise EnvelopeError("oversize", f"payload of {len(payload)} bytes")
    return ParsedEnvelope(header, hbytes, sig, payload)


def verify(env: ParsedEnvelope, verify_key: bytes) -> None:
    """Check a signed envelope's signature, then that the payload matches the signed hash."""
    if env.header.sealed:
        raise EnvelopeError("bad_auth", "a sealed envelope has no signature to check")
    try:
        VerifyKey(verify_key).verify(DOMAIN + env.header_bytes, env.signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise EnvelopeError("bad_signature") from None
    if payload_digest(env.payload) != env.header.payload_hash:
        raise EnvelopeError("bad_signature", "payload does not match signed hash")


def open_sealed(env: ParsedEnvelope, pair: PairKeys, extra: bytes = b"") -> bytes:
    """Authenticate and decrypt a sealed envelope in one step (any tampering, with it or with
    ``extra``, fails here)."""
    if not env.header.sealed:
        raise EnvelopeError("bad_auth", "a signed envelope is not sealed")
    nonce, sealed = env.payload[:NONCE_BYTES], env.payload[NONCE_BYTES:]
    try:
        ad = SEALED_DOMAIN + extra + env.header_bytes
        return bytes(_aead_decrypt(sealed, ad, nonce, pair.aead))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise EnvelopeError("bad_auth") from None
