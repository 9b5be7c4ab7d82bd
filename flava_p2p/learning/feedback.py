"""The device's feedback loop: what the live model answered, what the user said it was.

One SQLite file in the node's home (schema versioned, WAL, every write a transaction, so a
crash leaves the previous state). Recognised clips are kept for a while (the retention policy:
at most ``max_clips``, none older than ``max_age_s``) so the user can confirm or correct them;
a confirmed clip is copied into the node's inbox under its label, where the watched clip folder
picks it up and continuous learning trains on it (its own per-clip ε, like any new recording).
Clips never leave the device.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
OWNER = "owner"  # the speaker name feedback clips get in the inbox (<label>/owner_nohash_<n>)


class FeedbackError(Exception):
    """Feedback that cannot be recorded: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Feedback:
    """One recorded answer of the user."""

    clip_id: str
    predicted: str
    corrected: str | None
    """The label the user gave; None for "none of these"."""
    model_round: int
    at: float
    inbox_path: str | None
    """Where the confirmed clip was put for training (None: not a label of the task)."""


class FeedbackStore:
    """Recognitions and the user's feedback on them (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        inbox: str | Path,
        labels: list[str],
        *,
        max_clips: int = 2000,
        max_age_s: float = 30 * 86400,
    ) -> None:
        self.dir = Path(directory)
        self.clips = self.dir / "clips"
        self.clips.mkdir(parents=True, exist_ok=True)
        self.inbox = Path(inbox)
        self.labels = list(labels)
        self.max_clips, self.max_age_s = max_clips, max_age_s
        self._lock = threading.RLock()  # API requests come from several worker threads
        self._db = sqlite3.connect(
            self.dir / "feedback.sqlite", timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"{self.dir / 'feedback.sqlite'}: schema {version}, this version reads "
                f"{SCHEMA_VERSION}; move the file away to start a new one."
            )
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS recognitions (clip_id TEXT PRIMARY KEY, path TEXT,"
                " predicted TEXT NOT NULL, probabilities TEXT NOT NULL, model_round INTEGER,"
                " at REAL NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " clip_id TEXT NOT NULL, path TEXT, predicted TEXT NOT NULL, corrected TEXT,"
                " model_round INTEGER, at REAL NOT NULL)"
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ recognitions
    def remember(
        self,
        clip_id: str,
        data: bytes,
        suffix: str,
        predicted: str,
        probabilities: dict[str, float],
        model_round: int,
        now: float | None = None,
    ) -> None:
        """Keep a recognised clip (file first, then the row: a crash between them leaves an
        orphan file the retention sweep removes, never a row without its clip)."""
        now = time.time() if now is None else now
        path = self.clips / f"{clip_id}{suffix}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO recognitions VALUES (?, ?, ?, ?, ?, ?)",
                (clip_id, str(path), predicted, json.dumps(probabilities), model_round, now),
            )
        with self._lock:
            self._retain(now)

    def _retain(self, now: float) -> None:
        """Forget recognitions past the age limit or beyond the count limit, oldest first."""
        rows = self._db.execute(
            "SELECT clip_id, path FROM recognitions WHERE at < ? OR clip_id IN ("
            " SELECT clip_id FROM recognitions ORDER BY at DESC LIMIT -1 OFFSET ?)",
            (now - self.max_age_s, self.max_clips),
        ).fetchall()
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM recognitions WHERE clip_id = ?", [(r[0],) for r in rows]
            )
        for _, path in rows:
            Path(path).unlink(missing_ok=True)

    def kept(self) -> int:
        """Recognised clips currently kept."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM recognitions").fetchone()[0])

    # ------------------------------------------------------------------ feedback
    def record(
        self, clip_id: str, label: str | None, now: float | None = None, *, train: bool = True
    ) -> Feedback:
        """The user's answer for a recognised clip: its true ``label``, or None for "none of
        these". A label of the task puts the clip in the inbox for training, unless ``train`` is
        False (the node trains only on its enrolled owner's voice and this clip is not theirs).
        """
        now = time.time() if now is None else now
        if label is not None and label not in self.labels:
            raise FeedbackError(
                422, f"unknown label {label!r}; the task's labels are {self.labels} (or null)."
            )
        with self._lock:
            row = self._db.execute(
                "SELECT path, predicted, model_round FROM recognitions WHERE clip_id = ?",
                (clip_id,),
            ).fetchone()
        if row is None:
            raise FeedbackError(
                404,
                f"no recognised clip {clip_id!r} is kept (unknown, or past the retention "
                f"limits); send the clip to /v1/recognize again first.",
            )
        path, predicted, model_round = row
        inbox_path = None
        if train and label is not None and Path(path).is_file():
            dest = self.inbox / label / f"{OWNER}_nohash_{int(clip_id[:12], 16)}{Path(path).suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)  # the folder watcher never sees half a file
            inbox_path = str(dest)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO feedback (clip_id, path, predicted, corrected, model_round, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (clip_id, inbox_path, predicted, label, model_round, now),
            )
        return Feedback(clip_id, predicted, label, int(model_round), now, inbox_path)

    def clip_path(self, clip_id: str) -> Path | None:
        """Where the recognised clip ``clip_id`` is kept (None: unknown or aged out)."""
        with self._lock:
            row = self._db.execute(
                "SELECT path FROM recognitions WHERE clip_id = ?", (clip_id,)
            ).fetchone()
        return Path(row[0]) if row is not None and Path(row[0]).is_file() else None

    def labelled_clips(self) -> list[tuple[Path, str]]:
        """The user's labelled clips still in the inbox (latest answer per clip), oldest first:
        what personalization fits on."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, corrected FROM feedback WHERE id IN (SELECT MAX(id) FROM feedback"
                " GROUP BY clip_id) AND path IS NOT NULL AND corrected IS NOT NULL ORDER BY id"
            ).fetchall()
        return [(Path(p), lab) for p, lab in rows if Path(p).is_file()]

    def stats(self, bucket_s: float = 86400.0) -> dict[str, Any]:
        """Corrections per label, and how often the model was right on the user's own
        confirmed clips, per ``bucket_s`` of time (by default per day)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT predicted, corrected, at FROM feedback ORDER BY at"
            ).fetchall()
        per_label: dict[str, dict[str, int]] = {
            lab: {"confirmed": 0, "corrected_to": 0, "mistaken_for": 0} for lab in self.labels
        }
        none_of_these = 0
        buckets: dict[int, list[bool]] = {}
        for predicted, corrected, at in rows:
            if corrected is None:
                none_of_these += 1
                continue
            right = predicted == corrected
            per_label[corrected]["confirmed" if right else "corrected_to"] += 1
            if not right and predicted in per_label:
                per_label[predicted]["mistaken_for"] += 1
            buckets.setdefault(int(at // bucket_s), []).append(right)
        history = [
            {"from": k * bucket_s, "answers": len(v), "accuracy": round(sum(v) / len(v), 4)}
            for k, v in sorted(buckets.items())
        ]
        return {
            "feedback": len(rows),
            "none_of_these": none_of_these,
            "per_label": per_label,
            "accuracy_over_time": history,
            "kept_recognitions": self.kept(),
        }

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
