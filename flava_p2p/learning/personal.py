"""Personalization: a private correction to the shared model, learned from the user's own clips.

The shared model is what the network learns together; it is tuned to nobody in particular. A
device also has its user's confirmed clips (from the feedback loop). This module fits, on those
clips only, a private offset ``Δ`` of the model's flat weight vector and a mixing weight ``α``:

    personal weights = (current shared weights) + α · Δ

``Δ`` is found by gradient descent on the user's clips starting from the shared weights, with a
penalty ``λ‖Δ‖²`` that keeps it small (it corrects, it does not replace). ``α`` is chosen by
k-fold cross-validation on the same clips among {0, ¼, ½, ¾, 1}: 0 (no personalization) wins
unless the correction helps on clips it was not fitted on. Because ``Δ`` is an offset, the
personal model keeps following the shared one as gossip improves it.

``Δ`` never leaves the device: it is not part of the model the core gossips, it is stored in
``<home>/personal/personal.npz`` and loaded without pickle. It is fitted without DP (the user's
own clips, kept on the user's own device, used only for the user's own predictions).
"""

from __future__ import annotations

import copy
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from flava_p2p.atomic import write_atomic
from flava_p2p.speech.audio import AudioError, read_audio, resample

if TYPE_CHECKING:
    from flava_p2p.learning.feedback import FeedbackStore
    from flava_p2p.learning.inference import LiveRecognizer

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_CLIPS = 10
"""Fewer confirmed clips than this (or a single label) → no personalization."""


@dataclass(frozen=True)
class PersonalFit:
    """A fitted correction and how it was chosen."""

    delta: np.ndarray
    alpha: float
    clips: int
    cv_accuracy: dict[str, float]
    """Cross-validated accuracy on the user's clips per α ("0.0" is the shared model)."""
    fitted_at: float
    shared_round: int

    def weights(self, shared: np.ndarray) -> np.ndarray:
        """The personal flat weights on top of the current ``shared`` ones."""
        if self.alpha == 0.0 or self.delta.shape != shared.shape:
            return shared
        return (shared + np.float32(self.alpha) * self.delta).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write atomically (plain arrays, no pickle)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            delta=self.delta.astype(np.float32),
            alpha=np.float64(self.alpha),
            clips=np.int64(self.clips),
            cv_alphas=np.array([float(a) for a in self.cv_accuracy], np.float64),
            cv_acc=np.array(list(self.cv_accuracy.values()), np.float64),
            fitted_at=np.float64(self.fitted_at),
            shared_round=np.int64(self.shared_round),
        )
        write_atomic(path, buf.getvalue())

    @staticmethod
    def load(path: Path) -> PersonalFit | None:
        """The saved fit, or None when there is none or it is unreadable (then refit)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return PersonalFit(
                    delta=z["delta"].astype(np.float32),
                    alpha=float(z["alpha"]),
                    clips=int(z["clips"]),
                    cv_accuracy={
                        str(a): float(v) for a, v in zip(z["cv_alphas"], z["cv_acc"], strict=True)
                    },
                    fitted_at=float(z["fitted_at"]),
                    shared_round=int(z["shared_round"]),
                )
        except (OSError, KeyError, ValueError):
            return None


def fit_personal(
    model: nn.Module,
    shared: np.ndarray,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    shared_round: int = 0,
    folds: int = 5,
    steps: int = 300,
    lr: float = 0.1,
    l2: float = 1e-4,
    seed: int = 0,
) -> PersonalFit:
    """Fit ``Δ`` and choose ``α`` on the user's clips (see the module docstring).

    ``model`` is only used as the architecture (a private copy is trained); ``features`` are the
    front end's outputs for the clips, ``labels`` their class indices. The defaults (Adam, 300
    full-batch steps, lr 0.1, λ 1e-4) were chosen on FSDD's held-out speakers with 50 feedback
    clips each: a gentler fit (150 steps, lr 0.05, λ 1e-3) rarely changed a prediction, so
    cross-validation switched it off; α still guards against a fit that does not help."""
    n = len(labels)
    base = np.asarray(shared, dtype=np.float32)
    if n < MIN_CLIPS or len(torch.unique(labels)) < 2:
        return PersonalFit(np.zeros_like(base), 0.0, n, {}, time.time(), shared_round)
    net = copy.deepcopy(model)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(folds, n)
    correct = dict.fromkeys(ALPHAS, 0)
    for f in range(k):
        held = order[f::k]
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        delta = _fit_delta(net, base, features[keep], labels[keep], steps, lr, l2)
        for a in ALPHAS:
            pred = _predict(net, base + np.float32(a) * delta, features[held])
            correct[a] += int((pred == labels[held]).sum())
    cv = {str(a): round(correct[a] / n, 4) for a in ALPHAS}
    best = max(ALPHAS, key=lambda a: (correct[a], -a))  # ties → the smaller correction
    delta = _fit_delta(net, base, features, labels, steps, lr, l2) if best else np.zeros_like(base)
    return PersonalFit(delta, best, n, cv, time.time(), shared_round)


def _fit_delta(
    net: nn.Module,
    base: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    l2: float,
) -> np.ndarray:
    start = torch.from_numpy(base.copy())
    torch.nn.utils.vector_to_parameters(start, net.parameters())
    net.train(False)  # no dropout/batch-norm updates: only the weights move
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    anchor = [p.detach().clone() for p in params]
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss = loss + l2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy()
    delta: np.ndarray = (flat - base).astype(np.float32)
    return delta


@torch.no_grad()
def _predict(net: nn.Module, weights: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    torch.nn.utils.vector_to_parameters(torch.from_numpy(weights.astype(np.float32)),
                                        net.parameters())  # fmt: skip
    net.train(False)
    pred: torch.Tensor = net(x).argmax(1)
    return pred


class Personalizer:
    """The device's current personal fit, refitted from the feedback store's labelled clips.

    ``refit`` runs in a worker thread (the API schedules it after feedback); ``current`` is what
    recognition uses."""

    def __init__(self, recognizer: LiveRecognizer, store: FeedbackStore, path: Path) -> None:
        self.recognizer, self.store, self.path = recognizer, store, path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.current = PersonalFit.load(path)
        self._fitting = threading.Lock()

    def refit(self, shared: np.ndarray, shared_round: int, seed: int = 0) -> PersonalFit:
        """Fit on every labelled clip the user gave, save, and make it current."""
        with self._fitting:  # one fit at a time; a later call fits on the newer clips
            clips = self.store.labelled_clips()
            labels = self.recognizer.labels
            rate = self.recognizer.feature_cfg.sample_rate
            waves, ys = [], []
            for path, label in clips:
                try:
                    wave, source_rate = read_audio(path)
                    waves.append(resample(wave, source_rate, rate))
                except AudioError:
                    continue  # a clip removed or damaged since: fit on the rest
                ys.append(labels.index(label))
            feats = self.recognizer.features(waves) if waves else torch.zeros(0)
            fit = fit_personal(
                self.recognizer.model,
                shared,
                feats,
                torch.tensor(ys, dtype=torch.int64),
                shared_round=shared_round,
                seed=seed,
            )
            fit.save(self.path)
            self.current = fit
            return fit

    def describe(self) -> dict[str, object]:
        """What GET /v1/personal shows."""
        fit = self.current
        if fit is None:
            return {"active": False, "clips": 0, "reason": "no feedback with labels yet"}
        return {
            "active": fit.alpha > 0,
            "alpha": fit.alpha,
            "clips": fit.clips,
            "cv_accuracy": fit.cv_accuracy,
            "fitted_at": fit.fitted_at,
            "shared_round_at_fit": fit.shared_round,
        }
