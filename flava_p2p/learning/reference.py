"""The reference screen's measure: a model's loss on public reference clips.

Received models are judged by what they do (``GossipConfig.max_reference_loss``). The clips are
public — a corpus' validation speakers in a simulation, or on a node ``data.reference``: e.g.
espeak-ng clips of the task's labels — so screening with them costs no privacy. The returned
function runs on a model copy of its own and is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from flava_p2p.config import ModelConfig
from flava_p2p.learning.audit import per_example_loss
from flava_p2p.learning.models import EmbeddingHead, build_model, pool_once
from flava_p2p.speech.dataset import FeatureSet

if TYPE_CHECKING:
    import torch

Vec = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def reference_loss_fn(
    model_cfg: ModelConfig, n_classes: int, reference: FeatureSet
) -> Callable[[Vec], float]:
    """Mean cross-entropy of flat ``weights`` on ``reference`` (features already extracted)."""
    _, _, n_feat, n_frames = reference.features.shape
    net = build_model(model_cfg, n_classes, int(n_feat), int(n_frames))
    x = reference.features
    # Fixed pooling is a function of the clip alone: pool the clips once, not on every
    # received model (it was a third of the screen's time in a 2,000-node simulation).
    if (pooled := pool_once(net, x)) is not None:
        x = pooled
        if _is_softmax_regression(net):
            return _softmax_regression_loss(x, reference.labels, n_classes)

    def loss(weights: Vec) -> float:
        return float(per_example_loss(net, weights, x, reference.labels).mean())

    return loss


def _is_softmax_regression(net: object) -> bool:
    """A linear head on fixed pooling: softmax regression on pooled vectors, which the
    closed forms below compute without autograd or a module."""
    return isinstance(net, EmbeddingHead) and net.fixed_pooling and net.is_linear


def _linear_parts(flat: torch.Tensor, n_classes: int, dim: int) -> tuple[torch.Tensor, ...]:
    """Views of a linear head's flat weights (the order of ``parameters()``): the
    ``n_classes × dim`` matrix and the bias."""
    return flat[: n_classes * dim].view(n_classes, dim), flat[n_classes * dim :]


def _softmax_regression_loss(
    pooled: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> Callable[[Vec], float]:
    """The same mean cross-entropy for the linear head, without loading the weights into a
    module: one product and a log-softmax over the transposed logits (classes × clips),
    where torch's softmax is ~5× faster than over 12 contiguous classes. 159 → 63 µs per
    model on 240 clips; a large simulation screens every received model with it."""
    import torch

    x_t = pooled.T
    dim = x_t.shape[0]
    picks = (labels, torch.arange(len(labels)))

    def loss(weights: Vec) -> float:
        flat = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        w, b = _linear_parts(flat, n_classes, dim)
        log_p = torch.log_softmax(torch.addmm(b[:, None], w, x_t), dim=0)
        return float((-log_p[picks]).double().numpy().mean())

    return loss


def reference_anchor_fn(
    model_cfg: ModelConfig, n_classes: int, reference: FeatureSet, steps: int, lr: float
) -> Callable[[Vec], Vec]:
    """``steps`` full-batch SGD steps (learning rate ``lr``) on ``reference`` from the given
    flat weights: the public anchor applied after every merge (``gossip.anchor_steps``).

    The clips are public, so these steps cost no privacy: they are post-processing of the
    DP-trained model with data that holds no one's secret. They pull the model back towards
    correct labels every round, which is what poisoned labels and coordinated shifts (ALIE)
    erode; on its own a screen cannot tell those from honest peers whose speakers differ.
    Deterministic (no sampling). At most 512 clips are used.
    """
    import torch

    _, _, n_feat, n_frames = reference.features.shape
    net = build_model(model_cfg, n_classes, int(n_feat), int(n_frames))
    net.train(False)  # no dropout/batch-norm updates: a deterministic function of the weights
    x, y = reference.features[:512], reference.labels[:512]
    if _is_softmax_regression(net) and (pooled := pool_once(net, x)) is not None:
        return _softmax_regression_anchor(pooled.double().numpy(), y.numpy(), n_classes, steps, lr)

    def anchor(weights: Vec) -> Vec:
        params = list(net.parameters())
        torch.nn.utils.vector_to_parameters(
            torch.as_tensor(np.asarray(weights, dtype=np.float32).copy()), params
        )
        opt = torch.optim.SGD(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
        flat = torch.nn.utils.parameters_to_vector(params).detach().numpy()
        return np.asarray(flat, dtype=np.float32)

    return anchor


def _softmax_regression_anchor(
    pooled: F64, labels: npt.NDArray[np.int64], n_classes: int, steps: int, lr: float
) -> Callable[[Vec], Vec]:
    """The same SGD steps for the linear head, in closed form on the (fixed) pooled vectors:
    the gradient of the mean cross-entropy is ``(softmax − onehot)ᵀ·x / n``. ~50× faster than
    autograd here, which matters when a simulation anchors a thousand nodes every round.

    In torch, not numpy: inside a simulation torch's OpenMP threads are busy training, and
    numpy's own BLAS threads fighting them made these tiny products ~30× slower.

    The logits are kept transposed (classes × clips): torch's softmax over a contiguous
    dimension of only 12 classes took ~78 µs for 512 clips, over the other layout ~14 µs, and
    a large DP simulation calls this after every merge of every node."""
    import torch

    x = torch.as_tensor(pooled, dtype=torch.float64)
    n, dim = x.shape
    x_t = x.T  # a view: the product below is as fast with it as with a contiguous copy
    target_t = (
        torch.nn.functional.one_hot(torch.as_tensor(labels), n_classes).double().T / n
    ).contiguous()

    def anchor(weights: Vec) -> Vec:
        flat = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        w, b = (part.clone() for part in _linear_parts(flat, n_classes, dim))
        for _ in range(steps):
            g = torch.softmax(torch.addmm(b[:, None], w, x_t), dim=0)  # classes × clips
            g.div_(n).sub_(target_t)
            w.sub_(g @ x, alpha=lr)
            b.sub_(g.sum(dim=1), alpha=lr)
        return torch.cat([w.reshape(-1), b]).numpy().astype(np.float32)

    return anchor
