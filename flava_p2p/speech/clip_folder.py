"""A node's own clips as a living set: folders that are rescanned while the node runs.

The owner keeps recording, later features drop confirmed clips into an inbox, files get deleted:
:class:`ClipFolder` rescans its roots (the ``--data`` folder and the node's inbox, both in the
Speech Commands layout) and reports what changed. Only new or modified files are read, hashed
and encoded (through the content-keyed feature cache, so a clip is never encoded twice); files
that cannot be decoded are counted with their reason, never a crash; folders that are not a
label of the task are counted. No I/O besides the file system: the runtime calls :meth:`scan`
from a worker thread.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flava_p2p.config import FeatureConfig
from flava_p2p.speech.dataset import FeatureSet, ScanResult, Utterance, load_features, scan_corpus

_Stamp = tuple[int, int]  # (mtime_ns, size): a file whose stamp changes is read again


@dataclass
class _Clip:
    utt: Utterance
    stamp: _Stamp
    digest: bytes
    features: torch.Tensor  # (1, F, T)


@dataclass(frozen=True)
class FolderChange:
    """What one rescan found."""

    added: int
    removed: int
    rejected: dict[str, str] = field(default_factory=dict)
    """Files seen for the first time (or changed) that could not be used → reason."""

    @property
    def changed(self) -> bool:
        """Whether the set of usable clips differs from the previous scan."""
        return bool(self.added or self.removed)


class ClipFolder:
    """The clips under one or more roots, kept up to date by :meth:`scan`."""

    def __init__(
        self,
        roots: list[Path],
        labels: list[str] | None,
        features: FeatureConfig,
        cache_dir: Path | None = None,
        threads: int = 1,
    ) -> None:
        self.roots = list(roots)
        self.features = features
        self.cache_dir = cache_dir
        self.threads = threads
        self._clips: dict[str, _Clip] = {}
        self._bad: dict[str, tuple[_Stamp, str]] = {}
        #: Fixed at the first scan (or by the task card): a new folder later is not a new label.
        self.labels: list[str] | None = labels
        self.unknown_labels: dict[str, int] = {}
        self.added_since_start = 0
        self.removed_since_start = 0
        self._scans = 0

    # ------------------------------------------------------------------ scanning
    def scan(self) -> FolderChange:
        """Rescan every root; read and encode only new or modified files."""
        found: dict[str, tuple[Utterance, _Stamp]] = {}
        unknown: Counter[str] = Counter()
        for root in self.roots:
            if not root.is_dir():
                continue
            result = scan_corpus(root, labels=self.labels, allow_empty=True)
            if self.labels is None:
                self.labels = result.labels
            unknown.update(result.unknown_labels)
            for utt in result.utterances:
                try:
                    st = utt.path.stat()
                except OSError:
                    continue  # deleted between listing and stat: gone
                found[str(utt.path)] = (utt, (st.st_mtime_ns, st.st_size))
        self.unknown_labels = dict(unknown)
        removed = [p for p in self._clips if p not in found]
        for p in removed:
            del self._clips[p]
        fresh = [
            (utt, stamp)
            for p, (utt, stamp) in found.items()
            if (p not in self._clips or self._clips[p].stamp != stamp)
            and (p not in self._bad or self._bad[p][0] != stamp)
        ]
        self._bad = {p: v for p, v in self._bad.items() if p in found}
        added, rejected = self._load(fresh)
        first = self._scans == 0
        self._scans += 1
        if not first:
            self.added_since_start += added
            self.removed_since_start += len(removed)
        return FolderChange(added, len(removed), rejected)

    def _load(self, fresh: list[tuple[Utterance, _Stamp]]) -> tuple[int, dict[str, str]]:
        if not fresh or self.labels is None:
            return 0, {}
        scan = ScanResult(self.roots[0], [u for u, _ in fresh], self.labels)
        fs = load_features(scan, self.features, cache_dir=self.cache_dir, threads=self.threads)
        stamps = {str(u.path): s for u, s in fresh}
        added = 0
        for i, path in enumerate(fs.paths):
            known = path in self._clips
            self._clips[path] = _Clip(
                Utterance(
                    Path(path), fs.label_names[int(fs.labels[i])], fs.speakers[i], fs.splits[i]
                ),
                stamps[path],
                fs.digests[i],
                fs.features[i],
            )
            added += not known
        for path, reason in fs.skipped.items():
            self._bad[path] = (stamps.get(path, (0, 0)), reason)
        return added, dict(fs.skipped)

    # ------------------------------------------------------------------- views
    def feature_set(self, split: str | None = "train") -> FeatureSet:
        """The usable clips (of one split; None: all) in a stable order (by path)."""
        assert self.labels is not None, "scan() first"
        clips = [c for _, c in sorted(self._clips.items()) if split is None or c.utt.split == split]
        index = {name: i for i, name in enumerate(self.labels)}
        if clips:
            feats = torch.stack([c.features for c in clips])
        else:
            feats = torch.zeros((0, 1, *self._feature_shape))
        return FeatureSet(
            feats,
            torch.tensor([index[c.utt.label] for c in clips], dtype=torch.int64),
            [c.utt.speaker for c in clips],
            [c.utt.split for c in clips],
            [str(c.utt.path) for c in clips],
            list(self.labels),
            {},
            digests=[c.digest for c in clips],
        )

    @functools.cached_property
    def _feature_shape(self) -> tuple[int, int]:
        """(features, frames) of one clip, for an empty set (loads the front end once)."""
        from flava_p2p.speech.features import make_frontend

        fe = make_frontend(self.features, self.threads)
        return fe.n_features, fe.n_frames

    def counts(self, split: str | None = "train") -> dict[str, int]:
        """Usable clips per label (every label of the task, zeros included).

        Safe to call while :meth:`scan` runs on another thread (the node's status endpoint
        does): it iterates a copy taken in one step, never the dict a scan is changing."""
        clips = list(self._clips.values())
        per = Counter(c.utt.label for c in clips if split is None or c.utt.split == split)
        return {name: per.get(name, 0) for name in self.labels or []}

    @property
    def rejected(self) -> dict[str, str]:
        """Files present now that cannot be used, with the reason (a copy, as :meth:`counts`)."""
        return {p: reason for p, (_, reason) in list(self._bad.items())}
