"""DP-SGD for a softmax-regression head in closed form: the same step Opacus takes, without
materialising per-example gradients.

For a linear layer ``logits = W x + b`` under cross-entropy, example i's gradient is the outer
product ``r_i [x_i, 1]ᵀ`` with ``r_i = softmax(logits_i) − onehot(y_i)``, so its norm is
``‖r_i‖ · sqrt(‖x_i‖² + 1)`` and the sum of clipped gradients is one matrix product
``(c ⊙ R)ᵀ [X, 1]``. Everything else follows Opacus' ``DPOptimizer`` exactly — the clip factor
``min(1, C / (‖g_i‖ + 1e-6))``, Gaussian noise of std ``σ·C`` drawn per parameter in parameter
order from the optimizer's generator, division by the expected batch size — so for the same
batches and generator the weights agree with Opacus' to float rounding (a test checks it), and
the accountant's (ε, δ) applies unchanged. Opacus' generic hooks cost several times the whole
step of a head this small; this path costs about as much as a non-private step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn


@torch.no_grad()
def clipped_noised_grads(
    layer: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_std: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
    input_norms: torch.Tensor | None = None,
) -> float:
    """Set ``layer.weight.grad`` / ``layer.bias.grad`` to one DP-SGD gradient; return the
    batch's summed cross-entropy loss (for reports).

    ``x`` (B, in) and ``y`` (B,) are the Poisson-sampled batch (B may be 0: noise only).
    ``input_norms`` may give ``sqrt(‖x_i‖² + 1)`` (bias) per row, precomputed once per dataset.
    """
    weight, bias = layer.weight, layer.bias
    # Softmax by hand, with shifted logits floored at -80: exp() of very negative numbers
    # (confident predictions) takes a slow path and yields denormals that slow the matmul
    # below ~10x; e^-80 is still a normal float and changes nothing at float precision.
    z = F.linear(x, weight, bias)
    z = (z - z.amax(1, keepdim=True)).clamp_(min=-80.0)
    r = z.exp()
    total = r.sum(1, keepdim=True)
    col = y.view(-1, 1)
    loss = -float((z.gather(1, col) - total.log()).sum()) if len(y) else 0.0
    r.div_(total)  # softmax; minus one-hot(y) below gives dLoss_i/dlogits_i
    r.scatter_add_(1, col, torch.full((len(y), 1), -1.0, dtype=r.dtype))
    if input_norms is None:
        input_norms = (x.pow(2).sum(1) + (1.0 if bias is not None else 0.0)).sqrt()
    norms = torch.linalg.vector_norm(r, dim=1) * input_norms
    r.mul_((max_grad_norm / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
    # Noise is drawn per parameter, weight first, as Opacus does; the clipped sum is added
    # onto it (addmm), then everything is divided by the expected batch size.
    std = noise_std if noise_std > 0 else 0.0
    w_noise = _noise(weight, std, generator)
    weight.grad = torch.addmm(w_noise, r.t(), x).div_(expected_batch_size)
    if bias is not None:
        bias.grad = _noise(bias, std, generator).add_(r.sum(0)).div_(expected_batch_size)
    return loss


def _noise(p: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, std²) shaped like ``p`` (zeros without noise), from ``generator``."""
    if std == 0:
        return torch.zeros_like(p)
    return torch.normal(0.0, std, size=p.shape, generator=generator, dtype=p.dtype)
