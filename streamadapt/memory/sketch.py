"""RACE-style locality-sensitive sketch: the production error memory of ReLoop2.

Zhu et al. (KDD 2023, arXiv 2306.08808, section "error memory") store the memory as a RACE
sketch (Coleman and Shrivastava, "Sub-linear RACE sketches for approximate kernel density
estimation on streaming data", WWW 2020): ``K`` hash tables, each indexed by ``L`` SimHash
bits (signs of random projections of the key, Charikar 2002), so each table has ``2^L``
buckets. A bucket keeps running sums; a write adds the sample to one bucket per table (O(1)
per table), a read takes, per table, the bucket the query falls into as one neighbour. ``K``
plays the role of the number of neighbours ``k``.

Choices the paper leaves open (written down here and exposed as parameters):

* Each bucket keeps ``(count, sum of keys, sum of labels, sum of base predictions)``. The
  neighbour of table ``k`` is the bucket mean; its similarity is
  ``cos(h_q, sum_h / count)`` (the direction of the sum is that of the mean).
* An empty bucket is no neighbour. With decay, a bucket whose decayed count (the latest
  written sample weighs 1) is below ``min_count`` also counts as empty.
* Exponential decay (a streaming variant; the paper resets instead): every written sample
  multiplies the weight of all earlier samples by ``decay``. Decay is lazy: new samples are
  written with weight ``decay^-t`` and the arrays are rescaled when that weight grows large,
  so a write stays O(1) per table.

The footprint is fixed by the constructor:
``K * 2^L * (4 * dim + 24) + 4 * dim * K * L`` bytes (float32 key sums and projections,
float64 counts and value sums).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> sketch = LSHSketch(dim=4, n_tables=8, n_bits=3, seed=0)
>>> h = rng.normal(size=(100, 4)).astype("float32")
>>> sketch.write(h, (h[:, 0] > 0).astype(float), np.full(100, 0.5))
100
>>> r = sketch.read(np.array([[2.0, 0, 0, 0], [-2.0, 0, 0, 0]]), tau=0.1)
>>> r.ybar.round(2).tolist(), r.n_neighbours.tolist()
([0.99, 0.01], [8, 8])
>>> sketch.nbytes == LSHSketch.footprint(4, 8, 3)
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from streamadapt.memory.base import ErrorMemory, MemoryRead, as_keys, softmax_pool

__all__ = ["LSHSketch"]

_RESCALE_AT = 1e12


class LSHSketch(ErrorMemory):
    """K tables x L SimHash bits of per-bucket running sums.

    Parameters
    ----------
    dim
        Dimension of the keys.
    n_tables
        ``K``: number of hash tables (neighbours per read).
    n_bits
        ``L``: SimHash bits per table; each table has ``2^L`` buckets.
    decay
        Weight kept by earlier samples at each new write, in ``(0, 1]``; 1 means no decay.
    min_count
        A bucket whose (decayed) count is below this is treated as empty. 0 means only
        never-written buckets are empty.
    max_bytes
        If given, the constructor refuses a configuration whose footprint exceeds it.
    seed
        Seed of the random projections.
    """

    def __init__(
        self,
        dim: int,
        n_tables: int = 64,
        n_bits: int = 8,
        decay: float = 1.0,
        min_count: float = 0.0,
        max_bytes: int | None = None,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.check_params(n_tables, n_bits, decay, min_count)
        need = self.footprint(dim, n_tables, n_bits)
        if max_bytes is not None and need > max_bytes:
            raise ValueError(
                f"a sketch with dim={dim}, n_tables={n_tables}, n_bits={n_bits} needs {need} "
                f"bytes > max_bytes={max_bytes}; lower n_tables or n_bits"
            )
        self.dim = dim
        self.n_tables = n_tables
        self.n_bits = n_bits
        self.decay = decay
        self.min_count = min_count
        self.max_bytes = max_bytes
        self.seed = seed
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((dim, n_tables * n_bits)).astype(np.float32)
        self._proj = torch.from_numpy(proj)
        self._powers = 2 ** torch.arange(n_bits, dtype=torch.int64)
        self._offsets = torch.arange(n_tables, dtype=torch.int64) * (1 << n_bits)
        n_buckets = n_tables << n_bits
        self._count = torch.zeros(n_buckets, dtype=torch.float64)
        self._sum_h = torch.zeros(n_buckets, dim, dtype=torch.float32)
        self._sum_y = torch.zeros(n_buckets, dtype=torch.float64)
        self._sum_yb = torch.zeros(n_buckets, dtype=torch.float64)
        self._scale = 1.0  # raw weight of the next written sample (lazy decay)

    @staticmethod
    def check_params(n_tables: int, n_bits: int, decay: float, min_count: float) -> None:
        """Raise ``ValueError`` naming the first bad parameter (allocates nothing)."""
        if n_tables < 1:
            raise ValueError(f"n_tables must be >= 1, got {n_tables}")
        if not 1 <= n_bits <= 24:
            raise ValueError(f"n_bits must be in 1..24, got {n_bits}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")

    @staticmethod
    def footprint(dim: int, n_tables: int, n_bits: int) -> int:
        """Bytes a sketch of this shape holds, whatever it is fed."""
        return (n_tables << n_bits) * (4 * dim + 24) + 4 * dim * n_tables * n_bits

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self._proj, self._count, self._sum_h, self._sum_y, self._sum_yb)
        )

    def __len__(self) -> int:
        return int((self._count > 0).sum())

    def buckets(self, keys: Any) -> torch.Tensor:
        """Flat bucket index of each key in each table, shape ``(n, n_tables)``."""
        h = as_keys(keys, self.dim)
        bits = (h @ self._proj > 0).view(-1, self.n_tables, self.n_bits).long()
        return (bits * self._powers).sum(dim=2) + self._offsets

    def read(self, keys: Any, tau: float) -> MemoryRead:
        h = as_keys(keys, self.dim)
        idx = self.buckets(h)
        count = self._count[idx]  # (n, K)
        sums = self._sum_h[idx]  # (n, K, dim)
        denom = sums.norm(dim=2) * h.norm(dim=1, keepdim=True)
        sims = (sums @ h.unsqueeze(2)).squeeze(2) / denom.clamp_min(1e-12)
        threshold = self.min_count * self._scale * self.decay if self.min_count > 0 else 0.0
        mask = count > threshold
        safe = count.clamp_min(1e-300)
        return softmax_pool(sims, mask, self._sum_y[idx] / safe, self._sum_yb[idx] / safe, tau)

    def write(self, keys: Any, ys: Any, y_base: Any) -> int:
        h, y, yb = self._write_batch(keys, ys, y_base)
        n = h.shape[0]
        if n == 0:
            return 0
        if self.decay < 1.0:
            # sample i of the batch is followed by n - 1 - i later ones
            w = self._scale * self.decay ** -np.arange(n, dtype=np.float64)
            self._scale *= self.decay ** -n
        else:
            w = np.ones(n)
        weights = torch.from_numpy(w)
        idx = self.buckets(h).reshape(-1)  # row-major: sample, then table
        k = self.n_tables
        wk = weights.repeat_interleave(k)
        self._count.index_add_(0, idx, wk)
        self._sum_y.index_add_(0, idx, torch.from_numpy(y).repeat_interleave(k) * wk)
        self._sum_yb.index_add_(0, idx, torch.from_numpy(yb).repeat_interleave(k) * wk)
        hw = h * weights.float()[:, None] if self.decay < 1.0 else h
        self._sum_h.index_add_(0, idx, hw.repeat_interleave(k, dim=0))
        if self._scale > _RESCALE_AT:
            self._rescale()
        return n

    def _rescale(self) -> None:
        s = self._scale
        self._count /= s
        self._sum_y /= s
        self._sum_yb /= s
        self._sum_h /= s
        self._scale = 1.0

    def reset(self) -> None:
        for t in (self._count, self._sum_h, self._sum_y, self._sum_yb):
            t.zero_()
        self._scale = 1.0

    def effective_count(self) -> torch.Tensor:
        """Decayed count of every bucket (the latest sample weighs 1), shape
        ``(n_tables, 2^n_bits)``."""
        return (self._count / (self._scale * self.decay)).view(self.n_tables, -1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "lsh-sketch",
            "shape": [self.dim, self.n_tables, self.n_bits],
            "proj": self._proj.clone(),
            "count": self._count.clone(),
            "sum_h": self._sum_h.clone(),
            "sum_y": self._sum_y.clone(),
            "sum_yb": self._sum_yb.clone(),
            "scale": self._scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "lsh-sketch":
            raise ValueError(f"expected an 'lsh-sketch' state, got {state.get('kind')!r}")
        shape = [int(v) for v in state["shape"]]
        if shape != [self.dim, self.n_tables, self.n_bits]:
            raise ValueError(
                f"state is for (dim, n_tables, n_bits) = {shape}, this sketch is "
                f"{[self.dim, self.n_tables, self.n_bits]}"
            )
        self._proj = state["proj"].clone()
        self._count = state["count"].clone()
        self._sum_h = state["sum_h"].clone()
        self._sum_y = state["sum_y"].clone()
        self._sum_yb = state["sum_yb"].clone()
        self._scale = float(state["scale"])
        if not math.isfinite(self._scale) or self._scale <= 0:
            raise ValueError(f"sketch state has an invalid scale {self._scale!r}")
