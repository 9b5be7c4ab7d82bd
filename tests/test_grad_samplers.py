"""Our per-sample gradient samplers equal per-example autograd, so DP clipping is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from flava_p2p.learning.grad_samplers import DepthwiseConv2d, PointwiseConv2d


def per_example_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Ground truth: one backward pass per example."""
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        model(x[i : i + 1]).square().sum().backward()
        grads.append(torch.stack([p.grad.clone() for p in model.parameters()]))  # type: ignore[union-attr]
    return grads


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 13), (10, 10)])
def test_depthwise_matches_autograd(stride: int, size: tuple[int, int]) -> None:
    """Depthwise per-sample grads equal per-example backward, for odd/even sizes and strides."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(4, 3, stride=stride)
    x = torch.randn(5, 4, *size)
    truth = per_example_grads(copy.deepcopy(layer), x)
    gsm = GradSampleModule(layer, loss_reduction="sum")
    gsm(x).square().sum().backward()
    for i in range(5):
        assert torch.allclose(layer.weight.grad_sample[i], truth[i][0], atol=1e-4)  # type: ignore[attr-defined]


def test_pointwise_matches_autograd() -> None:
    """Pointwise per-sample grads equal per-example backward."""
    torch.manual_seed(0)
    layer = PointwiseConv2d(3, 6)
    x = torch.randn(4, 3, 7, 5)
    truth = per_example_grads(copy.deepcopy(layer), x)
    gsm = GradSampleModule(layer, loss_reduction="sum")
    gsm(x).square().sum().backward()
    for i in range(4):
        assert torch.allclose(layer.weight.grad_sample[i], truth[i][0], atol=1e-4)  # type: ignore[attr-defined]


def test_samplers_only_for_our_types() -> None:
    """Plain nn.Conv2d keeps Opacus' own sampler (registration is by exact type)."""
    from opacus.grad_sample.grad_sample_module import GradSampleModule as G

    assert G.GRAD_SAMPLERS[DepthwiseConv2d] is not G.GRAD_SAMPLERS[nn.Conv2d]
    assert G.GRAD_SAMPLERS[PointwiseConv2d] is not G.GRAD_SAMPLERS[nn.Conv2d]
