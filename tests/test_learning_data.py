"""Corpus synthesis, loading (with bad files and UTF-8 labels), features and partitioners."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf
import torch
from structlog.testing import capture_logs

from flava_p2p.config import FeatureConfig
from flava_p2p.speech.audio import AudioError, load_clip
from flava_p2p.speech.dataset import DatasetError, load_features, scan_corpus
from flava_p2p.speech.features import center_on_energy
from flava_p2p.speech.partition import (
    PartitionError,
    by_speaker,
    dirichlet,
    fixed_size,
    iid,
    quantity_skewed,
)
from flava_p2p.speech.synth import synthesize_corpus


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".wav", ".txt"}:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


class TestSynth:
    def test_layout_and_speaker_holdout(self, tiny_corpus: Path) -> None:
        """The corpus has label folders, background noise, and list files holding out speakers."""
        labels = sorted(d.name for d in tiny_corpus.iterdir() if d.is_dir())
        assert labels == ["_background_noise_", "_silence_", "_unknown_", "no", "stop", "yes"]
        wav, rate = sf.read(next((tiny_corpus / "yes").glob("*.wav")))
        assert rate == 16000 and len(wav) == 16000 and np.abs(wav).max() > 0.05
        val = (tiny_corpus / "validation_list.txt").read_text().split()
        test = (tiny_corpus / "testing_list.txt").read_text().split()

        def spk(rel: str) -> str:
            return Path(rel).name.split("_nohash_")[0]

        assert val and test
        assert {spk(r) for r in val}.isdisjoint({spk(r) for r in test})

    def test_same_seed_same_bytes(self, tmp_path: Path) -> None:
        """Two runs with one seed write byte-identical corpora; another seed differs."""
        kw = {"n_speakers": 3, "takes": 1, "words": ["go"], "workers": 2}
        a = synthesize_corpus(tmp_path / "a", seed=1, **kw)  # type: ignore[arg-type]
        synthesize_corpus(tmp_path / "b", seed=1, **kw)  # type: ignore[arg-type]
        synthesize_corpus(tmp_path / "c", seed=2, **kw)  # type: ignore[arg-type]
        assert a.clips == 3 * 3
        assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
        assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


class TestLoader:
    @pytest.fixture
    def messy(self, tiny_corpus: Path, tmp_path: Path) -> Path:
        """The tiny corpus plus a corrupt file, an empty file, a UTF-8 label, stereo 8 kHz FLAC."""
        root = tmp_path / "messy"
        shutil.copytree(tiny_corpus, root)
        (root / "yes" / "bad_nohash_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage")
        (root / "no" / "empty_nohash_0.wav").write_bytes(b"")
        label = root / "größe_日本"
        label.mkdir()
        t = np.arange(8000) / 8000
        stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1)
        sf.write(label / "alice_nohash_0.flac", 0.3 * stereo, 8000)
        sf.write(label / "alice_nohash_1.wav", 0.3 * stereo[:4000], 8000)
        return root

    def test_bad_files_skipped_and_counted(self, messy: Path) -> None:
        """Corrupt and empty files are skipped with a warning naming each; the rest loads."""
        scan = scan_corpus(messy)
        with capture_logs() as logs:
            fs = load_features(scan, FeatureConfig(), cache_dir=messy / "cache")
        assert len(fs.skipped) == 2
        assert any("bad_nohash_0.wav" in k for k in fs.skipped)
        assert any("empty_nohash_0.wav" in k for k in fs.skipped)
        named = [e for e in logs if e["event"] == "skipping unreadable audio file"]
        assert len(named) == 2
        assert len(fs) == len(scan.utterances) - 2

    def test_utf8_label_stereo_and_resampling(self, messy: Path) -> None:
        """A UTF-8 label folder is a label; its 8 kHz stereo FLAC/WAV load as 1 s mono 16 kHz."""
        scan = scan_corpus(messy)
        assert "größe_日本" in scan.labels
        fs = load_features(scan, FeatureConfig(), cache_dir=messy / "cache")
        idx = scan.labels.index("größe_日本")
        rows = (fs.labels == idx).nonzero().flatten().tolist()
        assert len(rows) == 2 and {fs.speakers[r] for r in rows} == {"alice"}
        clip = load_clip(messy / "größe_日本" / "alice_nohash_1.wav")
        assert clip.shape == (16000,) and clip.dtype == np.float32

    def test_feature_cache_reused(
        self, messy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second load, even of a copy elsewhere with new mtimes, reads the content-keyed
        cache (no decoding, bad files remembered) and returns identical features."""
        scan = scan_corpus(messy)
        first = load_features(scan, FeatureConfig(), cache_dir=tmp_path / "cache")
        assert first.encoded == len(first) and first.cache_hits == 0

        def no_decoding(*args: object, **kwargs: object) -> None:
            raise AssertionError("decoded audio although the cache is valid")

        monkeypatch.setattr("flava_p2p.speech.dataset.load_clip", no_decoding)
        copy = tmp_path / "copy"
        shutil.copytree(messy, copy)  # new paths, new mtimes, same bytes
        second = load_features(scan_corpus(copy), FeatureConfig(), cache_dir=tmp_path / "cache")
        assert (tmp_path / "cache" / "features.sqlite").is_file()
        assert second.encoded == 0 and second.cache_hits == len(scan.utterances)
        assert [Path(p).relative_to(copy) for p in second.paths] == [
            Path(p).relative_to(messy) for p in first.paths
        ]
        assert (second.features == first.features).all()
        assert len(second.skipped) == 2
        assert all(str(copy) in reason for reason in second.skipped.values())

    def test_splits_follow_lists(self, tiny_corpus: Path) -> None:
        """Files in testing_list.txt are test, whole speakers never straddle splits."""
        scan = scan_corpus(tiny_corpus)
        by_spk: dict[str, set[str]] = {}
        for u in scan.utterances:
            by_spk.setdefault(u.speaker, set()).add(u.split)
        assert all(len(s) == 1 for s in by_spk.values())
        assert {"train", "validation", "test"} == {next(iter(s)) for s in by_spk.values()}

    def test_holdout_fraction_without_lists(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """Without list files, --holdout-speakers holds out whole speakers, seeded."""
        root = tmp_path / "nolists"
        shutil.copytree(tiny_corpus, root, ignore=shutil.ignore_patterns("*.txt"))
        a = scan_corpus(root, holdout_speakers=0.34, seed=3)
        b = scan_corpus(root, holdout_speakers=0.34, seed=3)
        assert [u.split for u in a.utterances] == [u.split for u in b.utterances]
        held = {u.speaker for u in a.utterances if u.split != "train"}
        assert len(held) == 2

    def test_missing_dir_is_clear(self, tmp_path: Path) -> None:
        """A missing data folder names the path and the synth command."""
        with pytest.raises(DatasetError, match="flava-sim dataset synth"):
            scan_corpus(tmp_path / "nope")

    def test_non_audio_is_audio_error(self, tmp_path: Path) -> None:
        """A text file renamed .wav raises AudioError naming the file."""
        f = tmp_path / "x.wav"
        f.write_text("hello")
        with pytest.raises(AudioError, match=r"x\.wav"):
            load_clip(f)


class TestFeatures:
    def test_center_on_energy_undoes_time_shifts(self) -> None:
        """The same word at three offsets comes out identical, with its centroid mid-clip."""
        word = torch.linspace(1.0, 3.0, 6).view(1, 6).expand(8, 6) * torch.arange(1, 9).view(8, 1)
        clips = torch.zeros((3, 1, 8, 51))  # per-clip normalised: background near the mean, 0
        for i, start in enumerate((4, 21, 40)):
            clips[i, 0, :, start : start + 6] = word / 4
        out = center_on_energy(clips)
        assert not torch.equal(clips[0], clips[1])
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        energy = out[0, 0].mean(0)
        assert 22 <= int(energy.argmax()) <= 28  # the word sits around the middle frame (25)
        assert center_on_energy(torch.zeros((0, 1, 8, 51))).shape == (0, 1, 8, 51)


class TestPartitioners:
    speakers: ClassVar[list[str]] = [f"s{i % 7}" for i in range(70)]
    labels = np.array([i % 5 for i in range(70)])

    def _check_cover(self, parts: list[np.ndarray], n: int) -> None:
        allidx = np.concatenate(parts)
        assert sorted(allidx.tolist()) == list(range(n))

    def test_by_speaker(self) -> None:
        """Each speaker's samples go to one part; every sample exactly once; deterministic."""
        parts = by_speaker(self.speakers, n_parts=3, seed=1)
        self._check_cover(parts, 70)
        for p in parts:
            spk = {self.speakers[i] for i in p}
            assert all({self.speakers[i] for i in q}.isdisjoint(spk) for q in parts if q is not p)
        again = by_speaker(self.speakers, n_parts=3, seed=1)
        assert all((a == b).all() for a, b in zip(parts, again, strict=True))
        k2 = by_speaker(self.speakers, speakers_per_part=2, seed=1)
        assert len(k2) == 4
        self._check_cover(k2, 70)

    def test_iid_and_dirichlet(self) -> None:
        """IID and Dirichlet cover every sample once and repeat under the same seed."""

        def by_iid(s: int) -> list[np.ndarray]:
            return iid(70, 4, seed=s)

        def by_dirichlet(s: int) -> list[np.ndarray]:
            return dirichlet(self.labels, 4, 0.3, s)

        for make in (by_iid, by_dirichlet):
            parts = make(5)
            self._check_cover(parts, 70)
            assert all((a == b).all() for a, b in zip(parts, make(5), strict=True))

    def test_dirichlet_skews_labels(self) -> None:
        """Small alpha gives nodes few classes; large alpha gives them most classes."""
        skewed = dirichlet(np.repeat(np.arange(10), 100), 10, 0.05, seed=0, min_size=1)
        flat = dirichlet(np.repeat(np.arange(10), 100), 10, 100.0, seed=0)

        def classes(ps: list[np.ndarray]) -> float:
            return float(np.mean([len(set((p // 100).tolist())) for p in ps]))

        assert classes(skewed) < 5 < classes(flat)

    def test_more_nodes_than_speakers_split_speakers(self) -> None:
        """16 nodes over 7 speakers: every node holds clips of exactly one speaker, each
        speaker spread over 2–3 nodes, every clip exactly once, seeded."""
        parts = by_speaker(self.speakers, n_parts=16, seed=2)
        assert len(parts) == 16
        self._check_cover(parts, 70)
        owners = [{self.speakers[i] for i in p} for p in parts]
        assert all(len(o) == 1 for o in owners)
        per_speaker = Counter(next(iter(o)) for o in owners)
        assert sorted(per_speaker.values()) == [2, 2, 2, 2, 2, 3, 3]
        again = by_speaker(self.speakers, n_parts=16, seed=2)
        assert all((a == b).all() for a, b in zip(parts, again, strict=True))

    def test_fixed_clips_per_node(self) -> None:
        """Shares of exactly k clips, each of one speaker, disjoint, seeded; asking for more
        shares than the speakers hold is a clear error."""
        parts = fixed_size(self.speakers, 12, 4, seed=3)  # 7 speakers × 2 shares of 4 = 14
        assert [len(p) for p in parts] == [4] * 12
        assert all(len({self.speakers[i] for i in p}) == 1 for p in parts)
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == len(flat)
        again = fixed_size(self.speakers, 12, 4, seed=3)
        assert all((a == b).all() for a, b in zip(parts, again, strict=True))
        with pytest.raises(PartitionError, match="only 14 shares"):
            fixed_size(self.speakers, 15, 4)

    def test_quantity_skew(self) -> None:
        """Lognormal sizes: every clip once, every node ≥ 1, skew grows with sigma."""
        flat = quantity_skewed(1000, 20, 0.0, seed=1)
        skewed = quantity_skewed(1000, 20, 1.5, seed=1)
        for parts in (flat, skewed):
            self._check_cover(parts, 1000)
            assert min(len(p) for p in parts) >= 1
        assert max(len(p) for p in flat) - min(len(p) for p in flat) <= 1
        sizes = sorted(len(p) for p in skewed)
        assert sizes[-1] > 4 * sizes[len(sizes) // 2]

    def test_impossible_requests(self) -> None:
        """More nodes than one speaker's clips is a clear PartitionError naming the speaker."""
        with pytest.raises(PartitionError, match="too few for"):
            by_speaker(self.speakers, n_parts=200)
