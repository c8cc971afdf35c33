"""The error-memory protocol shared by the LSH sketch and the exact nearest-neighbour store.

An error memory is the *fast learner* of ReLoop2 (Zhu et al., KDD 2023, arXiv 2306.08808):
it keeps, for recently labelled samples, a key ``h`` (a hidden representation of the base
model), the label ``y`` and the base prediction ``y_base``, and answers a query key with a
similarity-weighted average of the labels and base predictions of its neighbours. It has no
gradients and no learned weights.

Every memory is bounded in bytes by construction (its arrays are allocated once, in the
constructor) and reports that size as :attr:`ErrorMemory.nbytes`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ErrorMemory", "MemoryRead", "as_keys", "softmax_pool"]


@dataclass(frozen=True, slots=True)
class MemoryRead:
    """The answer to a batch of queries.

    ``ybar`` and ``ybar_base`` are the attention-weighted label and base-prediction averages
    over each query's neighbours; ``n_neighbours`` says how many neighbours took part (0 means
    the memory knows nothing near this query, and the averages are 0 and must be ignored).
    """

    ybar: np.ndarray
    ybar_base: np.ndarray
    n_neighbours: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return self.n_neighbours > 0


def as_keys(keys: Any, dim: int) -> torch.Tensor:
    """``keys`` as a float32 tensor of shape ``(n, dim)``, or ``ValueError`` naming the shape."""
    t = torch.as_tensor(np.asarray(keys, dtype=np.float32))
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(f"keys must have shape (n, {dim}), got {tuple(t.shape)}")
    return t


def softmax_pool(
    sims: torch.Tensor,
    mask: torch.Tensor,
    ys: torch.Tensor,
    ybs: torch.Tensor,
    tau: float,
    log_weights: torch.Tensor | None = None,
) -> MemoryRead:
    """Attention over neighbours: ``a_i = softmax(s_i / tau)`` among the unmasked ones.

    All arguments are ``(n, k)``; ``mask`` is True where a neighbour exists. ``log_weights``
    (optional) adds a prior per neighbour, e.g. ``age * log(decay)``.
    """
    logits = sims.double() / tau
    if log_weights is not None:
        logits = logits + log_weights
    logits = logits.masked_fill(~mask, float("-inf"))
    n = mask.sum(dim=1)
    has = n > 0
    # rows with no neighbour would give NaN: give them a harmless uniform row instead
    logits = torch.where(has[:, None], logits, torch.zeros_like(logits))
    a = torch.softmax(logits, dim=1)
    ybar = (a * ys.double()).sum(dim=1)
    ybar_base = (a * ybs.double()).sum(dim=1)
    ybar = torch.where(has, ybar, torch.zeros_like(ybar))
    ybar_base = torch.where(has, ybar_base, torch.zeros_like(ybar_base))
    return MemoryRead(ybar.numpy(), ybar_base.numpy(), n.numpy().astype(np.int64))


class ErrorMemory(abc.ABC):
    """A bounded store of (key, label, base prediction) triples, read by similarity."""

    #: Dimension of the keys.
    dim: int

    @abc.abstractmethod
    def read(self, keys: Any, tau: float) -> MemoryRead:
        """Neighbour averages for each row of ``keys`` (shape ``(n, dim)``)."""

    @abc.abstractmethod
    def write(self, keys: Any, ys: Any, y_base: Any) -> int:
        """Store labelled samples; rows holding a non-finite value are skipped. Returns how
        many rows were written."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything (the refresh policy calls this)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many entries (ring slots or non-empty buckets) hold something."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the memory's arrays; fixed at construction."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def _write_batch(
        self, keys: Any, ys: Any, y_base: Any
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Validated write inputs: keys as a tensor, labels and base predictions as float64
        vectors of the same length, rows holding a NaN or an infinity dropped."""
        h = as_keys(keys, self.dim)
        y = np.asarray(ys, dtype=np.float64).reshape(-1)
        yb = np.asarray(y_base, dtype=np.float64).reshape(-1)
        if not len(y) == len(yb) == h.shape[0]:
            raise ValueError(f"got {h.shape[0]} keys, {len(y)} labels, {len(yb)} base predictions")
        ok = torch.isfinite(h).all(dim=1) & torch.from_numpy(np.isfinite(y) & np.isfinite(yb))
        if not bool(ok.all()):
            h, y, yb = h[ok], y[ok.numpy()], yb[ok.numpy()]
        return h, y, yb
