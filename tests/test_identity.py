"""Identity: PeerIDs compatible with libp2p, signed X25519 keys, keystore safety, `init`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flava_p2p.cli.node import main as node_main
from flava_p2p.identity import (
    Identity,
    IdentityError,
    PeerKeys,
    b58decode,
    b58encode,
    load_keystore,
    make_multiaddr,
    parse_multiaddr,
    peer_id_from_str,
    save_keystore,
)


class TestPeerId:
    def test_matches_libp2p(self) -> None:
        """Our PeerID derivation equals py-libp2p's for the same Ed25519 key."""
        from libp2p.crypto.ed25519 import Ed25519PublicKey
        from libp2p.peer.id import ID

        ident = Identity.generate()
        theirs = ID.from_pubkey(Ed25519PublicKey.from_bytes(ident.keys.verify_key))
        assert ident.peer_id_str == theirs.to_base58()
        assert ident.peer_id == theirs.to_bytes()
        assert ident.peer_id_str.startswith("12D3KooW")

    def test_base58_round_trip(self) -> None:
        """base58 round-trips, leading zero bytes included."""
        for data in (b"", b"\x00\x00abc", os.urandom(38)):
            assert b58decode(b58encode(data)) == data
        with pytest.raises(IdentityError):
            b58decode("0OIl")

    def test_multiaddr_round_trip(self) -> None:
        """Multiaddrs carry host, UDP port and PeerID; bad ones get a clear error."""
        ident = Identity.generate()
        for host in ("127.0.0.1", "::1"):
            addr = make_multiaddr(host, 7946, ident.peer_id)
            assert parse_multiaddr(addr) == (host, 7946, ident.peer_id)
        assert parse_multiaddr("/ip4/10.0.0.1/udp/5") == ("10.0.0.1", 5, None)
        quic = f"/ip4/1.2.3.4/udp/5/quic-v1/p2p/{ident.peer_id_str}"
        for bad in ("/ip4/1.2.3.4/tcp/5", "hello", "/ip4/1.2.3.4/udp/5/p2p/xyz", quic):
            with pytest.raises(IdentityError):
                parse_multiaddr(bad)
        with pytest.raises(IdentityError):
            peer_id_from_str(b58encode(b"\x00\x24" + b"x" * 36))

    def test_the_hand_parser_answers_as_the_multiaddr_package(self) -> None:
        """The canonical UDP form is parsed without the multiaddr package (it is slow); every
        text the hand parser takes must give the package's answer, the canonical ones must be
        taken (else the fast path is dead), and near misses are left to the package."""
        from flava_p2p.identity import _canonical_udp, _parse_with_package

        ident = Identity.from_seed(b"a" * 32)
        pid = ident.peer_id_str
        canonical = [
            make_multiaddr("10.1.2.3", 9000, ident.peer_id),
            make_multiaddr("0.0.0.0", 0, ident.peer_id),
            make_multiaddr("255.255.255.255", 65535, ident.peer_id),
            "/ip4/10.0.0.1/udp/5",
        ]
        near = [
            f"/ip4/010.1.2.3/udp/9000/p2p/{pid}",
            f"/ip4/10.1.2.3/udp/09000/p2p/{pid}",
            f"/ip4/10.1.2.3/udp/65536/p2p/{pid}",
            f"/ip4/10.1.2.3/udp/+5/p2p/{pid}",
            f"/ip4/10.1.2.3/udp/٣/p2p/{pid}",  # a non-ASCII digit
            f"/ip4/10.1.2/udp/9000/p2p/{pid}",
            f"/ip4/10.1.2.3/udp/9000/p2p/{pid}/",
            f"/ip4/10.1.2.3/udp/9000/p2p/{pid[:-1]}",
            f"/ip4/10.1.2.3/udp/9000/ipfs/{pid}",
            f"/ip4/10.1.2.3/tcp/9000/p2p/{pid}",
            f"/ip6/::1/udp/9000/p2p/{pid}",
            f"ip4/10.1.2.3/udp/9000/p2p/{pid}",
            "/ip4/10.1.2.3/udp/9000/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ]
        for text in canonical:
            fast = _canonical_udp(text)
            assert fast is not None, text
            assert fast == _parse_with_package(text) == parse_multiaddr(text)
        for text in near:
            assert _canonical_udp(text) is None, text
            try:
                package: object = _parse_with_package(text)
            except IdentityError as exc:
                package = type(exc)
            try:
                ours: object = parse_multiaddr(text)
            except IdentityError as exc:
                ours = type(exc)
            assert ours == package, text

    def test_x25519_key_is_bound_by_identity_key(self) -> None:
        """The encryption key is signed by the identity key; another's signature fails."""
        a, b = Identity.generate(), Identity.generate()
        a.keys.check()
        assert a.keys.box_key != a.keys.verify_key
        forged = PeerKeys(a.peer_id, a.keys.verify_key, b.keys.box_key, b.keys.box_key_sig)
        with pytest.raises(IdentityError, match="not signed"):
            forged.check()


class TestKeystore:
    def test_plain_round_trip_mode_0600(self, tmp_path: Path) -> None:
        """Saved keystores are 0600 and load back to the same identity."""
        ident = Identity.generate()
        path = tmp_path / "id.key"
        save_keystore(path, ident)
        assert path.stat().st_mode & 0o777 == 0o600
        assert load_keystore(path).peer_id == ident.peer_id

    def test_refuses_group_readable(self, tmp_path: Path) -> None:
        """A group/world-readable keystore is refused with the chmod fix in the message."""
        path = tmp_path / "id.key"
        save_keystore(path, Identity.generate())
        path.chmod(0o644)
        with pytest.raises(IdentityError, match=r"chmod 600"):
            load_keystore(path)

    def test_passphrase(self, tmp_path: Path) -> None:
        """A sealed keystore needs the right passphrase; the wrong one says so."""
        ident = Identity.generate()
        path = tmp_path / "id.key"
        save_keystore(path, ident, "correct horse")
        assert b"ed25519" not in path.read_bytes()
        assert load_keystore(path, "correct horse").peer_id == ident.peer_id
        with pytest.raises(IdentityError, match="wrong passphrase"):
            load_keystore(path, "battery staple")
        with pytest.raises(IdentityError, match="passphrase-protected"):
            load_keystore(path)

    def test_corrupt_and_missing(self, tmp_path: Path) -> None:
        """Garbage or a missing file give IdentityError with a hint."""
        path = tmp_path / "id.key"
        with pytest.raises(IdentityError, match="flava-node init"):
            load_keystore(path)
        path.write_bytes(b"\x93garbage")
        path.chmod(0o600)
        with pytest.raises(IdentityError):
            load_keystore(path)


class TestInitCommand:
    def test_init_creates_identity_and_config(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`flava-node init` writes a 0600 keystore and a valid config, prints PeerID+multiaddr."""
        home = tmp_path / "home"
        assert node_main(["init", "--home", str(home), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["peer_id"].startswith("12D3KooW")
        assert out["multiaddr"] == f"/ip4/127.0.0.1/udp/7946/p2p/{out['peer_id']}"
        assert load_keystore(home / "identity.key").peer_id_str == out["peer_id"]
        assert node_main(["config", "check", str(home / "node.yaml")]) == 0
        capsys.readouterr()
        assert node_main(["init", "--home", str(home)]) == 2
        assert "already exists" in capsys.readouterr().err
