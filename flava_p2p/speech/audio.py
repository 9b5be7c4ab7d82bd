"""Audio file I/O: any common rate, mono or stereo, WAV or FLAC → fixed-length float32 mono.

soundfile (libsndfile) decodes; torchaudio resamples. Nothing here trusts the file: a corrupt,
empty or non-audio file raises :class:`AudioError` naming it, never anything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
import torchaudio.functional as taf

from flava_p2p.errors import FlavaError

Waveform = npt.NDArray[np.float32]

#: File extensions the loader treats as audio (decoded by libsndfile).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac"})

#: Longest file we are willing to decode, seconds (a keyword clip is ~1 s; this bounds memory).
MAX_FILE_SECONDS = 120.0


class AudioError(FlavaError):
    """A file could not be used as audio; the message names the file and the reason."""


def read_audio(path: str | Path) -> tuple[Waveform, int]:
    """Decode ``path`` to mono float32 in [-1, 1] and return it with its sample rate."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise AudioError(f"{path}: empty file (0 bytes); expected WAV or FLAC audio.")
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise AudioError(
            f"{path}: not a readable audio file ({_short(exc)}); expected WAV or FLAC."
        ) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: audio file is empty (0 samples).")
    if info.frames / info.samplerate > MAX_FILE_SECONDS:
        raise AudioError(
            f"{path}: {info.frames / info.samplerate:.0f} s long; keyword clips must be under "
            f"{MAX_FILE_SECONDS:.0f} s. Cut it into utterances first."
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: audio data is corrupt ({_short(exc)}).") from None
    if data.size == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples).")
    mono = data.mean(axis=1, dtype=np.float32)  # stereo/multichannel → mono downmix
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples.")
    return mono, int(rate)


def resample(wave: Waveform, orig_rate: int, new_rate: int) -> Waveform:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    if orig_rate == new_rate:
        return wave
    out = taf.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_rate, new_rate)
    result: Waveform = out.numpy().astype(np.float32, copy=False)
    return result


def fix_length(wave: Waveform, n_samples: int, center: bool = False) -> Waveform:
    """Zero-pad (at the end, or on both sides with ``center``) or trim centred on the loudest
    region, to exactly ``n_samples``."""
    if len(wave) == n_samples:
        return wave
    if len(wave) < n_samples:
        pad = n_samples - len(wave)
        before = pad // 2 if center else 0
        return np.pad(wave, (before, pad - before)).astype(np.float32, copy=False)
    # Keep the window with the most energy so a keyword in a long clip is not cut away.
    energy = np.cumsum(np.concatenate([[0.0], wave.astype(np.float64) ** 2]))
    window = energy[n_samples:] - energy[:-n_samples]
    start = int(np.argmax(window))
    return wave[start : start + n_samples]


def load_clip(
    path: str | Path, sample_rate: int = 16000, seconds: float = 1.0, center: bool = False
) -> Waveform:
    """Read any supported file as a mono clip of exactly ``seconds`` at ``sample_rate``
    (shorter clips padded at the end, or centred with ``center``)."""
    wave, rate = read_audio(path)
    wave = resample(wave, rate, sample_rate)
    return fix_length(wave, round(sample_rate * seconds), center)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
