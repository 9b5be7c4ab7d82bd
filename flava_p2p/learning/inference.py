"""On-device inference: a checkpoint + audio files → top-k labels with probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flava_p2p.config import FeatureConfig, ModelConfig
from flava_p2p.errors import FlavaError
from flava_p2p.learning.checkpoint import load_checkpoint
from flava_p2p.learning.models import build_model
from flava_p2p.speech.audio import load_clip
from flava_p2p.speech.features import make_frontend


@dataclass(frozen=True)
class Prediction:
    """Top-k labels for one file, most probable first."""

    file: str
    top: list[tuple[str, float]]


class KeywordSpotter:
    """A loaded keyword model with its feature front end."""

    def __init__(self, checkpoint: str | Path, threads: int = 1) -> None:
        ckpt = load_checkpoint(checkpoint)
        try:
            self.model_cfg = ModelConfig.model_validate(ckpt.meta["model"])
            self.feature_cfg = FeatureConfig.model_validate(ckpt.meta["features"])
            self.labels = [str(x) for x in ckpt.meta["labels"]]
        except (KeyError, ValueError) as exc:
            raise FlavaError(f"{checkpoint}: checkpoint metadata is incomplete ({exc}).") from None
        self.extractor = make_frontend(self.feature_cfg, threads)
        self.model: nn.Module = build_model(
            self.model_cfg, len(self.labels), self.extractor.n_features, self.extractor.n_frames
        )
        state = {k: torch.from_numpy(v) for k, v in ckpt.weights.items()}
        missing = set(dict(self.model.named_parameters())) - set(state)
        if missing:
            raise FlavaError(f"{checkpoint}: checkpoint lacks weights {sorted(missing)[:3]}.")
        self.model.load_state_dict(state, strict=False)
        self.model.train(False)  # inference mode

    @torch.no_grad()
    def predict_waves(self, waves: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k for a batch of clips (B, T) already at the model's sample rate and length."""
        feats = self.extractor(torch.from_numpy(np.asarray(waves, dtype=np.float32)))
        probs = torch.softmax(self.model(feats), dim=1)
        top = probs.topk(min(k, len(self.labels)), dim=1)
        return [
            [(self.labels[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist(), strict=True)]
            for ps, ix in zip(top.values, top.indices, strict=True)
        ]

    def predict_file(self, path: str | Path, k: int = 3) -> Prediction:
        """Top-k for one file of any common rate, mono or stereo (AudioError if not audio)."""
        fc = self.feature_cfg
        wave = load_clip(path, fc.sample_rate, fc.clip_seconds, self.extractor.center)
        return Prediction(str(path), self.predict_waves(wave[None, :], k)[0])
