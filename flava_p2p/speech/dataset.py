"""Speech Commands layout loader: scan, split by list files or held-out speakers, featurise, cache.

Layout: ``<root>/<label>/<speaker>_nohash_<n>.(wav|flac)``; ``_background_noise_/`` is noise, not a
label; ``validation_list.txt`` / ``testing_list.txt`` list held-out files relative to the root.
Labels may be any UTF-8 folder name. Files that cannot be decoded are skipped, counted and named
in a warning — never a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import structlog
import torch

from flava_p2p.config import FeatureConfig
from flava_p2p.errors import FlavaError
from flava_p2p.speech.audio import AUDIO_EXTENSIONS, AudioError, load_clip
from flava_p2p.speech.feature_store import (
    FeatureStore,
    default_cache_dir,
    fingerprint,
    open_store,
)
from flava_p2p.speech.features import Frontend, frontend_identity, make_frontend

log = structlog.get_logger(__name__)

Split = Literal["train", "validation", "test"]
BACKGROUND_DIR = "_background_noise_"
_SPEAKER_RE = re.compile(r"^(?P<speaker>.+?)_nohash_(?P<n>\d+)$")


class DatasetError(FlavaError):
    """The data directory cannot be used; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Utterance:
    """One labelled clip on disk."""

    path: Path
    label: str
    speaker: str
    split: Split


@dataclass
class ScanResult:
    """What :func:`scan_corpus` found."""

    root: Path
    utterances: list[Utterance]
    labels: list[str]
    background: list[Path] = field(default_factory=list)
    has_lists: bool = False
    unknown_labels: dict[str, int] = field(default_factory=dict)
    """Folders that are not a label of the task card → audio files in them (not used)."""


def scan_corpus(
    root: str | Path,
    holdout_speakers: float = 0.0,
    seed: int = 0,
    test_speakers: list[str] | None = None,
    labels: list[str] | None = None,
    allow_empty: bool = False,
) -> ScanResult:
    """Find every audio file and assign it a label, speaker and split.

    ``labels`` (a task card's ordered list) fixes the label set and order: folders that are not
    among them are counted in ``unknown_labels`` and skipped, labels without a folder are
    simply absent. Without it, every folder is a label (sorted). ``allow_empty`` accepts a
    folder with no clips yet (a node waiting for its owner's recordings).

    With list files, they decide the split. Without them, a ``holdout_speakers`` fraction of
    speakers (or, when ≥ 1, that many speakers; seeded choice) is split evenly into validation
    and test; 0 means all train. ``test_speakers`` names the test speakers explicitly (list
    files are then ignored; everyone else trains).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: data directory not found. Point --data at a folder in the Speech Commands "
            f"layout (<root>/<label>/<speaker>_nohash_<n>.wav), or make one with "
            f"`flava-sim dataset synth --out {root}`."
        )
    folders, unknown = _label_folders(root, labels)
    if labels is None:
        labels = folders
    if not labels and not allow_empty:
        raise DatasetError(f"{root}: no label folders found (expected <root>/<label>/*.wav).")
    val_list = _read_list(root / "validation_list.txt")
    test_list = _read_list(root / "testing_list.txt")
    has_lists = bool(val_list or test_list)

    found: list[tuple[Path, str, str, str]] = []
    for label in folders:
        for path in sorted((root / label).iterdir()):
            if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
                continue
            m = _SPEAKER_RE.match(path.stem)
            speaker = m.group("speaker") if m else path.stem
            found.append((path, label, speaker, f"{label}/{path.name}"))
    if not found and not allow_empty:
        hint = f" Folders that are not labels of the task: {sorted(unknown)}." if unknown else ""
        raise DatasetError(f"{root}: label folders contain no .wav or .flac files.{hint}")

    held_val, held_test = _held_out_speakers(
        root, found, has_lists, holdout_speakers, seed, test_speakers
    )
    if test_speakers:
        val_list, test_list, has_lists = set(), set(), False
    utterances = []
    for path, label, speaker, rel in found:
        split: Split = "train"
        if rel in val_list or speaker in held_val:
            split = "validation"
        elif rel in test_list or speaker in held_test:
            split = "test"
        utterances.append(Utterance(path, label, speaker, split))
    background = (
        sorted(p for p in (root / BACKGROUND_DIR).glob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if (root / BACKGROUND_DIR).is_dir()
        else []
    )
    return ScanResult(root, utterances, list(labels), background, has_lists, unknown)


def _label_folders(root: Path, labels: list[str] | None) -> tuple[list[str], dict[str, int]]:
    """Label folders to read (in label order) and the non-label folders with their clip counts."""
    folders = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name != BACKGROUND_DIR and not d.name.startswith(".")
    )
    if labels is None:
        return folders, {}
    unknown = {
        name: sum(1 for p in (root / name).iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
        for name in folders
        if name not in labels
    }
    return [name for name in labels if (root / name).is_dir()], unknown


def _held_out_speakers(
    root: Path,
    found: list[tuple[Path, str, str, str]],
    has_lists: bool,
    holdout_speakers: float,
    seed: int,
    test_speakers: list[str] | None,
) -> tuple[set[str], set[str]]:
    """(validation, test) speakers chosen by name, or by a seeded fraction/count."""
    speakers = sorted({f[2] for f in found})
    if test_speakers:
        unknown = sorted(set(test_speakers) - set(speakers))
        if unknown:
            raise DatasetError(
                f"{root}: test speaker(s) {', '.join(unknown)} not in the corpus; its speakers "
                f"are {', '.join(speakers)}."
            )
        return set(), set(test_speakers)
    if has_lists or holdout_speakers <= 0:
        return set(), set()
    n_hold = (
        int(holdout_speakers)
        if holdout_speakers >= 1
        else max(2, round(holdout_speakers * len(speakers)))
    )
    if n_hold >= len(speakers):
        raise DatasetError(
            f"{root}: holding out {n_hold} of {len(speakers)} speakers leaves none to train on;"
            f" lower --holdout-speakers."
        )
    order = np.random.default_rng(seed).permutation(len(speakers))
    chosen = [speakers[i] for i in order[:n_hold]]
    return set(chosen[(n_hold + 1) // 2 :]), set(chosen[: (n_hold + 1) // 2])


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {
        line.strip().replace("\\", "/")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }


@dataclass
class FeatureSet:
    """Features and labels for a list of utterances; rows that failed to load are dropped."""

    features: torch.Tensor  # (N, 1, F, T) float32
    labels: torch.Tensor  # (N,) int64
    speakers: list[str]
    splits: list[Split]
    paths: list[str]
    label_names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    encoded: int = 0
    """Clips run through the front end by the load that made this set (cache misses)."""
    cache_hits: int = 0
    """Clips whose features came from the cache."""
    digests: list[bytes] = field(default_factory=list)
    """SHA-256 of each clip's file bytes (its identity for per-clip privacy accounting)."""

    def subset(self, idx: np.ndarray | list[int]) -> FeatureSet:
        """Rows ``idx`` as a new FeatureSet (shares no storage with the original)."""
        ix = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return FeatureSet(
            self.features[ix].clone(),
            self.labels[ix].clone(),
            [self.speakers[i] for i in ix.tolist()],
            [self.splits[i] for i in ix.tolist()],
            [self.paths[i] for i in ix.tolist()],
            self.label_names,
            {},
            digests=[self.digests[i] for i in ix.tolist()] if self.digests else [],
        )

    @staticmethod
    def concat(parts: list[FeatureSet]) -> FeatureSet:
        """Rows of ``parts`` in order (they must share the label list)."""
        names = parts[0].label_names
        if any(p.label_names != names for p in parts):
            raise DatasetError("cannot join feature sets with different label lists")
        return FeatureSet(
            torch.cat([p.features for p in parts]),
            torch.cat([p.labels for p in parts]),
            [s for p in parts for s in p.speakers],
            [s for p in parts for s in p.splits],
            [s for p in parts for s in p.paths],
            names,
            {},
            digests=[d for p in parts for d in p.digests],
        )

    def split(self, which: Split) -> FeatureSet:
        """Rows in the given split."""
        return self.subset([i for i, s in enumerate(self.splits) if s == which])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_features(
    scan: ScanResult,
    cfg: FeatureConfig,
    cache_dir: str | Path | None = None,
    batch: int = 256,
    threads: int = 1,
) -> FeatureSet:
    """Decode and featurise every utterance; clips already in the feature cache are not
    decoded or encoded again (the cache is keyed by file content and front end, see
    :mod:`feature_store`). ``FeatureSet.encoded`` / ``cache_hits`` say which was which."""
    frontend = make_frontend(cfg, threads)
    ident = frontend_identity(cfg)
    store = open_store(Path(cache_dir) if cache_dir else default_cache_dir())
    digests, skipped = _digests(scan, store)
    known = [d for d in digests if d is not None]
    cached = store.get_many(ident, known) if store is not None else {}
    new = _encode_missing(scan, digests, cached, frontend, cfg, batch)
    if store is not None:
        try:
            store.put_many(ident, new.items())
        except sqlite3.Error as exc:  # a full disk or locked cache only costs a re-encode later
            log.warning("could not write the feature cache", error=str(exc))
        store.close()

    kept: list[Utterance] = []
    kept_digests: list[bytes] = []
    rows: list[np.ndarray] = []
    hits = 0
    for utt, digest in zip(scan.utterances, digests, strict=True):
        if digest is None:
            continue
        entry = cached.get(digest)
        hits += entry is not None
        entry = new[digest] if entry is None else entry
        if isinstance(entry, str):
            skipped[str(utt.path)] = _reason_for(utt.path, entry)
            continue
        kept.append(utt)
        kept_digests.append(digest)
        rows.append(entry)
    if skipped:
        for path, reason in list(skipped.items())[:5]:
            log.warning("skipping unreadable audio file", file=path, reason=reason)
        log.warning("skipped unreadable audio files", count=len(skipped), root=str(scan.root))
    shape = (0, 1, frontend.n_features, frontend.n_frames)
    features = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(shape)
    fs = _feature_set(features.contiguous(), kept, scan, skipped)
    fs.encoded = sum(1 for v in new.values() if not isinstance(v, str))
    fs.cache_hits = hits
    fs.digests = kept_digests
    return fs


def _digests(
    scan: ScanResult, store: FeatureStore | None = None
) -> tuple[list[bytes | None], dict[str, str]]:
    """SHA-256 of every file's bytes (None, and a reason, for files that cannot be read).
    Files whose stat fingerprint the store has seen before are not read again."""
    prints: dict[str, str] = {}
    for utt in scan.utterances:
        with contextlib.suppress(OSError):  # unreadable: read below, which reports why
            prints[str(utt.path.absolute())] = fingerprint(utt.path.stat())
    known = store.known_digests(prints) if store is not None else {}
    digests: list[bytes | None] = []
    skipped: dict[str, str] = {}
    fresh: list[tuple[str, str, bytes]] = []
    for utt in scan.utterances:
        key = str(utt.path.absolute())
        if (hit := known.get(key)) is not None:
            digests.append(hit)
            continue
        try:
            digest = hashlib.sha256(utt.path.read_bytes()).digest()
        except OSError as exc:
            digests.append(None)
            skipped[str(utt.path)] = f"{utt.path}: cannot read ({exc})"
            continue
        digests.append(digest)
        if key in prints:
            fresh.append((key, prints[key], digest))
    if store is not None:
        try:
            store.remember_digests(fresh)
        except sqlite3.Error as exc:
            log.warning("could not write the file digest index", error=str(exc))
    return digests, skipped


def _encode_missing(
    scan: ScanResult,
    digests: list[bytes | None],
    cached: dict[bytes, np.ndarray | str],
    frontend: Frontend,
    cfg: FeatureConfig,
    batch: int,
) -> dict[bytes, np.ndarray | str]:
    """Features (or the decode error) of every clip not in ``cached``, each content once."""
    new: dict[bytes, np.ndarray | str] = {}
    pending: list[tuple[bytes, np.ndarray]] = []

    def flush() -> None:
        feats = frontend(torch.from_numpy(np.stack([w for _, w in pending]))).numpy()
        for (digest, _), f in zip(pending, feats, strict=True):
            new[digest] = f
        pending.clear()

    for utt, digest in zip(scan.utterances, digests, strict=True):
        if digest is None or digest in cached or digest in new:
            continue
        try:
            wave = load_clip(utt.path, cfg.sample_rate, cfg.clip_seconds, frontend.center)
        except AudioError as exc:
            new[digest] = str(exc)
            continue
        pending.append((digest, wave))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return new


def _reason_for(path: Path, reason: str) -> str:
    """A cached error names the file it was first seen in; name this one."""
    first, sep, rest = reason.partition(": ")
    return f"{path}: {rest}" if sep and first.endswith(tuple(AUDIO_EXTENSIONS)) else reason


def _feature_set(
    features: torch.Tensor, kept: list[Utterance], scan: ScanResult, skipped: dict[str, str]
) -> FeatureSet:
    """Features (decoded or cached) plus the metadata of the utterances they belong to."""
    label_index = {name: i for i, name in enumerate(scan.labels)}
    return FeatureSet(
        features=features,
        labels=torch.tensor([label_index[u.label] for u in kept], dtype=torch.int64),
        speakers=[u.speaker for u in kept],
        splits=[u.split for u in kept],
        paths=[str(u.path) for u in kept],
        label_names=scan.labels,
        skipped=skipped,
    )


def class_counts(fs: FeatureSet) -> dict[str, int]:
    """Examples per label name (for reports)."""
    counts = Counter(fs.labels.tolist())
    return {name: counts.get(i, 0) for i, name in enumerate(fs.label_names)}
