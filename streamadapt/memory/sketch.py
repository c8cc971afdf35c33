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
float64 counts and value sums). Beside it the sketch keeps the last batch it hashed (its
keys and their ``n x K`` buckets) and the last answer it read: ReLoop2 reads a labelled
batch's keys to score its correction and then writes the same keys, and a batch predicted
and labelled at once is read twice with nothing written between; the keys are compared,
and hashed or read again only when they, ``tau`` or the sums changed.

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
        self._offsets = np.arange(n_tables, dtype=np.int64) * (1 << n_bits)
        n_buckets = n_tables << n_bits
        # count, sum of labels, sum of base predictions: columns of one array, so that a
        # write is one scatter and a read one gather
        self._sums = torch.zeros(n_buckets, 3, dtype=torch.float64)
        self._count, self._sum_y, self._sum_yb = self._sums.unbind(1)
        self._sum_h = torch.zeros(n_buckets, dim, dtype=torch.float32)
        self._last_hashed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._writes = 0  # changes of the sums so far (a read is valid until the next)
        self._last_read: tuple[int, float, torch.Tensor, MemoryRead] | None = None
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
        return self._buckets(as_keys(keys, self.dim))

    def _buckets(self, h: torch.Tensor) -> torch.Tensor:
        """The SimHash bits of each table read as a little-endian number (packed 8 to a
        byte, a table's bits padded to whole bytes), plus the table's offset."""
        n, k, bits = h.shape[0], self.n_tables, self.n_bits
        signs = (h @ self._proj).numpy() > 0  # numpy compares faster than torch
        width = (bits + 7) // 8
        if bits % 8:
            padded = np.zeros((n, k, 8 * width), dtype=np.bool_)
            padded[:, :, :bits] = signs.reshape(n, k, bits)
            signs = padded
        packed = np.packbits(signs.reshape(n, -1), axis=1, bitorder="little")
        packed = packed.reshape(n, k, width)
        code = packed[:, :, 0].astype(np.int64)
        for j in range(1, width):
            code |= packed[:, :, j].astype(np.int64) << (8 * j)
        code += self._offsets
        return torch.from_numpy(code)

    def _hashed(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`buckets` of ``h``, reused when ``h`` equals the keys of the last call (a
        labelled batch is read, to score the correction, then written)."""
        last = self._last_hashed
        if last is not None and last[0].shape == h.shape and torch.equal(last[0], h):
            return last[1]
        idx = self._buckets(h)
        self._last_hashed = (h.clone(), idx)
        return idx

    def read(self, keys: Any, tau: float) -> MemoryRead:
        h = as_keys(keys, self.dim)
        last = self._last_read
        if (last is not None and last[0] == self._writes and last[1] == tau
                and last[2].shape == h.shape and torch.equal(last[2], h)):
            # the same keys, the sketch unchanged since (a batch predicted, then its labels
            # scored at once): the same answer
            r = last[3]
            return MemoryRead(r.ybar.copy(), r.ybar_base.copy(), r.n_neighbours.copy())
        out = self._read(h, tau)
        self._last_read = (self._writes, tau, h.clone(), out)
        return MemoryRead(out.ybar.copy(), out.ybar_base.copy(), out.n_neighbours.copy())

    def _read(self, h: torch.Tensor, tau: float) -> MemoryRead:
        idx = self._hashed(h)
        n, k = idx.shape
        flat = idx.reshape(-1)
        sums = self._sums.index_select(0, flat).view(n, k, 3)  # count, sum y, sum y_base
        keys = self._sum_h.index_select(0, flat).view(n, k, self.dim)
        denom = keys.norm(dim=2) * h.norm(dim=1, keepdim=True)
        sims = torch.bmm(keys, h.unsqueeze(2)).squeeze(2) / denom.clamp_min(1e-12)
        count = sums[:, :, 0]
        threshold = self.min_count * self._scale * self.decay if self.min_count > 0 else 0.0
        mask = count > threshold
        safe = count.clamp_min(1e-300)
        return softmax_pool(sims, mask, sums[:, :, 1] / safe, sums[:, :, 2] / safe, tau)

    def write(self, keys: Any, ys: Any, y_base: Any) -> int:
        h, y, yb = self._write_batch(keys, ys, y_base)
        n = h.shape[0]
        if n == 0:
            return 0
        self._writes += 1
        if self.decay < 1.0:
            # sample i of the batch is followed by n - 1 - i later ones
            w = self._scale * self.decay ** -np.arange(n, dtype=np.float64)
            self._scale *= self.decay ** -n
        else:
            w = np.ones(n)
        weights = torch.from_numpy(w)
        idx = self._hashed(h).reshape(-1)  # row-major: sample, then table
        k = self.n_tables
        vals = torch.from_numpy(np.stack([w, y * w, yb * w], axis=1))
        self._sums.index_add_(0, idx, vals.repeat_interleave(k, dim=0))
        hw = h * weights.float()[:, None] if self.decay < 1.0 else h
        self._sum_h.index_add_(0, idx, hw.repeat_interleave(k, dim=0))
        if self._scale > _RESCALE_AT:
            self._rescale()
        return n

    def _rescale(self) -> None:
        s = self._scale
        self._sums /= s
        self._sum_h /= s
        self._scale = 1.0

    def reset(self) -> None:
        for t in (self._sums, self._sum_h):
            t.zero_()
        self._writes += 1
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
        scale = float(state["scale"])
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"sketch state has an invalid scale {scale!r}")
        targets = {"proj": self._proj, "count": self._count, "sum_y": self._sum_y,
                   "sum_yb": self._sum_yb, "sum_h": self._sum_h}
        for name, t in targets.items():
            if tuple(state[name].shape) != tuple(t.shape):
                raise ValueError(f"sketch state {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(t.shape)}")
        for name, t in targets.items():  # in place: the three sums share one array
            t.copy_(state[name])
        self._last_hashed = None  # the projections changed
        self._writes += 1
        self._scale = scale
