"""Exact nearest-neighbour error memory over a bounded ring buffer.

The reference form of the ReLoop2 memory (Zhu et al., KDD 2023, arXiv 2306.08808): every
labelled sample is one entry ``(h_i, y_i, y_base_i)``; a read takes the ``n_neighbors`` most
similar entries by cosine similarity and weights them by ``softmax(s_i / tau)``. The buffer
holds the last ``capacity`` samples (the oldest is overwritten first), so the footprint is
``capacity * (4 * dim + 24)`` bytes whatever the stream length.

Optional decay (a choice, not in the paper): an entry written ``age`` samples ago has its
attention weight multiplied by ``decay^age``; neighbours are still chosen by similarity.

>>> import numpy as np
>>> mem = ExactMemory(dim=2, capacity=3, n_neighbors=2)
>>> mem.write(np.array([[1.0, 0], [0, 1.0], [1.0, 0.1]]), [1.0, 0.0, 1.0], [0.2, 0.2, 0.4])
3
>>> r = mem.read(np.array([[1.0, 0.0]]), tau=1.0)
>>> round(float(r.ybar[0]), 3), round(float(r.ybar_base[0]), 3), int(r.n_neighbours[0])
(1.0, 0.3, 2)
>>> _ = mem.write(np.array([[0.0, -1.0]]), [0.0], [0.1])  # overwrites the oldest entry
>>> len(mem), mem.nbytes
(3, 96)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from streamadapt.memory.base import ErrorMemory, MemoryRead, as_keys, softmax_pool

__all__ = ["ExactMemory"]


class ExactMemory(ErrorMemory):
    """Brute-force cosine k-nearest neighbours over the last ``capacity`` samples.

    Parameters
    ----------
    dim
        Dimension of the keys.
    capacity
        How many samples the ring buffer holds.
    n_neighbors
        ``k``: neighbours per read (fewer while the buffer holds fewer entries).
    decay
        Attention weight kept per sample of age, in ``(0, 1]``; 1 means no decay.
    seed
        Unused (the memory is deterministic); kept for a uniform signature.
    """

    def __init__(
        self,
        dim: int,
        capacity: int = 4096,
        n_neighbors: int = 64,
        decay: float = 1.0,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.check_params(capacity, n_neighbors, decay)
        self.dim = dim
        self.capacity = capacity
        self.n_neighbors = n_neighbors
        self.decay = decay
        self.seed = seed
        self._keys = torch.zeros(capacity, dim, dtype=torch.float32)  # unit vectors
        self._y = torch.zeros(capacity, dtype=torch.float64)
        self._yb = torch.zeros(capacity, dtype=torch.float64)
        self._t = torch.zeros(capacity, dtype=torch.int64)  # write time of each slot
        self._written = 0  # samples ever written since the last reset

    @staticmethod
    def check_params(capacity: int, n_neighbors: int, decay: float) -> None:
        """Raise ``ValueError`` naming the first bad parameter (allocates nothing)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if n_neighbors < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._keys, self._y, self._yb, self._t))

    def __len__(self) -> int:
        return min(self._written, self.capacity)

    def read(self, keys: Any, tau: float) -> MemoryRead:
        q = as_keys(keys, self.dim)
        n, size = q.shape[0], len(self)
        if size == 0:
            zero = np.zeros(n)
            return MemoryRead(zero, zero.copy(), np.zeros(n, dtype=np.int64))
        qn = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = qn @ self._keys[:size].T  # (n, size)
        k = min(self.n_neighbors, size)
        top, idx = torch.topk(sims, k, dim=1)
        mask = torch.ones_like(top, dtype=torch.bool)
        log_w = None
        if self.decay < 1.0:
            age = (self._written - 1 - self._t[idx]).double()
            log_w = age * math.log(self.decay)
        return softmax_pool(top, mask, self._y[idx], self._yb[idx], tau, log_w)

    def write(self, keys: Any, ys: Any, y_base: Any) -> int:
        h, y, yb = self._write_batch(keys, ys, y_base)
        n = h.shape[0]
        if n == 0:
            return 0
        if n > self.capacity:  # only the last `capacity` samples can survive
            skip = n - self.capacity
            h, y, yb = h[skip:], y[skip:], yb[skip:]
            self._written += skip
        m = h.shape[0]
        slots = (self._written + torch.arange(m)) % self.capacity
        self._keys[slots] = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._y[slots] = torch.from_numpy(y)
        self._yb[slots] = torch.from_numpy(yb)
        self._t[slots] = self._written + torch.arange(m)
        self._written += m
        return n

    def reset(self) -> None:
        for t in (self._keys, self._y, self._yb, self._t):
            t.zero_()
        self._written = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "exact",
            "shape": [self.dim, self.capacity],
            "keys": self._keys.clone(),
            "y": self._y.clone(),
            "yb": self._yb.clone(),
            "t": self._t.clone(),
            "written": self._written,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "exact":
            raise ValueError(f"expected an 'exact' memory state, got {state.get('kind')!r}")
        shape = [int(v) for v in state["shape"]]
        if shape != [self.dim, self.capacity]:
            raise ValueError(
                f"state is for (dim, capacity) = {shape}, this memory is "
                f"{[self.dim, self.capacity]}"
            )
        self._keys = state["keys"].clone()
        self._y = state["y"].clone()
        self._yb = state["yb"].clone()
        self._t = state["t"].clone()
        self._written = int(state["written"])
