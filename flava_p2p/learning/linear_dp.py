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
    logp = F.log_softmax(F.linear(x, weight, bias), dim=1)
    rows = torch.arange(len(y))
    picked = logp[rows, y]
    loss = -float(picked.sum()) if len(y) else 0.0
    r = logp.exp_()
    r[rows, y] -= 1.0
    if input_norms is None:
        input_norms = (x.pow(2).sum(1) + (1.0 if bias is not None else 0.0)).sqrt()
    norms = r.norm(dim=1) * input_norms
    clip = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    rc = r * clip.unsqueeze(1)
    grads = [rc.t() @ x]
    if bias is not None:
        grads.append(rc.sum(0))
    params = [weight] if bias is None else [weight, bias]
    for p, summed in zip(params, grads, strict=True):
        noised = summed
        if noise_std > 0:
            noised = summed + torch.normal(0.0, noise_std, size=p.shape, generator=generator)
        p.grad = (noised / expected_batch_size).to(p.dtype)
    return loss
