"""Paralinguistic front ends for speech emotion: eGeMAPS v02 functionals, alone or beside the
speech encoder's embeddings.

Emotion lives in how something is said — pitch, loudness, voice quality, rhythm — which a
keyword encoder is trained to ignore. eGeMAPS (the Geneva minimalistic acoustic parameter
set, 88 functionals per clip) measures exactly those; ``afx-audio`` (MIT) computes it in
numpy/scipy with no model file. Raw functionals span many scales (Hz, dB, ratios), and
standardising them with statistics of private clips would cost privacy, so each value is
compressed by a fixed ``sign(x)·log(1 + |x|)`` instead: a per-clip function of the clip alone.

``egemaps``: (B, 1, 88, 1). ``speech_embedding+egemaps``: the encoder's (B, 1, 96, W)
embeddings with the clip's compressed functionals, rescaled to the embeddings' mean window
norm, appended to every window (so any window pooling carries them unchanged): (B, 1, 184, W).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from flava_p2p.config import FeatureConfig

N_EGEMAPS = 88


def egemaps_functionals(wave: npt.NDArray[np.float32], sr: int) -> npt.NDArray[np.float32]:
    """The 88 eGeMAPS v02 functionals of one clip, log-compressed, non-finite values as 0."""
    import afx_audio

    feats = afx_audio.egemaps(np.asarray(wave, dtype=np.float64), sr)
    x = np.array([feats[name] for name in afx_audio.EGEMAPS_NAMES], dtype=np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


class EgemapsFrontend:
    """Waveforms (B, T) → (B, 1, 88, 1) compressed eGeMAPS functionals."""

    center = True

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg

    @property
    def n_features(self) -> int:
        """Functionals per clip."""
        return N_EGEMAPS

    @property
    def n_frames(self) -> int:
        """One vector per clip."""
        return 1

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        rows = [egemaps_functionals(w, self.cfg.sample_rate) for w in waves.detach().numpy()]
        return torch.from_numpy(np.stack(rows)).view(len(rows), 1, N_EGEMAPS, 1)


class EmbeddingWithEgemaps:
    """The speech encoder's window embeddings, each window extended by the clip's eGeMAPS."""

    center = True

    def __init__(self, cfg: FeatureConfig, threads: int = 1) -> None:
        from flava_p2p.speech.features import EmbeddingFrontend

        self.cfg = cfg
        self.encoder = EmbeddingFrontend(
            cfg.model_copy(update={"kind": "speech_embedding"}), threads
        )
        self.egemaps = EgemapsFrontend(cfg)

    @property
    def n_features(self) -> int:
        """Embedding width plus the functionals."""
        return self.encoder.n_features + N_EGEMAPS

    @property
    def n_frames(self) -> int:
        """Embedding windows per clip."""
        return self.encoder.n_frames

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        emb = self.encoder(waves)  # (B, 1, 96, W)
        par = self.egemaps(waves).squeeze(-1)  # (B, 1, 88)
        scale = emb.norm(dim=2).mean(-1, keepdim=True)  # (B, 1, 1): mean window norm
        par = torch.nn.functional.normalize(par, dim=2) * scale
        tiled = par.unsqueeze(-1).expand(-1, -1, -1, emb.shape[-1])
        return torch.cat([emb, tiled], dim=2).contiguous()
