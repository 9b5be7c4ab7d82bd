"""Speech Commands layout loader: scan, split by list files or held-out speakers, featurise, cache.

Layout: ``<root>/<label>/<speaker>_nohash_<n>.(wav|flac)``; ``_background_noise_/`` is noise, not a
label; ``validation_list.txt`` / ``testing_list.txt`` list held-out files relative to the root.
Labels may be any UTF-8 folder name. Files that cannot be decoded are skipped, counted and named
in a warning — never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import structlog
import torch

from flava_p2p.config import FeatureConfig
from flava_p2p.errors import FlavaError
from flava_p2p.learning.audio import AUDIO_EXTENSIONS, AudioError, load_clip
from flava_p2p.learning.features import FeatureExtractor

log = structlog.get_logger(__name__)

Split = Literal["train", "validation", "test"]
BACKGROUND_DIR = "_background_noise_"
_SPEAKER_RE = re.compile(r"^(?P<speaker>.+?)_nohash_(?P<n>\d+)$")
CACHE_VERSION = 1


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


def scan_corpus(root: str | Path, holdout_speakers: float = 0.0, seed: int = 0) -> ScanResult:
    """Find every audio file and assign it a label, speaker and split.

    With list files, they decide the split. Without them, a ``holdout_speakers`` fraction of
    speakers (seeded choice) is split evenly into validation and test; 0 means all train.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: data directory not found. Point --data at a folder in the Speech Commands "
            f"layout (<root>/<label>/<speaker>_nohash_<n>.wav), or make one with "
            f"`flava-sim dataset synth --out {root}`."
        )
    labels = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name != BACKGROUND_DIR and not d.name.startswith(".")
    )
    if not labels:
        raise DatasetError(f"{root}: no label folders found (expected <root>/<label>/*.wav).")
    val_list = _read_list(root / "validation_list.txt")
    test_list = _read_list(root / "testing_list.txt")
    has_lists = bool(val_list or test_list)

    found: list[tuple[Path, str, str, str]] = []
    for label in labels:
        for path in sorted((root / label).iterdir()):
            if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
                continue
            m = _SPEAKER_RE.match(path.stem)
            speaker = m.group("speaker") if m else path.stem
            found.append((path, label, speaker, f"{label}/{path.name}"))
    if not found:
        raise DatasetError(f"{root}: label folders contain no .wav or .flac files.")

    held_val: set[str] = set()
    held_test: set[str] = set()
    if not has_lists and holdout_speakers > 0:
        speakers = sorted({f[2] for f in found})
        n_hold = max(2, round(holdout_speakers * len(speakers)))
        if n_hold >= len(speakers):
            raise DatasetError(
                f"{root}: holding out {n_hold} of {len(speakers)} speakers leaves none to train on;"
                f" lower --holdout-speakers."
            )
        order = np.random.default_rng(seed).permutation(len(speakers))
        chosen = [speakers[i] for i in order[:n_hold]]
        held_test = set(chosen[: (n_hold + 1) // 2])
        held_val = set(chosen[(n_hold + 1) // 2 :])

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
    return ScanResult(root, utterances, labels, background, has_lists)


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
) -> FeatureSet:
    """Decode and featurise every utterance, reusing a cache keyed on files + feature settings."""
    key = _cache_key(scan, cfg)
    cache = Path(cache_dir) if cache_dir else scan.root / ".flava_cache"
    cache_file = cache / f"features-{key}.npz"
    if cache_file.is_file():
        try:
            return _read_cache(cache_file, scan)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "feature cache unreadable; rebuilding", file=str(cache_file), error=str(exc)
            )

    extractor = FeatureExtractor(cfg)
    n_samples = round(cfg.sample_rate * cfg.clip_seconds)
    kept: list[Utterance] = []
    skipped: dict[str, str] = {}
    feats: list[torch.Tensor] = []
    waves: list[np.ndarray] = []
    for utt in scan.utterances:
        try:
            waves.append(load_clip(utt.path, cfg.sample_rate, cfg.clip_seconds))
            kept.append(utt)
        except AudioError as exc:
            skipped[str(utt.path)] = str(exc)
            log.warning("skipping unreadable audio file", file=str(utt.path), reason=str(exc))
        if len(waves) == batch:
            feats.append(extractor(torch.from_numpy(np.stack(waves))))
            waves = []
    if waves:
        feats.append(extractor(torch.from_numpy(np.stack(waves))))
    if skipped:
        log.warning("skipped unreadable audio files", count=len(skipped), root=str(scan.root))
    features = (
        torch.cat(feats) if feats else torch.zeros((0, 1, extractor.n_features, extractor.n_frames))
    )
    assert features.shape[-1] == extractor.n_frames or n_samples == 0
    fs = _feature_set(features.contiguous(), kept, scan, skipped)
    _write_cache(cache_file, fs, scan.root)
    return fs


def _cache_key(scan: ScanResult, cfg: FeatureConfig) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"v": CACHE_VERSION, "features": cfg.model_dump(mode="json")}, sort_keys=True
        ).encode()
    )
    for u in scan.utterances:
        st = u.path.stat()
        h.update(f"{u.path.relative_to(scan.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _write_cache(path: Path, fs: FeatureSet, root: Path) -> None:
    """Atomic write; plain numeric and unicode arrays only, so reading needs no unpickling."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Per-process temp name: parallel runs (sweeps, two centralized seeds) share the cache.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        rel = np.array([str(Path(p).relative_to(root)) for p in fs.paths], dtype=np.str_)
        skipped = np.array([str(Path(p).relative_to(root)) for p in fs.skipped], dtype=np.str_)
        np.savez(tmp, features=fs.features.numpy(), paths=rel, skipped=skipped)
        tmp.replace(path)
    except OSError as exc:  # a read-only data dir just means no cache
        log.warning("could not write feature cache", file=str(path), error=str(exc))


def _read_cache(path: Path, scan: ScanResult) -> FeatureSet:
    with np.load(path, allow_pickle=False) as data:
        rel = [str(p) for p in data["paths"]]
        features = torch.from_numpy(np.array(data["features"], dtype=np.float32))
        skipped_rel = [str(p) for p in data["skipped"]]
    by_rel = {str(u.path.relative_to(scan.root)): u for u in scan.utterances}
    kept = [by_rel[r] for r in rel]
    skipped = {str(scan.root / r): "unreadable (cached decision)" for r in skipped_rel}
    if skipped:
        log.warning("skipped unreadable audio files", count=len(skipped), root=str(scan.root))
    return _feature_set(features, kept, scan, skipped)


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
