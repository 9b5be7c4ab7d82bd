"""The reference screen's measure: a model's loss on public reference clips.

Received models are judged by what they do (``GossipConfig.max_reference_loss``). The clips are
public — a corpus' validation speakers in a simulation, or on a node ``data.reference``: e.g.
espeak-ng clips of the task's labels — so screening with them costs no privacy. The returned
function runs on a model copy of its own and is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from flava_p2p.config import ModelConfig
from flava_p2p.learning.audit import per_example_loss
from flava_p2p.learning.models import build_model
from flava_p2p.speech.dataset import FeatureSet

Vec = npt.NDArray[np.float32]


def reference_loss_fn(
    model_cfg: ModelConfig, n_classes: int, reference: FeatureSet
) -> Callable[[Vec], float]:
    """Mean cross-entropy of flat ``weights`` on ``reference`` (features already extracted)."""
    _, _, n_feat, n_frames = reference.features.shape
    net = build_model(model_cfg, n_classes, int(n_feat), int(n_frames))

    def loss(weights: Vec) -> float:
        return float(per_example_loss(net, weights, reference.features, reference.labels).mean())

    return loss
