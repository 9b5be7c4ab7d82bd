"""The public reference set: the screen's loss and the anchor applied after every merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flava_p2p.config import ModelConfig
from flava_p2p.learning.models import build_model
from flava_p2p.learning.reference import reference_anchor_fn, reference_loss_fn
from flava_p2p.speech.dataset import FeatureSet

N_CLASSES, DIM, WINDOWS = 4, 12, 3


def _reference(n: int = 40) -> FeatureSet:
    """Random window embeddings whose class shifts their mean (separable, like the encoder's)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, n)
    centres = rng.normal(size=(N_CLASSES, DIM, 1))
    x = centres[labels] + 0.5 * rng.normal(size=(n, DIM, WINDOWS))
    return FeatureSet(
        torch.as_tensor(x[:, None].astype(np.float32)),
        torch.as_tensor(labels),
        ["ref"] * n,
        ["validation"] * n,
        [f"c{i}.wav" for i in range(n)],
        [f"l{c}" for c in range(N_CLASSES)],
    )


@pytest.mark.parametrize("pooling", ["meanmax", "attention"])
def test_anchor_is_sgd_on_the_reference_and_lowers_its_loss(pooling: str) -> None:
    """The closed-form path (linear head on fixed pooling) and autograd (attention pooling
    has weights of its own) both take plain SGD steps: the reference loss falls, and the
    closed form agrees with autograd to float precision."""
    ref = _reference()
    cfg = ModelConfig(name="embed_linear", pooling=pooling)
    net = build_model(cfg, N_CLASSES, DIM, WINDOWS)
    start = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy().copy()
    anchor = reference_anchor_fn(cfg, N_CLASSES, ref, steps=20, lr=0.5)
    loss = reference_loss_fn(cfg, N_CLASSES, ref)
    moved = anchor(start)
    assert moved.dtype == np.float32 and moved.shape == start.shape
    assert loss(moved) < 0.8 * loss(start)
    assert np.array_equal(anchor(start), moved)  # deterministic
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(ref.features), ref.labels).backward()  # type: ignore[no-untyped-call]
        opt.step()
    by_autograd = torch.nn.utils.parameters_to_vector(params).detach().numpy()
    np.testing.assert_allclose(moved, by_autograd, atol=1e-5)


@pytest.mark.parametrize("pooling", ["meanmax", "mean", "attention"])
def test_reference_loss_is_the_mean_cross_entropy_of_the_model(pooling: str) -> None:
    """The screen's loss (a closed form for the linear head on fixed pooling, the module
    otherwise) is the model's mean cross-entropy on the reference clips, for trained and
    untrained weights alike."""
    ref = _reference()
    cfg = ModelConfig(name="embed_linear", pooling=pooling)
    net = build_model(cfg, N_CLASSES, DIM, WINDOWS)
    loss = reference_loss_fn(cfg, N_CLASSES, ref)
    rng = np.random.default_rng(1)
    start = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy().copy()
    for weights in (start, (3.0 * rng.normal(size=start.shape)).astype(np.float32)):
        torch.nn.utils.vector_to_parameters(torch.as_tensor(weights), net.parameters())
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(net(ref.features), ref.labels)
        assert loss(weights) == pytest.approx(float(expected), rel=1e-5)
