"""Who is speaking: a frozen, pretrained speaker encoder and cosine verification.

The encoder is the GE2E network of Resemblyzer 0.1.4 (Apache-2.0; Wan et al., "Generalized
End-to-End Loss for Speaker Verification", 2018): a 3-layer LSTM over 40-band mel power frames
(25 ms windows, 10 ms hop, 16 kHz) whose last hidden state is projected to a 256-dimensional,
L2-normalised voice embedding. Its weights ship in this package as plain float32 arrays
(``speaker_ge2e.npz``, converted from the wheel's ``pretrained.pt`` by
``scripts/vendor_pretrained.py``; hash-pinned here, loaded without pickle). The corpus it was
trained on is not stated precisely by its authors (VoxCeleb and LibriSpeech, per its README).

Verification compares two embeddings by cosine similarity. The decision threshold is
calibrated once on a public corpus (RAVDESS's 24 actors: the equal-error-rate point, see
``scripts/eval_speakers.py``) and can be overridden per node.

Like the keyword encoder it is frozen: nothing a node learns changes it, and it never leaves the
device's own clips.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import nn

from flava_p2p.speech.audio import resample
from flava_p2p.speech.encoder import read_pretrained

FILENAME = "speaker_ge2e.npz"
SHA256 = "88c9f45e91ab8e672a55c2d54bc072a05f7b37b1729a7d73b1db4839d706e863"
SIZE = 5_698_730
SAMPLE_RATE = 16000
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial utterance, as the network was trained
DIM = 256
#: Cosine score at the equal-error rate on RAVDESS (24 actors, 60 clips each; a 5-clip enrolment
#: against single clips, 34,440 trials):
#: `python scripts/eval_speakers.py --calibrate data/ravdess` (see docs/benchmarks.md).
DEFAULT_THRESHOLD = 0.8166
_TARGET_DBFS = -30.0


class _GE2E(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        out: torch.Tensor = raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return out


@dataclass(frozen=True)
class Verdict:
    """One verification: the cosine score, the threshold it was held against, the decision."""

    score: float
    threshold: float

    @property
    def same_speaker(self) -> bool:
        """Whether the score reaches the threshold."""
        return self.score >= self.threshold


class SpeakerEncoder:
    """Voice embeddings of mono clips (any rate; resampled to 16 kHz).

    Thread-safe: one lock around the network, because requests arrive from worker threads."""

    def __init__(self, threads: int = 1) -> None:
        blob = read_pretrained(FILENAME, SHA256, SIZE, "GE2E speaker encoder")
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            state = {k.replace("__", "."): torch.from_numpy(arrays[k]) for k in arrays.files}
        self.net = _GE2E()
        self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("sim")})
        self.net.train(False)
        # librosa's defaults, which the network was trained with: Slaney mel scale and norm.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=400,
            hop_length=160,
            n_mels=N_MELS,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
            pad_mode="constant",
        )
        self.threads = threads
        self._lock = threading.Lock()

    @torch.no_grad()
    def embed(self, wave: np.ndarray, rate: int) -> np.ndarray:
        """The L2-normalised 256-d embedding of one utterance (mean of 1.6 s partials)."""
        x = np.asarray(wave, dtype=np.float32).reshape(-1)
        if rate != SAMPLE_RATE:
            x = resample(x, rate, SAMPLE_RATE)
        x = _normalize_volume(x)
        frames = self.mel(torch.from_numpy(x)).T  # (n_frames, 40)
        partials = _partials(frames)
        with self._lock:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                partial_embeds = self.net(partials)
            finally:
                torch.set_num_threads(previous)
        mean = partial_embeds.mean(0)
        out: np.ndarray = (mean / mean.norm().clamp_min(1e-12)).numpy().astype(np.float32)
        return out

    def embed_many(self, waves: list[np.ndarray], rate: int) -> np.ndarray:
        """One embedding per clip, stacked ``(n, 256)``; an enrolment is their normalised mean."""
        if not waves:
            return np.zeros((0, DIM), np.float32)
        return np.stack([self.embed(w, rate) for w in waves])


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean of several embeddings (a speaker's enrolment)."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(0)
    out: np.ndarray = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / max(na * nb, 1e-12))


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(EER, threshold at the EER) of trial ``scores`` with ``same`` marking target trials."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise ValueError("EER needs both target and non-target trials")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], same[order]
    # Accept everything scoring >= s[i]: false accepts among non-targets, misses among targets.
    far = np.cumsum(~t) / (~t).sum()
    frr = 1.0 - np.cumsum(t) / t.sum()
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(s[i])


def _normalize_volume(x: np.ndarray) -> np.ndarray:
    """Raise quiet clips to −30 dBFS (never lower loud ones), as the encoder was trained."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms <= 1e-9:
        return x
    change_db = _TARGET_DBFS - 20 * np.log10(rms)
    return x * np.float32(10 ** (change_db / 20)) if change_db > 0 else x


def _partials(frames: torch.Tensor, rate: float = 1.3, min_coverage: float = 0.75) -> torch.Tensor:
    """Overlapping 160-frame windows over the utterance, zero-padded (as Resemblyzer slices)."""
    n = frames.shape[0]
    step = max(1, round((SAMPLE_RATE / rate) / 160))
    starts = list(range(0, max(1, n - PARTIAL_FRAMES + step + 1), step))
    if len(starts) > 1 and (n - starts[-1]) / PARTIAL_FRAMES < min_coverage:
        starts.pop()
    pad = max(0, starts[-1] + PARTIAL_FRAMES - n)
    padded = torch.nn.functional.pad(frames, (0, 0, 0, pad))
    return torch.stack([padded[s : s + PARTIAL_FRAMES] for s in starts])
