"""The soft Hebbian update of an input layer (SoftHebb form).

Neuro-modulated Hebbian learning (NHL; Tang et al., "Neuro-Modulated Hebbian Learning for
Fully Test-Time Adaptation", CVPR 2023, arXiv 2303.00914) updates a network's first layer
on unlabelled test batches with a soft competitive Hebbian rule. The paper's exact equation
is not public; this module uses the SoftHebb form (Moraitis et al. 2022), the closest public
one: for an input ``x`` and weights ``W`` (one row ``w_k`` per unit),

    u = W x,   y = softmax(u / T),   dW_k = eta * y_k * (x - u_k * w_k)

a soft winner-take-all with lateral inhibition whose fixed point keeps each row near unit
norm. Over a batch the updates are averaged. The function is pure: it returns ``dW`` and
leaves ``W`` alone (the caller bounds and applies it).

>>> import torch
>>> W = torch.eye(2)
>>> x = torch.tensor([[1.0, 0.0]])
>>> d = soft_hebb_delta(W, x, temperature=1.0, eta=1.0)   # the winner is at its fixed point
>>> [round(v, 4) for v in d[:, 0].tolist()]
[0.0, 0.2689]
>>> d = soft_hebb_delta(0.5 * W, x, temperature=1.0, eta=1.0)  # a short winner grows
>>> [round(v, 4) for v in d[:, 0].tolist()]
[0.4668, 0.3775]
"""

from __future__ import annotations

import torch

__all__ = ["soft_hebb_delta"]


def soft_hebb_delta(
    weight: torch.Tensor, x: torch.Tensor, temperature: float = 1.0, eta: float = 1e-3
) -> torch.Tensor:
    """Batch-averaged soft Hebbian update ``dW`` for ``weight`` (units x inputs), ``x``
    (batch x inputs)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    w = weight.detach()
    xb = x.detach().to(w.dtype)
    u = xb @ w.T  # (n, k)
    y = torch.softmax(u / temperature, dim=1)
    n = max(xb.shape[0], 1)
    return eta * (y.T @ xb - (y * u).sum(0)[:, None] * w) / n
