"""Node identity: Ed25519 signing key, a separate X25519 key signed by it, libp2p PeerID, keystore.

The X25519 key (for NaCl Box) is never derived from or reused as the Ed25519 key; instead the
identity key signs it, so anyone holding a node's PeerID can check that the encryption key
belongs to it. PeerIDs follow libp2p: identity multihash of the protobuf-encoded Ed25519 public
key, base58btc (``12D3KooW…``). Addresses are multiaddrs ``/ip4/…/udp/…/p2p/<PeerID>``.
"""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgpack
import multiaddr
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from flava_p2p.atomic import write_atomic
from flava_p2p.errors import FlavaError

KEYSTORE_FORMAT = "flava-keystore"
KEYSTORE_VERSION = 1
X25519_BINDING_DOMAIN = b"flava-p2p/v1/x25519-binding\x00"

# libp2p: protobuf PublicKey{Type=Ed25519(1), Data=<32 bytes>} inside an identity multihash.
_PB_ED25519_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"
PEER_ID_BYTES = 38
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class IdentityError(FlavaError):
    """A key, keystore, PeerID or address is invalid; the message says how to fix it."""


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (as used by libp2p PeerIDs)."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises IdentityError on a foreign character."""
    n = 0
    for ch in text:
        idx = _B58.find(ch)
        if idx < 0:
            raise IdentityError(f"{text!r} is not base58 (character {ch!r}).")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def peer_id_bytes(verify_key: bytes) -> bytes:
    """Raw PeerID (identity multihash) for an Ed25519 public key."""
    if len(verify_key) != 32:
        raise IdentityError("an Ed25519 public key is 32 bytes.")
    return _IDENTITY_MULTIHASH_PREFIX + _PB_ED25519_PREFIX + verify_key


def verify_key_from_peer_id(pid: bytes) -> bytes:
    """The Ed25519 key inside an Ed25519 PeerID (they are self-certifying)."""
    prefix = _IDENTITY_MULTIHASH_PREFIX + _PB_ED25519_PREFIX
    if len(pid) != PEER_ID_BYTES or not pid.startswith(prefix):
        raise IdentityError("not an Ed25519 libp2p PeerID (expected 12D3KooW…).")
    return pid[len(prefix) :]


@lru_cache(maxsize=65_536)  # a 10,000-node simulation names every peer in one process
def peer_id_to_str(pid: bytes) -> str:
    """``12D3KooW…`` text form (cached: the wire labels every authenticated datagram)."""
    return b58encode(pid)


@lru_cache(maxsize=65_536)
def peer_id_from_str(text: str) -> bytes:
    """Parse and check a ``12D3KooW…`` PeerID (cached: rejections name their source by it)."""
    pid = b58decode(text)
    verify_key_from_peer_id(pid)
    return pid


@dataclass(frozen=True)
class PeerKeys:
    """A peer's public keys, as learned from a signed HELLO or a peer exchange."""

    peer_id: bytes
    verify_key: bytes
    box_key: bytes
    box_key_sig: bytes

    def check(self) -> None:
        """Raise IdentityError unless PeerID, identity key and signed X25519 key agree."""
        if peer_id_bytes(self.verify_key) != self.peer_id:
            raise IdentityError("PeerID does not match its Ed25519 key.")
        if len(self.box_key) != 32:
            raise IdentityError("X25519 key must be 32 bytes.")
        if not _binding_signed(self.verify_key, self.box_key, self.box_key_sig):
            raise IdentityError("X25519 key is not signed by the peer's identity key.")


@lru_cache(maxsize=16384)
def _binding_signed(verify_key: bytes, box_key: bytes, signature: bytes) -> bool:
    """Whether ``signature`` binds ``box_key`` to ``verify_key``. Cached: a pure function of
    its arguments, and the same descriptors arrive again and again through peer exchanges (in
    the simulator, through every node of the process)."""
    try:
        VerifyKey(verify_key).verify(X25519_BINDING_DOMAIN + box_key, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


class Identity:
    """This node's private keys and the public :class:`PeerKeys` derived from them."""

    def __init__(self, signing_key: SigningKey, box_key: PrivateKey) -> None:
        self.signing_key = signing_key
        self.box_key = box_key
        vk = bytes(signing_key.verify_key)
        pub = bytes(box_key.public_key)
        sig = signing_key.sign(X25519_BINDING_DOMAIN + pub).signature
        self.keys = PeerKeys(peer_id_bytes(vk), vk, pub, sig)

    @classmethod
    def generate(cls) -> Identity:
        """Fresh keys from the OS CSPRNG."""
        return cls(SigningKey.generate(), PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic keys from a 32-byte seed (simulations only; never for real nodes)."""
        if len(seed) != 32:
            raise IdentityError("identity seed must be 32 bytes.")
        from hashlib import blake2b

        box_seed = blake2b(seed, digest_size=32, person=b"flava-x25519").digest()
        return cls(SigningKey(seed), PrivateKey(box_seed))

    @property
    def peer_id(self) -> bytes:
        """Raw PeerID bytes."""
        return self.keys.peer_id

    @property
    def peer_id_str(self) -> str:
        """``12D3KooW…``."""
        return peer_id_to_str(self.keys.peer_id)

    def public_box_key(self) -> PublicKey:
        """This node's X25519 public key."""
        return self.box_key.public_key


def make_multiaddr(host: str, port: int, peer_id: bytes) -> str:
    """``/ip4/<host>/udp/<port>/p2p/<PeerID>`` (``/ip6/`` for IPv6 hosts)."""
    proto = "ip6" if ":" in host else "ip4"
    return f"/{proto}/{host}/udp/{port}/p2p/{peer_id_to_str(peer_id)}"


def parse_multiaddr(text: str) -> tuple[str, int, bytes | None]:
    """``/ip4|ip6/<host>/udp/<port>[/p2p/<PeerID>]`` → (host, port, PeerID or None)."""
    return _parse_multiaddr(text)


@lru_cache(maxsize=65536)
def _parse_multiaddr(text: str) -> tuple[str, int, bytes | None]:
    # Cached: peer exchanges repeat the same addresses constantly. Pure function of the text;
    # failures raise and are not cached.
    return _canonical_udp(text) or _parse_with_package(text)


def _canonical_udp(text: str) -> tuple[str, int, bytes | None] | None:
    """The exact text :func:`make_multiaddr` writes for an IPv4 host, parsed by hand; None
    for anything else, which the multiaddr package then judges. The package takes ~0.1–0.3
    ms per address, and a 10,000-node simulation meets every node's address in the first
    round. Only the canonical spelling is taken (each part must print back as it reads), so
    this answers exactly what the package would."""
    parts = text.split("/")
    if len(parts) not in (5, 7) or parts[0] or parts[1] != "ip4" or parts[3] != "udp":
        return None
    host, port_text = parts[2], parts[4]
    if not (port_text.isascii() and port_text.isdigit()) or str(int(port_text)) != port_text:
        return None
    port = int(port_text)
    try:
        canonical_host = str(ipaddress.IPv4Address(host))
        pid = peer_id_from_str(parts[6]) if len(parts) == 7 and parts[5] == "p2p" else None
    except (ValueError, FlavaError):
        return None
    if canonical_host != host or port > 65535 or (len(parts) == 7 and pid is None):
        return None
    if pid is not None and peer_id_to_str(pid) != parts[6]:
        return None
    return host, port, pid


def _parse_with_package(text: str) -> tuple[str, int, bytes | None]:
    try:
        ma = multiaddr.Multiaddr(text)
        protos = [p.name for p in ma.protocols()]
    except Exception as exc:  # the multiaddr package raises a zoo of exception types
        raise IdentityError(
            f"{text!r} is not a multiaddr ({exc}); expected /ip4/HOST/udp/PORT/p2p/PEERID."
        ) from None
    if len(protos) < 2 or protos[0] not in ("ip4", "ip6") or protos[1] != "udp":
        raise IdentityError(f"{text!r}: expected /ip4/HOST/udp/PORT[/p2p/PEERID] (UDP only).")
    if protos[2:] not in ([], ["p2p"]):
        # e.g. /udp/…/quic-v1: another protocol over UDP, which FLAVA's wire cannot dial;
        # reading it as a FLAVA endpoint would send datagrams nobody there understands
        raise IdentityError(
            f"{text!r}: /{'/'.join(protos[2:])} after /udp is not FLAVA's UDP wire; "
            "expected /ip4/HOST/udp/PORT[/p2p/PEERID] (TCP addresses are libp2p's)."
        )
    host = ma.value_for_protocol(protos[0])
    port = int(ma.value_for_protocol("udp"))
    pid = peer_id_from_str(ma.value_for_protocol("p2p")) if "p2p" in protos else None
    return str(host), port, pid


def parse_libp2p_multiaddr(text: str) -> bytes:
    """The PeerID of a libp2p address the node can dial: ``/ip4|ip6|dns/HOST/tcp/PORT/p2p/ID``
    or a relay's such address followed by ``/p2p-circuit/p2p/ID``."""
    return _parse_libp2p_multiaddr(text)


@lru_cache(maxsize=65536)
def _parse_libp2p_multiaddr(text: str) -> bytes:
    try:
        protos = [p.name for p in multiaddr.Multiaddr(text).protocols()]
    except Exception as exc:  # the multiaddr package raises a zoo of exception types
        raise IdentityError(f"{text!r} is not a multiaddr ({exc}).") from None
    direct = ["tcp", "p2p"]
    relayed = ["tcp", "p2p", "p2p-circuit", "p2p"]
    if (
        len(protos) < 3
        or protos[0] not in ("ip4", "ip6", "dns", "dns4", "dns6")
        or protos[1:] not in (direct, relayed)
    ):
        raise IdentityError(
            f"{text!r}: a libp2p address must be /ip4/HOST/tcp/PORT/p2p/PEERID, or a relay's "
            "address followed by /p2p-circuit/p2p/PEERID (QUIC and WebSocket are not used)."
        )
    return peer_id_from_str(text.rsplit("/p2p/", 1)[1])


# ----------------------------------------------------------------------------- keystore
def save_keystore(path: str | Path, identity: Identity, passphrase: str | None = None) -> None:
    """Write the keystore with mode 0600, optionally sealed with an Argon2id-derived key."""
    secret = msgpack.packb(
        {"ed25519_seed": bytes(identity.signing_key), "x25519": bytes(identity.box_key)}
    )
    doc: dict[str, Any] = {
        "format": KEYSTORE_FORMAT,
        "version": KEYSTORE_VERSION,
        "peer_id": identity.peer_id_str,
    }
    if passphrase:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        ops, mem = (
            nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
            nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
        )
        key = nacl.pwhash.argon2id.kdf(32, passphrase.encode(), salt, opslimit=ops, memlimit=mem)
        doc["kdf"] = {"alg": "argon2id", "salt": salt, "opslimit": ops, "memlimit": mem}
        doc["sealed"] = bytes(nacl.secret.SecretBox(key).encrypt(secret))
    else:
        doc["plain"] = secret
    write_atomic(path, msgpack.packb(doc, use_bin_type=True))
    Path(path).chmod(0o600)


def load_keystore(path: str | Path, passphrase: str | None = None) -> Identity:
    """Read a keystore; refuses files readable by group/others, explaining the fix."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(
            f"{path}: no identity keystore. Create one with `flava-node init`."
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path}: keystore is accessible by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"the private keys may have leaked. Fix with `chmod 600 {path}`."
        )
    try:
        doc = msgpack.unpackb(path.read_bytes()[: 1 << 16], raw=False)
        if doc.get("format") != KEYSTORE_FORMAT or doc.get("version") != KEYSTORE_VERSION:
            raise IdentityError(f"{path}: not a FLAVA-P2P keystore (version 1).")
        if "sealed" in doc:
            if not passphrase:
                raise IdentityError(
                    f"{path}: keystore is passphrase-protected; set the environment variable "
                    f"named by identity.passphrase_env."
                )
            kdf = doc["kdf"]
            key = nacl.pwhash.argon2id.kdf(
                32,
                passphrase.encode(),
                kdf["salt"],
                opslimit=kdf["opslimit"],
                memlimit=kdf["memlimit"],
            )
            secret = nacl.secret.SecretBox(key).decrypt(doc["sealed"])
        else:
            secret = doc["plain"]
        keys = msgpack.unpackb(secret, raw=False)
        identity = Identity(SigningKey(keys["ed25519_seed"]), PrivateKey(keys["x25519"]))
    except nacl.exceptions.CryptoError:
        raise IdentityError(f"{path}: wrong passphrase for this keystore.") from None
    except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise IdentityError(f"{path}: keystore is corrupt ({exc}).") from None
    if doc.get("peer_id") != identity.peer_id_str:
        raise IdentityError(f"{path}: keystore PeerID does not match its keys (corrupt).")
    return identity
