"""A content-addressed cache of per-clip features, in one SQLite file.

Key: (front-end identity, SHA-256 of the clip file's bytes). The identity covers the feature
settings and the encoder's pinned hash (:func:`features.frontend_identity`), so a clip is
encoded once per front end, whichever corpus, folder, node or simulation it appears in, and a
copied or re-timestamped file is still a hit. Files that could not be decoded are remembered
too (with the reason), so a bad file costs one attempt per content.

Values are raw little-endian float32 bytes with an explicit shape: reading the cache never
unpickles anything. SQLite (WAL mode) makes concurrent readers and writers in several processes
(sweeps, simulator workers) safe, and every write is a transaction: a crash mid-write leaves the
previous state.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
FILENAME = "features.sqlite"
_CHUNK = 500  # keys per SELECT: well under SQLite's host-parameter limit

Array = npt.NDArray[np.float32]


class FeatureStore:
    """Per-clip features of one or more front ends, keyed by clip content."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"feature cache schema {version}, this version reads {SCHEMA_VERSION}"
            )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS clips ("
            " frontend TEXT NOT NULL, digest BLOB NOT NULL,"
            " shape TEXT, data BLOB, error TEXT,"
            " PRIMARY KEY (frontend, digest)) WITHOUT ROWID"
        )
        # Which content a file had when last hashed, keyed by where it is and its stat
        # fingerprint: a corpus of 40,000 clips is stat'ed in a second, read in a minute.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files ("
            " path TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, digest BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def known_digests(self, fingerprints: dict[str, str]) -> dict[str, bytes]:
        """Content digests of files (path → stat fingerprint) whose fingerprint is unchanged
        since they were hashed."""
        paths = list(fingerprints)
        found: dict[str, bytes] = {}
        for i in range(0, len(paths), _CHUNK):
            chunk = paths[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT path, fingerprint, digest FROM files "  # noqa: S608 (only '?' marks)
                f"WHERE path IN ({marks})",
                chunk,
            )
            for path, fingerprint, digest in rows:
                if fingerprints.get(path) == fingerprint and len(digest) == 32:
                    found[path] = bytes(digest)
        return found

    def remember_digests(self, entries: Iterable[tuple[str, str, bytes]]) -> None:
        """Record (path, stat fingerprint, content digest) of freshly hashed files."""
        rows = list(entries)
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", rows)

    def get_many(self, frontend: str, digests: Iterable[bytes]) -> dict[bytes, Array | str]:
        """Cached entries among ``digests``: features, or the error string of a bad file."""
        keys = list(dict.fromkeys(digests))
        found: dict[bytes, Array | str] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT digest, shape, data, error FROM clips "  # noqa: S608 (only '?' marks)
                f"WHERE frontend = ? AND digest IN ({marks})",
                [frontend, *chunk],
            )
            for digest, shape, data, error in rows:
                entry = _decode(shape, data, error)
                if entry is not None:
                    found[bytes(digest)] = entry
        return found

    def put_many(self, frontend: str, entries: Iterable[tuple[bytes, Array | str]]) -> None:
        """Store features (or a decode error) per digest, in one transaction."""
        rows: list[tuple[str, bytes, str | None, bytes | None, str | None]] = []
        for digest, value in entries:
            if isinstance(value, str):
                rows.append((frontend, digest, None, None, value))
            else:
                arr = np.ascontiguousarray(value, dtype="<f4")
                shape = ",".join(str(d) for d in arr.shape)
                rows.append((frontend, digest, shape, arr.tobytes(), None))
        if not rows:
            return
        with self._db:  # BEGIN … COMMIT, or ROLLBACK on error
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO clips VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, frontend: str | None = None) -> int:
        """Entries stored (for one front end, or all)."""
        if frontend is None:
            return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])
        q = "SELECT COUNT(*) FROM clips WHERE frontend = ?"
        return int(self._db.execute(q, (frontend,)).fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def _decode(shape: str | None, data: bytes | None, error: str | None) -> Array | str | None:
    """One row → features or error; None for a row that does not check out (re-encoded)."""
    if error is not None:
        return error
    if shape is None or data is None:
        return None
    try:
        dims = tuple(int(d) for d in shape.split(","))
    except ValueError:
        return None
    if any(d < 0 for d in dims) or int(np.prod(dims)) * 4 != len(data):
        return None
    return np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32)


def fingerprint(st: os.stat_result) -> str:
    """A file's stat fingerprint: any write changes its ctime (which no tool can set back),
    so an unchanged fingerprint means unchanged bytes, as git's index and make assume."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def default_cache_dir() -> Path:
    """``$FLAVA_CACHE_DIR``, else ``$XDG_CACHE_HOME/flava-p2p``, else ``~/.cache/flava-p2p``.

    One cache per user serves every corpus: entries are keyed by content, so sharing is safe,
    and the data folders themselves (possibly read-only or shared) are never written to.
    """
    if env := os.environ.get("FLAVA_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flava-p2p"


def open_store(directory: str | Path) -> FeatureStore | None:
    """The store in ``directory``, or None (with a warning) when it cannot be used: a
    read-only or corrupt cache only means encoding again, never a failed run."""
    try:
        return FeatureStore(directory)
    except (OSError, sqlite3.Error) as exc:
        log.warning(
            "feature cache unavailable; encoding without it", dir=str(directory), error=str(exc)
        )
        return None
