"""The compensation step of ReLoop2: correct the base prediction with the memory's answer.

From Zhu et al. (KDD 2023, arXiv 2306.08808), equations reconstructed from the text::

    y_err  = gamma * (ybar - y_base) + (1 - gamma) * (ybar - ybar_base)
    y_pred = clamp(y_base + lambda * y_err, 0, 1)

``ybar`` and ``ybar_base`` are the memory's attention-weighted averages of its neighbours'
labels and base predictions. ``gamma = 1`` (the paper's experiments) reduces to
``(1 - lambda) * y_base + lambda * ybar``; ``gamma = 0`` adds the neighbours' mean residual.
For regression (forecast residuals) there is no clamp. Where the memory found no neighbour,
the base prediction passes unchanged.

>>> import numpy as np
>>> compensate(np.array([0.2, 0.2]), np.array([1.0, 1.0]), np.array([0.6, 0.6]),
...            np.array([True, False]), lam=0.5, gamma=1.0).round(6).tolist()
[0.6, 0.2]
>>> compensate(np.array([0.2]), np.array([1.0]), np.array([0.6]), np.array([True]),
...            lam=0.5, gamma=0.0).round(6).tolist()
[0.4]
>>> compensate(np.array([5.0]), np.array([9.0]), np.array([1.0]), np.array([True]),
...            lam=1.0, gamma=0.5, clamp=False).tolist()
[11.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["compensate"]


def compensate(
    y_base: np.ndarray,
    ybar: np.ndarray,
    ybar_base: np.ndarray,
    found: np.ndarray,
    *,
    lam: float,
    gamma: float,
    clamp: bool = True,
) -> np.ndarray:
    """``y_base + lam * y_err`` where ``found``, else ``y_base``; clamped to [0, 1] if asked."""
    y_err = gamma * (ybar - y_base) + (1.0 - gamma) * (ybar - ybar_base)
    out = np.where(found, y_base + lam * y_err, y_base)
    if clamp:
        out = np.clip(out, 0.0, 1.0)
    return out
