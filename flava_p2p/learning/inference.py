"""On-device inference: a checkpoint + audio files → top-k labels with probabilities, and the
running node's live model (:class:`LiveRecognizer`) for its local API."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flava_p2p.config import FeatureConfig, ModelConfig
from flava_p2p.errors import FlavaError
from flava_p2p.learning.checkpoint import load_checkpoint
from flava_p2p.learning.models import build_model
from flava_p2p.speech.audio import fix_length, load_clip
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


@dataclass(frozen=True)
class Recognition:
    """One clip recognised by the live model."""

    label: str
    probabilities: dict[str, float]
    model_round: int
    latency_ms: float


class LiveRecognizer:
    """The node's current model for recognition requests, apart from the training model.

    Training mutates the trainer's weights in another thread; this keeps its own copy of the
    architecture and loads the core's current merged weights for every request, so a request
    never sees half-updated weights and never waits for a training burst."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        feature_cfg: FeatureConfig,
        labels: list[str],
        threads: int = 1,
    ) -> None:
        self.feature_cfg = feature_cfg
        self.labels = list(labels)
        self.extractor = make_frontend(feature_cfg, threads)
        self.model: nn.Module = build_model(
            model_cfg, len(self.labels), self.extractor.n_features, self.extractor.n_frames
        )
        self.model.train(False)
        self._lock = threading.Lock()  # one request at a time loads and runs the model

    @property
    def clip_samples(self) -> int:
        """Samples of one model input (the front end's clip length)."""
        fc = self.feature_cfg
        return round(fc.sample_rate * fc.clip_seconds)

    @torch.no_grad()
    def features(self, waves: list[np.ndarray]) -> torch.Tensor:
        """The front end's features of mono clips at its rate, stacked (for personalization)."""
        clips = [fix_length(np.asarray(w, dtype=np.float32), self.clip_samples,
                            self.extractor.center) for w in waves]  # fmt: skip
        with self._lock:
            return self.extractor(torch.from_numpy(np.stack(clips)))

    @torch.no_grad()
    def recognize(self, wave: np.ndarray, weights: np.ndarray, model_round: int) -> Recognition:
        """Probabilities of every label for one mono clip at the front end's rate."""
        start = time.perf_counter()
        clip = fix_length(np.asarray(wave, dtype=np.float32), self.clip_samples,
                          self.extractor.center)  # fmt: skip
        flat = torch.tensor(np.asarray(weights, dtype=np.float32))  # a copy: the core moves on
        with self._lock:
            # Loading is a copy of a few thousand floats: cheaper than tracking staleness.
            torch.nn.utils.vector_to_parameters(flat, self.model.parameters())
            feats = self.extractor(torch.from_numpy(clip[None, :]))
            probs = torch.softmax(self.model(feats), dim=1)[0].tolist()
        ranked = sorted(zip(self.labels, probs, strict=True), key=lambda kv: -kv[1])
        return Recognition(
            label=ranked[0][0],
            probabilities={k: round(float(v), 6) for k, v in ranked},
            model_round=model_round,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )
