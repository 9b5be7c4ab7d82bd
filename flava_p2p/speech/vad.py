"""Voice activity: where the utterances are in a stream of audio (Silero VAD, shipped ONNX).

:class:`SileroVad` scores 32 ms chunks (512 samples at 16 kHz) with the recurrent Silero model;
:class:`UtteranceSplitter` turns those scores into utterances as audio streams in: speech starts
when a chunk scores above ``threshold``, ends after ``min_silence_ms`` below ``threshold − 0.15``
(hysteresis, so a word's quiet consonant does not split it), and is kept if it lasted at least
``min_speech_ms``; ``pad_ms`` of audio either side is included. It works the same on a
microphone, a WAV file played in real time, or a file read at once: tests feed it WAV streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from flava_p2p.speech.encoder import read_pretrained

FILENAME = "silero_vad_16k.onnx"
SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
SIZE = 1_289_603
SAMPLE_RATE = 16000
CHUNK = 512
_CONTEXT = 64


class SileroVad:
    """Speech probability of consecutive 512-sample chunks; keeps its recurrent state."""

    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        blob = read_pretrained(FILENAME, SHA256, SIZE, "Silero VAD")
        self.session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (a new stream starts)."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, _CONTEXT), np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        """The probability that this 512-sample chunk is speech."""
        x = np.asarray(chunk, np.float32).reshape(1, CHUNK)
        inp = np.concatenate([self._context, x], axis=1)
        out, self._state = self.session.run(
            None, {"input": inp, "state": self._state, "sr": np.array(SAMPLE_RATE, np.int64)}
        )
        self._context = inp[:, -_CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech found in the stream."""

    start_s: float
    end_s: float
    wave: np.ndarray


class UtteranceSplitter:
    """Cut a 16 kHz stream into utterances as it arrives (see the module docstring)."""

    def __init__(
        self,
        vad: SileroVad | None = None,
        *,
        threshold: float = 0.5,
        min_speech_ms: float = 200.0,
        min_silence_ms: float = 250.0,
        pad_ms: float = 100.0,
        max_speech_s: float = 8.0,
    ) -> None:
        self.vad = vad or SileroVad()
        self.threshold = threshold
        self.min_speech = int(min_speech_ms / 1000 * SAMPLE_RATE)
        self.min_silence = int(min_silence_ms / 1000 * SAMPLE_RATE)
        self.pad = int(pad_ms / 1000 * SAMPLE_RATE)
        self.max_speech = int(max_speech_s * SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)  # samples not yet scored (< one chunk)
        self._audio = np.zeros(0, np.float32)  # everything scored, trimmed behind us
        self._offset = 0  # stream position of self._audio[0]
        self._pos = 0  # stream position of the next chunk to score
        self._start: int | None = None
        self._silent_since: int | None = None

    def feed(self, samples: np.ndarray) -> Iterator[Utterance]:
        """Add audio; yield every utterance that ended within it."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        while len(self._pending) >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            self._audio = np.concatenate([self._audio, chunk])
            p = self.vad(chunk)
            at = self._pos
            self._pos += CHUNK
            done = self._step(p, at)
            if done is not None:
                yield done
            self._trim()

    def flush(self) -> Iterator[Utterance]:
        """End of stream: the utterance still open, if long enough."""
        if self._start is not None:
            done = self._cut(self._start, self._pos)
            self._start = None
            if done is not None:
                yield done

    def _step(self, p: float, at: int) -> Utterance | None:
        if self._start is None:
            if p >= self.threshold:
                self._start, self._silent_since = at, None
            return None
        if p >= self.threshold - 0.15:
            self._silent_since = None
        elif self._silent_since is None:
            self._silent_since = at
        end = None
        if self._silent_since is not None and self._pos - self._silent_since >= self.min_silence:
            end = self._silent_since
        elif self._pos - self._start >= self.max_speech:
            end = self._pos  # a run-on stream: cut it so recognition keeps up
        if end is None:
            return None
        start, self._start, self._silent_since = self._start, None, None
        return self._cut(start, end)

    def _cut(self, start: int, end: int) -> Utterance | None:
        if end - start < self.min_speech:
            return None
        lo = max(start - self.pad, self._offset)
        hi = min(end + self.pad, self._offset + len(self._audio))
        wave = self._audio[lo - self._offset : hi - self._offset].copy()
        return Utterance(lo / SAMPLE_RATE, hi / SAMPLE_RATE, wave)

    def _trim(self) -> None:
        """Drop audio no utterance can reach any more (bounded memory on endless streams)."""
        keep_from = (self._start if self._start is not None else self._pos) - self.pad - CHUNK
        drop = keep_from - self._offset
        if drop > 0:
            self._audio = self._audio[drop:]
            self._offset += drop


def split_utterances(wave: np.ndarray, **kwargs: float) -> list[Utterance]:
    """Every utterance of a whole 16 kHz recording (fed in 100 ms blocks, as a stream)."""
    splitter = UtteranceSplitter(**kwargs)  # type: ignore[arg-type]
    found: list[Utterance] = []
    for i in range(0, len(wave), 1600):
        found.extend(splitter.feed(wave[i : i + 1600]))
    found.extend(splitter.flush())
    return found
