"""Front ends: clip → feature map, and SpecAugment masking for training.

Two kinds, one interface (:class:`Frontend`): the frozen pretrained speech encoder
(``speech_embedding``: (B, 1, 96, windows) embeddings) and classic log-mel / MFCC features
(torchaudio, (B, 1, bands, frames)) for the models that learn their own front end.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

import numpy as np
import torch
import torchaudio.transforms as tat
from torch import nn

from flava_p2p.config import FeatureConfig
from flava_p2p.speech.encoder import load_encoder

#: Bump when the computation behind a front end changes, so cached features are not reused.
FRONTEND_VERSION = 2


class Frontend(Protocol):
    """Waveforms (B, T) at ``cfg.sample_rate`` → features (B, 1, n_features, n_frames)."""

    cfg: FeatureConfig

    @property
    def n_features(self) -> int:
        """Height of the feature map."""
        ...

    @property
    def n_frames(self) -> int:
        """Width of the feature map for one clip."""
        ...

    @property
    def center(self) -> bool:
        """Whether clips shorter than the window are centred (else padded at the end)."""
        ...

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """Features of a batch of clips."""
        ...


def frontend_identity(cfg: FeatureConfig) -> str:
    """Digest of everything that determines a clip's features: the settings, the encoder's
    pinned hash and :data:`FRONTEND_VERSION`. Keys the feature cache; two equal identities
    give the same features for the same audio."""
    desc = {"v": FRONTEND_VERSION, "features": cfg.model_dump(mode="json")}
    if cfg.kind.startswith("speech_embedding"):
        from flava_p2p.speech.encoder import encoder_spec

        desc["encoder"] = encoder_spec("speech_embedding").identity
    if "egemaps" in cfg.kind:
        from importlib.metadata import version

        desc["egemaps"] = f"afx-audio {version('afx-audio')}"
    blob = json.dumps(desc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def make_frontend(cfg: FeatureConfig, threads: int = 1) -> Frontend:
    """The front end ``cfg.kind`` (an encoder session uses ``threads`` CPU threads)."""
    if cfg.kind == "speech_embedding":
        return EmbeddingFrontend(cfg, threads)
    if cfg.kind == "egemaps":
        from flava_p2p.speech.paralinguistic import EgemapsFrontend

        return EgemapsFrontend(cfg)
    if cfg.kind == "speech_embedding+egemaps":
        from flava_p2p.speech.paralinguistic import EmbeddingWithEgemaps

        return EmbeddingWithEgemaps(cfg, threads)
    return FeatureExtractor(cfg)


class EmbeddingFrontend:
    """The frozen speech encoder: (B, T) 16 kHz clips → (B, 1, dim, windows) embeddings."""

    center = True  # short words sit in the middle: every window sees them with context

    def __init__(self, cfg: FeatureConfig, threads: int = 1) -> None:
        self.cfg = cfg
        self.encoder = load_encoder(cfg.kind, threads)
        self._samples = round(cfg.sample_rate * cfg.clip_seconds)

    @property
    def n_features(self) -> int:
        """Embedding width."""
        return self.encoder.spec.dim

    @property
    def n_frames(self) -> int:
        """Embeddings per clip."""
        return self.encoder.spec.windows(self._samples)

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """Encode a batch (no gradients: the encoder is frozen)."""
        emb = self.encoder.encode(np.asarray(waves.detach().numpy(), dtype=np.float32))
        return torch.from_numpy(emb).transpose(1, 2).unsqueeze(1).contiguous()


class FeatureExtractor(nn.Module):
    """Log-mel or MFCC: waveforms (B, T) at ``cfg.sample_rate`` → (B, 1, n_features, frames)."""

    center = False

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        win = round(cfg.sample_rate * cfg.win_ms / 1000)
        hop = round(cfg.sample_rate * cfg.hop_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        mel_kwargs = {"n_fft": n_fft, "win_length": win, "hop_length": hop, "n_mels": cfg.n_mels}
        self.transform: nn.Module
        if cfg.kind == "mfcc":
            self.transform = tat.MFCC(
                sample_rate=cfg.sample_rate, n_mfcc=cfg.n_mfcc, log_mels=True, melkwargs=mel_kwargs
            )
        else:
            self.transform = tat.MelSpectrogram(sample_rate=cfg.sample_rate, **mel_kwargs)

    @property
    def n_features(self) -> int:
        """Height of the feature map."""
        return self.cfg.n_mfcc if self.cfg.kind == "mfcc" else self.cfg.n_mels

    @property
    def n_frames(self) -> int:
        """Width of the feature map for one clip."""
        n = round(self.cfg.sample_rate * self.cfg.clip_seconds)
        hop = round(self.cfg.sample_rate * self.cfg.hop_ms / 1000)
        return n // hop + 1

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """Compute features; log-mel uses log(x + 1e-6), then per-clip mean/variance norm."""
        feats = self.transform(waves)
        if self.cfg.kind == "logmel":
            feats = torch.log(feats + 1e-6)
        # Per-utterance normalisation removes level differences between devices/microphones.
        mean = feats.mean(dim=(-2, -1), keepdim=True)
        std = feats.std(dim=(-2, -1), keepdim=True).clamp_min(1e-5)
        normed: torch.Tensor = ((feats - mean) / std).unsqueeze(1)
        return normed


def spec_augment(
    feats: torch.Tensor,
    generator: torch.Generator,
    freq_width: int = 6,
    time_width: int = 8,
    n_masks: int = 1,
) -> torch.Tensor:
    """SpecAugment: zero ``n_masks`` random frequency and time bands per example (seeded)."""
    b, _, n_freq, n_time = feats.shape
    if b == 0:
        return feats
    out = feats.clone()
    freq_idx = torch.arange(n_freq).view(1, n_freq, 1)
    time_idx = torch.arange(n_time).view(1, 1, n_time)
    for _ in range(n_masks):
        fw = torch.randint(0, freq_width + 1, (b, 1, 1), generator=generator)
        f0 = (torch.rand((b, 1, 1), generator=generator) * (n_freq - fw + 1)).long()
        tw = torch.randint(0, time_width + 1, (b, 1, 1), generator=generator)
        t0 = (torch.rand((b, 1, 1), generator=generator) * (n_time - tw + 1)).long()
        mask = ((freq_idx >= f0) & (freq_idx < f0 + fw)) | ((time_idx >= t0) & (time_idx < t0 + tw))
        out = out.masked_fill(mask.unsqueeze(1), 0.0)
    return out


def time_shift(
    feats: torch.Tensor, generator: torch.Generator, max_shift: int = 10
) -> torch.Tensor:
    """Shift each example by a random number of frames in [-max_shift, max_shift], zero-filled.

    Features are per-clip normalised to mean 0, so the zero fill looks like average energy
    rather than an artificial silence edge.
    """
    b = feats.shape[0]
    if b == 0 or max_shift == 0:
        return feats
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)
    return shift_frames(feats, shifts)


def shift_frames(feats: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move example i of (B, 1, F, T) ``feats`` later in time by ``shifts[i]`` frames (negative:
    earlier); frames shifted in from outside the clip are zero."""
    b, _, _, n_time = feats.shape
    src = torch.arange(n_time).view(1, n_time) - shifts.view(b, 1)
    valid = ((src >= 0) & (src < n_time)).view(b, 1, 1, n_time)
    gathered = feats.gather(3, src.clamp(0, n_time - 1).view(b, 1, 1, n_time).expand_as(feats))
    return gathered.masked_fill(~valid, 0.0)


def center_on_energy(feats: torch.Tensor, sharpness: float = 3.0) -> torch.Tensor:
    """Shift each clip in time so that its energy centroid lands on the middle frame.

    The centroid is a soft arg-max over frames of the per-frame mean feature (frames weighted by
    ``softmax(sharpness * mean)``), so it follows the spoken word, not the background. Frames
    shifted in from outside the clip are zero (the per-clip mean of normalised features). It
    depends only on the clip itself, so under DP it is free: a fixed function of one example.
    """
    b, _, _, n_time = feats.shape
    if b == 0:
        return feats
    weights = torch.softmax(feats.mean(dim=2, keepdim=True) * sharpness, dim=-1)
    frames = torch.arange(n_time, dtype=feats.dtype)
    centroid = (weights * frames).sum(-1).round().long().view(b)
    return shift_frames(feats, n_time // 2 - centroid)
