"""Voice activity and the device CLI verbs without a microphone: real espeak-ng speech streamed
from WAV files through the packaged Silero VAD, a real trained checkpoint, the real speaker
encoder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from test_api_recognize import node

from flava_p2p.cli.node import main as node_main
from flava_p2p.speech.audio import read_audio, resample
from flava_p2p.speech.synth import Speaker, voice
from flava_p2p.speech.vad import UtteranceSplitter, split_utterances

__all__ = ["node"]  # the module-scoped trained head of test_api_recognize

ALICE = Speaker("alice", "en", "f3", 80, 150)
BOB = Speaker("bob", "en-us", "m3", 20, 150)


def stream_of(clips: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Clips separated by 0.5–1.1 s of faint noise; returns the stream and where each clip is."""
    rng = np.random.default_rng(seed)
    parts, where, t = [], [], 0
    for clip in clips:
        gap = np.zeros(int(16000 * rng.uniform(0.5, 1.1)), np.float32)
        parts += [gap, clip]
        where.append((t + len(gap), t + len(gap) + len(clip)))
        t += len(gap) + len(clip)
    parts.append(np.zeros(8000, np.float32))
    wave = np.concatenate(parts)
    return wave + 0.003 * rng.standard_normal(len(wave)).astype(np.float32), where


@pytest.fixture(scope="module")
def words() -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as work:
        return [voice(w, ALICE, 80, 150, work) for w in ("yes", "no", "stop", "go", "left", "up")]


class TestVad:
    def test_one_utterance_per_word_wherever_the_blocks_fall(self, words: list[np.ndarray]) -> None:
        wave, where = stream_of(words)
        found = split_utterances(wave)
        assert len(found) == len(words)
        for utt, (lo, hi) in zip(found, where, strict=True):
            assert utt.start_s <= lo / 16000 + 0.05 and utt.end_s >= hi / 16000 - 0.05
            assert utt.end_s - utt.start_s < (hi - lo) / 16000 + 0.5
        # The same stream in odd-sized blocks gives the same cuts (streaming is exact).
        splitter = UtteranceSplitter()
        again = []
        rng = np.random.default_rng(3)
        i = 0
        while i < len(wave):
            n = int(rng.integers(1, 5000))
            again += list(splitter.feed(wave[i : i + n]))
            i += n
        again += list(splitter.flush())
        assert [(u.start_s, u.end_s) for u in again] == [(u.start_s, u.end_s) for u in found]
        assert all(np.array_equal(a.wave, b.wave) for a, b in zip(again, found, strict=True))

    def test_silence_and_noise_give_nothing_and_memory_stays_bounded(self) -> None:
        rng = np.random.default_rng(0)
        splitter = UtteranceSplitter()
        for _ in range(600):  # a minute of faint noise in 100 ms blocks
            assert not list(splitter.feed(0.003 * rng.standard_normal(1600)))
        assert len(splitter._audio) < 16000  # only the look-back, not the minute
        assert not list(splitter.flush())


@pytest.fixture(scope="module")
def home_with_checkpoint(node: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node home holding only the checkpoint of the head trained on the tiny corpus."""
    home = tmp_path_factory.mktemp("listen_home")
    node.trainer.save(home / "model.ckpt")
    return home


class TestCli:
    def test_listen_to_a_wav_stream_with_the_checkpoint(
        self,
        tiny_corpus: Path,
        home_with_checkpoint: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """No node runs: `listen` says so, falls back to the checkpoint, prints one JSON line
        per spoken word, and most are the word that was said."""
        said: list[str] = []
        clips: list[np.ndarray] = []
        for word in ("yes", "no", "stop", "yes", "no", "stop"):
            path = sorted((tiny_corpus / word).glob("*.wav"))[len(said) % 2]
            wave, rate = read_audio(path)
            said.append(word)
            clips.append(resample(wave, rate, 16000))
        wave, _ = stream_of(clips, seed=1)
        sf.write(tmp_path / "session.wav", wave, 16000)
        args = ["listen", "--wav", str(tmp_path / "session.wav"), "--home"]
        assert node_main([*args, str(home_with_checkpoint), "--json"]) == 0
        out = capsys.readouterr()
        lines = [json.loads(x) for x in out.out.splitlines()]
        assert "checkpoint" in out.err and f"{len(said)} utterances" in out.err
        assert len(lines) == len(said)
        right = sum(x["label"] == w for x, w in zip(lines, said, strict=True))
        assert right >= len(said) // 2, lines

    def test_mic_without_sounddevice_is_a_clear_error(
        self, home_with_checkpoint: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        try:
            import sounddevice  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("sounddevice is installed here: the error path cannot be reached")
        assert node_main(["listen", "--mic", "--home", str(home_with_checkpoint)]) != 0
        assert "sounddevice" in capsys.readouterr().err

    def test_enroll_and_verify_without_a_node(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Offline, the verbs work on the home's enrolment files; exit 0 = same, 3 = not."""
        texts = ["good morning to you", "the train leaves at nine", "call me tomorrow",
                 "this is my voice"]  # fmt: skip
        files = {}
        with tempfile.TemporaryDirectory() as work:
            for sp in (ALICE, BOB):
                for i, text in enumerate(texts):
                    f = tmp_path / f"{sp.id}{i}.wav"
                    sf.write(f, voice(text, sp, sp.pitch, sp.speed, work), 16000)
                    files[sp.id, i] = str(f)
        home = ["--home", str(tmp_path / "home")]
        enrol = [files["alice", i] for i in range(3)]
        assert node_main(["enroll", "alice", *enrol, *home, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["enrolled_clips"] == 3
        assert node_main(["verify", files["bob", 3], "--speaker", "alice", *home]) == 3
        assert "different speaker" in capsys.readouterr().out
        code = node_main(["verify", files["alice", 3], "--speaker", "alice", *home, "--json"])
        same = json.loads(capsys.readouterr().out)
        assert code == (0 if same["same_speaker"] else 3)
        assert node_main(["verify", files["alice", 0], files["bob", 0], *home]) == 3
        assert node_main(["verify", files["bob", 0], "--speaker", "carol", *home]) != 0
        assert "no speaker 'carol' is enrolled" in capsys.readouterr().err
