"""The device's enrolled speakers: voice embeddings kept in the node's home, never shared.

One JSON file per speaker under ``<home>/speakers/`` holding the embedding of every enrolment
clip (not the audio), written atomically. A speaker's model is the normalised mean of those
embeddings; verification is the cosine of a clip's embedding with it.

Names are restricted to ``[A-Za-z0-9_-]{1,64}``, so a name can never reach outside the folder.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from flava_p2p.atomic import write_atomic
from flava_p2p.speech.speaker import DIM, Verdict, centroid, cosine

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CLIPS_PER_SPEAKER = 50


class EnrolmentError(Exception):
    """A request about enrolled speakers that cannot be served; ``status`` is the HTTP one."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def check_name(name: str) -> str:
    """``name`` if it is a valid speaker name, else a 400 that says what is allowed."""
    if not NAME.fullmatch(name):
        raise EnrolmentError(
            400,
            "bad_speaker_name",
            f"speaker name {name[:80]!r} is not allowed: use 1–64 letters, digits, '_' or '-'.",
        )
    return name


class SpeakerBook:
    """Enrolled speakers of one device (see the module docstring)."""

    def __init__(self, directory: str | Path, threshold: float) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def names(self) -> list[str]:
        """Every enrolled speaker, sorted."""
        return sorted(p.stem for p in self.dir.glob("*.json") if NAME.fullmatch(p.stem))

    def embeddings(self, name: str) -> np.ndarray:
        """The stored enrolment embeddings of ``name`` (404 when not enrolled)."""
        path = self._path(name)
        try:
            doc = json.loads(path.read_text())
            e = np.asarray(doc["embeddings"], dtype=np.float32)
        except FileNotFoundError:
            raise EnrolmentError(
                404,
                "unknown_speaker",
                f"no speaker {name!r} is enrolled; enrolled: {', '.join(self.names()) or 'none'}. "
                f"Enrol with POST /v1/speakers/{name}/enroll.",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise EnrolmentError(
                500, "corrupt_enrolment", f"{path} is unreadable ({exc}); enrol {name!r} again."
            ) from None
        if e.ndim != 2 or e.shape[1] != DIM or len(e) == 0:
            raise EnrolmentError(
                500, "corrupt_enrolment", f"{path} holds no valid embeddings; enrol again."
            )
        return e

    def enrol(self, name: str, new: np.ndarray, *, replace: bool = False) -> dict[str, Any]:
        """Add clip embeddings to ``name`` (or replace them); the newest 50 are kept."""
        path = self._path(name)
        with self._lock:
            old = (
                np.zeros((0, DIM), np.float32)
                if replace or not path.exists()
                else self.embeddings(name)
            )
            both = np.concatenate([old, np.asarray(new, np.float32)])[-MAX_CLIPS_PER_SPEAKER:]
            doc = {"name": name, "updated": time.time(), "embeddings": both.round(6).tolist()}
            write_atomic(path, json.dumps(doc).encode())
        return {"speaker": name, "clips": len(new), "enrolled_clips": len(both)}

    def forget(self, name: str) -> bool:
        """Delete ``name``'s enrolment; False if there was none."""
        path = self._path(name)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        return True

    def verify(self, embedding: np.ndarray, name: str) -> Verdict:
        """How well one clip's embedding matches ``name``'s enrolment."""
        return Verdict(cosine(embedding, centroid(self.embeddings(name))), self.threshold)

    def compare(self, a: np.ndarray, b: np.ndarray) -> Verdict:
        """Two clips' embeddings against each other."""
        return Verdict(cosine(a, b), self.threshold)
