"""`flava-sim dataset import`: real corpora in three layouts, bad files listed and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flava_p2p.cli.sim import main as sim_main
from flava_p2p.speech.corpus_import import CorpusImportError, detect_layout, import_corpus
from flava_p2p.speech.dataset import scan_corpus


def tone(seconds: float, rate: int, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * hz * t)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


@pytest.fixture
def fsdd_flat(tmp_path: Path) -> Path:
    """FSDD's flat layout with every kind of bad file next to good ones."""
    src = tmp_path / "recordings"
    src.mkdir()
    for digit, speaker, take in [(0, "jackson", 0), (0, "jackson", 1), (7, "theo", 3)]:
        sf.write(src / f"{digit}_{speaker}_{take}.wav", tone(0.4, 8000), 8000, subtype="PCM_16")
    # stereo 44.1 kHz: accepted, downmixed and resampled
    sf.write(src / "3_nicolas_0.wav", tone(0.5, 44100, channels=2), 44100, subtype="PCM_16")
    (src / "4_bob_0.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")  # corrupt
    (src / "5_bob_0.wav").write_bytes(b"")  # empty
    (src / "6_bob_0.wav").write_bytes(b"%PDF-1.4 not audio at all")  # not audio
    (src / "README.txt").write_text("ignored")
    return src


class TestImport:
    def test_fsdd_flat_layout(self, fsdd_flat: Path, tmp_path: Path) -> None:
        """Good files land as <digit word>/<speaker>_nohash_<take>.wav, 16 kHz mono; corrupt,
        empty and non-audio files are listed with their reason and skipped."""
        out = tmp_path / "fsdd"
        report = import_corpus(fsdd_flat, out)
        assert report.layout == "fsdd"
        assert report.clips == 4
        assert report.per_label == {"seven": 1, "three": 1, "zero": 2}
        assert report.per_speaker == {"jackson": 2, "nicolas": 1, "theo": 1}
        assert report.downmixed == 1 and report.resampled == 4
        skipped = {Path(k).name: v for k, v in report.skipped.items()}
        assert set(skipped) == {"4_bob_0.wav", "5_bob_0.wav", "6_bob_0.wav"}
        assert "empty" in skipped["5_bob_0.wav"]
        assert "not a readable audio file" in skipped["6_bob_0.wav"]
        info = sf.info(str(out / "three" / "nicolas_nohash_0.wav"))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == pytest.approx(8000, abs=2)
        assert (out / "seven" / "theo_nohash_3.wav").is_file()
        saved = json.loads((out / "import_report.json").read_text())
        assert saved["clips"] == 4 and len(saved["skipped"]) == 3
        scan = scan_corpus(out)  # the result is a corpus every tool reads
        assert scan.labels == ["seven", "three", "zero"]

    def test_manifest_and_held_out_speakers(self, fsdd_flat: Path, tmp_path: Path) -> None:
        """A CSV manifest (paths relative to it) imports too; rows lacking fields and missing
        files are reported; --test-speakers writes testing_list.txt."""
        csv = tmp_path / "clips.csv"
        csv.write_text(
            "path,label,speaker\n"
            f"{fsdd_flat / '0_jackson_0.wav'},yes,ann\n"
            "recordings/0_jackson_1.wav,yes,ann\n"
            "recordings/7_theo_3.wav,größe,ben\n"
            "recordings/nothing.wav,no,ben\n"
            ",no,ben\n",
            encoding="utf-8",
        )
        out = tmp_path / "mine"
        report = import_corpus(csv, out, test_speakers=["ben"])
        assert report.layout == "manifest" and report.clips == 3
        assert sorted((out / "yes").iterdir()) == [
            out / "yes" / "ann_nohash_0.wav",
            out / "yes" / "ann_nohash_1.wav",
        ]
        assert (out / "testing_list.txt").read_text() == "größe/ben_nohash_0.wav\n"
        assert len(report.skipped) == 2
        scan = scan_corpus(out)
        assert {u.speaker for u in scan.utterances if u.split == "test"} == {"ben"}

    def test_speech_commands_layout_carries_lists(self, tmp_path: Path) -> None:
        """Label folders (FLAC too), background noise and list files are carried over."""
        src = tmp_path / "sc"
        for label in ("go", "stop"):
            (src / label).mkdir(parents=True)
            sf.write(src / label / "a1b2_nohash_0.flac", tone(1.0, 22050), 22050)
            sf.write(src / label / "c3d4_nohash_0.wav", tone(1.0, 16000), 16000)
        (src / "_background_noise_").mkdir()
        sf.write(src / "_background_noise_" / "hum.wav", tone(3.0, 16000, hz=50), 16000)
        (src / "testing_list.txt").write_text("go/a1b2_nohash_0.flac\n")
        out = tmp_path / "out"
        report = import_corpus(src, out)
        assert report.layout == "speech_commands" and report.clips == 4
        assert report.background == 1
        assert (out / "testing_list.txt").read_text() == "go/a1b2_nohash_0.wav\n"
        assert (out / "_background_noise_" / "hum.wav").is_file()

    def test_unusable_sources_are_clear_errors(self, tmp_path: Path) -> None:
        """A missing source or a folder of nothing says what layout was expected."""
        with pytest.raises(CorpusImportError, match="no such file"):
            detect_layout(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        with pytest.raises(CorpusImportError, match="cannot tell the layout"):
            import_corpus(tmp_path / "empty", tmp_path / "o")
        bad = tmp_path / "bad.csv"
        bad.write_text("file,class\nx.wav,a\n")
        with pytest.raises(CorpusImportError, match="path,label,speaker"):
            import_corpus(bad, tmp_path / "o")

    def test_cli_prints_counts_and_skips(
        self, fsdd_flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The CLI prints per-label and per-speaker counts and each skipped file's reason."""
        code = sim_main(["dataset", "import", str(fsdd_flat), "--out", str(tmp_path / "o")])
        out = capsys.readouterr().out
        assert code == 0
        assert "imported 4 clips" in out and "zero 2" in out and "jackson 2" in out
        assert "skipped 3 file(s)" in out and "empty file" in out
        code = sim_main(["dataset", "import", str(tmp_path / "nope"), "--out", "x"])
        assert code == 2


def test_a_missing_real_corpus_is_an_error_not_synthesised(tmp_path: Path) -> None:
    """A scenario on real speech (data.synthesize: false) whose corpus was never imported
    stops with the import command, and writes nothing there (no espeak stand-in)."""
    from flava_p2p.errors import FlavaError
    from flava_p2p.sim.real_learners import ensure_corpus

    missing = tmp_path / "fsdd"
    with pytest.raises(FlavaError, match="flava-sim dataset import"):
        ensure_corpus(missing, 0, synthesize=False)
    assert not missing.exists()
    missing.mkdir()
    (missing / "corpus.json").write_text("{}")
    assert ensure_corpus(missing, 0, synthesize=False) == missing  # imported: used as is
