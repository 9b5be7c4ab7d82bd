"""Audio sent to a node's local API: validated bytes → one mono clip, or a precise 4xx error.

The node's recognition endpoint takes clips from apps on the device. Nothing here trusts the
bytes: every way they can be unusable maps to an HTTP status and a message that says what was
wrong and how to send it instead, and nothing raises anything but :class:`UploadError`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from flava_p2p.errors import FlavaError
from flava_p2p.speech.audio import Waveform, resample

#: Containers accepted (libsndfile's names): PCM/float WAV, WAVE_FORMAT_EXTENSIBLE, FLAC.
FORMATS = frozenset({"WAV", "WAVEX", "FLAC"})


class UploadError(FlavaError):
    """An unusable upload: ``status`` is the HTTP status to answer with, ``reason`` a short
    machine-readable code, the message says what to change."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UploadLimits:
    """What the endpoint accepts."""

    max_bytes: int = 4 << 20
    max_seconds: float = 10.0
    rates: tuple[int, ...] = (8000, 16000)
    resample_other_rates: bool = True
    """Resample clips at other rates (44.1 kHz from a phone) instead of refusing them."""


@dataclass(frozen=True)
class Upload:
    """A decoded clip at the model's rate, and what it was."""

    wave: Waveform
    source_rate: int
    seconds: float
    format: str


def decode_upload(data: bytes, target_rate: int, limits: UploadLimits) -> Upload:
    """Validate and decode one uploaded clip to mono float32 at ``target_rate``."""
    if not data:
        raise UploadError(400, "empty", "empty request body: send a WAV or FLAC clip.")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413,
            "too_large",
            f"{len(data)} bytes; the limit is {limits.max_bytes} (api.max_upload_bytes).",
        )
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise UploadError(
            415, "not_audio", f"not a readable audio file ({_short(exc)}); send WAV or FLAC."
        ) from None
    if info.format not in FORMATS:
        raise UploadError(
            415, "unsupported_format", f"{info.format} audio is not accepted; send WAV or FLAC."
        )
    if info.channels != 1:
        raise UploadError(
            422,
            "not_mono",
            f"{info.channels} channels; send one channel (mono), e.g. `sox in.wav -c 1 out.wav`.",
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise UploadError(400, "no_samples", "the audio holds no samples.")
    seconds = info.frames / info.samplerate
    if seconds > limits.max_seconds:
        raise UploadError(
            413,
            "too_long",
            f"{seconds:.1f} s; clips must be at most {limits.max_seconds:g} s "
            "(api.max_clip_seconds). Send one utterance.",
        )
    rate = int(info.samplerate)
    if rate not in limits.rates and not limits.resample_other_rates:
        accepted = " or ".join(f"{r // 1000} kHz" for r in limits.rates)
        raise UploadError(
            422, "sample_rate", f"{rate} Hz audio; send {accepted} (or enable api.resample)."
        )
    try:
        wave, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise UploadError(400, "corrupt", f"the audio data is corrupt ({_short(exc)}).") from None
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0:
        raise UploadError(400, "no_samples", "the audio holds no samples.")
    if not np.all(np.isfinite(wave)):
        raise UploadError(400, "not_finite", "the audio contains NaN or infinite samples.")
    return Upload(resample(wave, rate, target_rate), rate, seconds, str(info.format))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
