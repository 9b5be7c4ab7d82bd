"""Fast per-sample gradients for the DS-CNN's depthwise and pointwise convolutions.

Opacus' generic Conv2d grad sampler unfolds every input into (B, C·k·k, L) copies; for the
depthwise-separable blocks that is most of DP-SGD's overhead on CPU. These samplers compute the
same per-sample gradients without unfolding and are registered only for the two subclasses below
(exact-type lookup in Opacus), so every other Conv2d keeps Opacus' implementation. A test checks
them against Opacus' generic sampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from opacus.grad_sample import register_grad_sampler
from torch import nn


class DepthwiseConv2d(nn.Conv2d):
    """k×k depthwise conv (groups == channels), no bias; a distinct type for its grad sampler."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            channels,
            channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=channels,
            bias=False,
        )
        self.pad = kernel // 2


class PointwiseConv2d(nn.Conv2d):
    """1×1 conv, no bias; a distinct type for its grad sampler."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1, bias=False)


def _depthwise_grad_sample(
    layer: DepthwiseConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """grad[b, c, i, j] = Σ_hw g[b, c, h, w] · x_pad[b, c, i + s·h, j + s·w].

    That sum is a convolution of each (example, channel) input plane with its own backprop plane
    dilated by the stride: one grouped conv with groups = B·C does all of them at once.
    """
    x = activations[0]
    b, c, h_out, w_out = backprops.shape
    kh, kw = layer.kernel_size
    xp = F.pad(x, (layer.pad,) * 4)
    out = F.conv2d(
        xp.reshape(1, b * c, *xp.shape[2:]),
        backprops.reshape(b * c, 1, h_out, w_out),
        dilation=layer.stride,
        groups=b * c,
    )
    grad = out[0, :, :kh, :kw].reshape(b, c, 1, kh, kw)
    return {layer.weight: grad}


def _pointwise_grad_sample(
    layer: PointwiseConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """grad[b, d, c] = Σ_hw g[b, d, hw] · x[b, c, hw] — one batched matmul, no copies."""
    x = activations[0]
    b, c = x.shape[:2]
    d = backprops.shape[1]
    grad = torch.bmm(backprops.reshape(b, d, -1), x.reshape(b, c, -1).transpose(1, 2))
    return {layer.weight: grad.view(b, d, c, 1, 1)}


# Registered by call, not decorator: Opacus' decorator is untyped.
register_grad_sampler(DepthwiseConv2d)(_depthwise_grad_sample)
register_grad_sampler(PointwiseConv2d)(_pointwise_grad_sample)
