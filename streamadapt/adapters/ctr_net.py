"""A neural click model learning online: hashed field embeddings, DCN-v2 and a wide part.

The slow learner of ReLoop2 (Zhu et al., KDD 2023, arXiv 2306.08808) is "any CTR model";
this one follows DCN-v2 (Wang et al., "DCN V2: Improved Deep & Cross Network", WWW 2021),
one of the paper's base models, in its parallel form, with two sparse terms beside it:

* every categorical field (user, item, each ``categorical`` entry and, with
  ``time_fields``, the UTC hour of day and day of week of the timestamp) is hashed (CRC-32
  of ``"field=value"``, so stable across processes) into one shared table of ``n_buckets``
  embeddings of size ``emb_dim``; numeric fields are standardised online (running mean and
  variance, clipped to +-5);
* ``x0`` = the concatenated embeddings and numeric values; a cross network
  ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` (``n_cross`` layers) runs beside a ReLU MLP
  (``deep``); their outputs meet in a ``tanh`` layer of size ``hidden_dim``, the hidden
  representation handed to the error memory, then a linear logit. ``tanh`` keeps the key
  sign-symmetric, which SimHash needs to spread keys over buckets;
* a factorisation machine (Rendle, ICDM 2010) is added to that logit, as DeepFM (Guo et
  al., IJCAI 2017) adds one to its deep part: per hashed token a weight ``w`` and
  ``fm_dim`` factors ``v`` (a second table, same hash), ``sum_i w_i + sum_{i<j} <v_i, v_j>``
  over the event's categorical fields;
* a wide part of token pairs, the cross-product features of Wide & Deep (Cheng et al.,
  DLRS 2016) taken over every pair of fields: the event's two tokens of fields ``i < j``
  are hashed (with the pair's number) into a table of ``pair_buckets`` weights, and the
  event's pair weights are summed into the logit. Where the factorisation machine scores a
  pair by a product of two factor vectors, this keeps one free weight per pair seen.

The two sparse terms learn by plain SGD **per event** (the gradient of a step is summed
over its events, not averaged; rates ``fm_lr`` and ``pair_lr``), as the factorisation
machine is trained in its paper and as online logistic regression is. Under SGD a weight
moves in proportion to how often its token occurs, so the weights of frequent tokens (an
airline, an airport, an hour) follow a change in their click rate within a few hundred
events, while rare tokens move little; Adam's normalised step moves every weight by at
most its rate per step whatever its token's frequency. Factors start at
``N(0, fm_init**2)`` (libFM's default 0.1: SGD on a pairwise term grows factors in
proportion to their size, so tiny ones barely learn), weights at 0. A user or item that is
:data:`~streamadapt.events.NO_ID` is no token of the sparse terms (a stream without users
would otherwise carry a constant token: a second bias and a copy of every first-order
term, learning at the sparse rate). The dense part (embeddings, cross network, MLP, head)
takes one Adam step (SparseAdam for the embeddings) per ``step_size`` labelled samples,
optionally under a schedule (``warmup`` steps of linear warm-up, then
``1 / sqrt(1 + t / decay)``, applied to every rate; both off by default). Why, and what was
measured, is in the notes of :class:`CtrNet`.

How it runs (docs/performance.md, "Click path"): a batch is encoded once (per field a
dictionary from value to table row; the forward pass and the learning of the same batch
share it), predicted by the network's arithmetic written out in numpy over the torch
module's own weights, and learnt step by step the same way: hand-written gradients of the
log loss, a flat Adam over the dense weights (one vector, as their gradient and moments),
SparseAdam's arithmetic on the step's distinct embedding rows, and the sparse terms' SGD
as scatter-adds. Everything that does not depend on the weights
(numeric scaling per step, pair rows, each step's distinct rows) is taken for the whole
batch first. The result equals ``loss.backward()`` with the torch optimizers up to float32
rounding (``tests/test_ctr_click_path.py``), and the saved state keeps the torch optimizers'
format.

The key handed to the error memory is a choice (the paper suggests "a hidden layer, e.g.
the last"): ``key="input"`` (the default) gives the concatenated embeddings of user, item
and categorical fields (no time, no numeric fields), so neighbours are samples that share
users, items or categories; ``key="last"`` gives the last hidden layer. On MovieLens and
on the synthetic drift stream the input key corrects more (``benchmarks/reloop2.py``).

Test-time adaptation (NHL; Tang et al., CVPR 2023, arXiv 2303.00914): the deep tower's
first dense layer over ``x0`` is the input layer the soft Hebbian rule updates, and a
per-unit affine neuro-modulator after it (the identity at initialisation, trained by the
supervised steps too) takes the gradient of :meth:`CtrNet.tta_loss`, prediction entropy
held to the running click rate; everything else, the sparse terms included, stays frozen.

The fields are fixed by the first batch the model sees (or by ``fields``); fields absent
from an event take a per-field "missing" token, fields never declared are ignored.

>>> from streamadapt.checks import sample_data
>>> xs, ys = sample_data("ctr", n=240)
>>> net = CtrNet(seed=0)
>>> for i in range(0, 240, 16):
...     net.learn_many(xs[i:i + 16], ys[i:i + 16])
>>> p, h = net.predict_and_hidden_many(xs[:3])
>>> p.shape, h.shape, bool(((p > 0) & (p < 1)).all())
((3,), (3, 24), True)
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from operator import is_
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from streamadapt.adapters.base import Adapter, check_finite_inputs
from streamadapt.adapters.registry import register
from streamadapt.events import NO_ID, Impression
from streamadapt.state import load_optimizer_state, optimizer_state
from streamadapt.tta.net import AffineModulator

__all__ = ["CtrNet", "DCN", "KEYS"]

#: Token rows remembered, over all fields.
_CACHE_LIMIT = 1 << 20
#: What ``hidden_many`` can return.
KEYS = ("input", "last")
_MISSING = "\x00missing"
#: State format tag (v2: the neuro-modulator after the deep tower's first layer; v3: the
#: factorisation machine's table and optimizer, the schedule's step count, per-field
#: numeric counts; v4: the pair table, plain SGD for the sparse terms, renamed time tokens).
_FORMAT = "ctr-net-v4"
#: The Mersenne prime ``2**31 - 1`` of the pair hash.
_PRIME = (1 << 31) - 1
#: The smallest normal float32.
_TINY = float(np.finfo(np.float32).tiny)
#: ``(beta1, beta2, eps)``: torch's defaults for Adam and SparseAdam.
_ADAM = (0.9, 0.999, 1e-8)


class _Tokens(NamedTuple):
    """A batch as the network reads it."""

    #: Row of the hashed tables of every field of every event, ``(n, n_fields)`` int64.
    idx: np.ndarray
    #: 0 for a user or item that is :data:`~streamadapt.events.NO_ID`, else 1 (float32).
    present: np.ndarray
    #: Raw numeric values, ``(n, n_numeric)`` float64, NaN where missing.
    raw: np.ndarray


class _TokenRows(dict[str, int]):
    """Value -> row of the hashed table for one field: the CRC-32 of ``"field=value"``
    modulo the table size, computed once per value; at ``limit`` values it starts afresh."""

    def __init__(self, prefix: str, n_buckets: int, limit: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.n_buckets = n_buckets
        self.limit = limit

    def __missing__(self, value: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        row = self[value] = zlib.crc32(f"{self.prefix}{value}".encode()) % self.n_buckets
        return row


#: The largest product ``m * n * k`` OpenBLAS computes on one thread (its
#: ``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``).
_BLAS_ONE_THREAD = 65536 * 4


def _torch_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul`` by torch (on torch's threads)."""
    r = (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    if out is None:
        return r
    out[...] = r
    return out


#: ``np.add.reduce``: a sum without the Python layer of ``ndarray.sum``.
_sum = np.add.reduce


@functools.cache
def _load_optimizer_stack() -> None:
    """Build a throwaway torch optimizer once per process: the first one built imports
    torch's compiler stack (1-1.5 s on this project's machine). The torch optimizers are
    built only to save or load a state, which may first happen mid-stream (a checkpoint,
    the drift safeguard's copy); constructing the model pays that pause before the stream
    instead."""
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


class DCN(nn.Module):
    """DCN-v2 (parallel) over a shared embedding table, plus the sparse terms; returns
    ``(logit, hidden, field embeddings)``.

    The deep tower's first ``Linear`` over ``x0`` is followed by ``mod``, a per-unit
    :class:`~streamadapt.tta.net.AffineModulator` (the identity at initialisation), the
    neuro-modulator of test-time adaptation; without a deep tower there is none. ``fm``
    (per token a weight and ``fm_dim`` factors) and ``pairs`` (a weight per hashed pair of
    tokens) are the sparse terms added to the logit; either may be ``None``.
    """

    def __init__(self, n_buckets: int, n_fields: int, n_numeric: int, emb_dim: int,
                 n_cross: int, deep: Sequence[int], hidden_dim: int, fm_dim: int = 0,
                 fm_init: float = 0.1, pair_buckets: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_buckets, emb_dim, sparse=True)
        nn.init.normal_(self.emb.weight, std=0.01)
        d0 = n_fields * emb_dim + n_numeric
        self.cross = nn.ModuleList(nn.Linear(d0, d0) for _ in range(n_cross))
        layers: list[nn.Module] = []
        width = d0
        for w in deep:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(d0 + width, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)
        self.mod = AffineModulator(deep[0]) if deep else None
        # factorisation machine: per token a weight (column 0, zero) and fm_dim factors
        self.fm = nn.Embedding(n_buckets, fm_dim + 1, sparse=True) if fm_dim else None
        if self.fm is not None:
            nn.init.normal_(self.fm.weight, std=fm_init)
            with torch.no_grad():
                self.fm.weight[:, 0] = 0.0
        # wide part: one weight per hashed pair of tokens (field i's token, field j's token)
        self.pairs = nn.Embedding(pair_buckets, 1, sparse=True) if pair_buckets else None
        if self.pairs is not None:
            nn.init.zeros_(self.pairs.weight)
        rows, cols = torch.triu_indices(n_fields, n_fields, 1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.n_buckets = n_buckets

    def fm_logit(self, idx: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i w_i + sum_{i<j} <v_i, v_j>`` over the fields' tokens that are
        ``present`` (a 0/1 float mask, all by default); 0 without a factorisation machine."""
        if self.fm is None:
            return torch.zeros(idx.shape[0])
        t = self.fm(idx)
        if present is not None:
            t = t * present.unsqueeze(-1)
        w, v = t[..., 0], t[..., 1:]
        return w.sum(1) + 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)

    def pair_index(self, idx: torch.Tensor) -> torch.Tensor:
        """Row of the pair table for every pair of fields ``i < j`` of every event: the
        triple (token i's bucket, token j's bucket, pair number), a unique integer below
        ``2**63``, reduced modulo the Mersenne prime ``2**31 - 1``, scrambled by the
        MINSTD multiplier and taken modulo the table size (no integer overflow)."""
        assert self.pairs is not None
        n_pairs = self.pair_rows.numel()
        a, b = idx[:, self.pair_rows], idx[:, self.pair_cols]
        key = (a * self.n_buckets + b) * n_pairs + torch.arange(n_pairs)
        return (key % _PRIME) * 48271 % _PRIME % self.pairs.num_embeddings

    def pair_logit(self, idx: torch.Tensor, present: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Sum of the weights of the event's token pairs whose tokens are both
        ``present``; 0 without a pair table."""
        if self.pairs is None or self.pair_rows.numel() == 0:
            return torch.zeros(idx.shape[0])
        w = self.pairs(self.pair_index(idx)).squeeze(-1)
        if present is not None:
            w = w * present[:, self.pair_rows] * present[:, self.pair_cols]
        return w.sum(1)

    def x0(self, idx: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, field embeddings (n, n_fields, emb_dim))``."""
        e = self.emb(idx)
        return torch.cat([e.flatten(1), num], dim=1), e

    def from_x0(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit, last hidden layer)`` of the DCN alone from the concatenated ``x0``."""
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        d = x0
        for i, layer in enumerate(self.deep):
            d = layer(d)
            if i == 0 and self.mod is not None:
                d = self.mod(d)
        h = torch.tanh(self.head(torch.cat([x, d], dim=1)))
        return self.out(h).squeeze(1), h

    def sparse_logit(self, idx: torch.Tensor, present: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """The factorisation machine plus the pair weights."""
        return self.fm_logit(idx, present) + self.pair_logit(idx, present)

    def forward(self, idx: torch.Tensor, num: torch.Tensor, present: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logit, last hidden layer, field embeddings (n, n_fields, emb_dim))``."""
        x0, e = self.x0(idx, num)
        logit, h = self.from_x0(x0)
        return logit + self.sparse_logit(idx, present), h, e


@register("ctr-net", task="ctr",
          summary="DCN-v2 over hashed field embeddings (torch), online Adam per micro-batch")
class CtrNet(Adapter):
    """Online DCN-v2 click model with hashed embeddings; exposes its last hidden layer.

    Parameters
    ----------
    n_buckets
        Rows of the shared hashed embedding table.
    emb_dim
        Embedding size per field.
    n_cross
        Cross layers (DCN-v2, full rank).
    deep
        Widths of the ReLU MLP beside the cross network.
    hidden_dim
        Size of the last hidden layer, the key of the error memory.
    lr
        Adam learning rate (dense weights and embeddings).
    step_size
        ``learn_many`` takes one Adam step per chunk of this many samples of its batch.
    time_fields
        Add hour of day and day of week (UTC) as categorical fields (tokens ``utc_hour=``
        and ``utc_dow=``); off by default (see the notes).
    key
        Which layer ``hidden_many`` returns: ``"input"`` (the embeddings of user, item and
        categorical fields) or ``"last"`` (the last hidden layer).
    fields
        Categorical field names to use besides user and item; ``None`` takes those of the
        first batch seen.
    tta_rate_weight
        Weight of the click-rate term in the test-time adaptation loss (0 = plain
        prediction entropy, as TENT; see :meth:`tta_loss`).
    rate_alpha
        Floor of the weight of a new label in the running click rate.
    fm_dim
        Factors per token of the factorisation machine added to the logit (0: none).
    fm_lr
        Plain SGD rate of the factorisation machine, per event: its gradient is the sum
        over the events of a step, not the mean.
    fm_init
        Standard deviation of the factors' normal initialisation (the weights start at 0).
    pair_lr
        Plain SGD rate per event of the pair weights (0: no pair table).
    pair_buckets
        Rows of the hashed pair table.
    warmup
        Steps of linear learning-rate warm-up (0: none).
    decay
        With ``decay > 0`` every learning rate is divided by ``sqrt(1 + t / decay)`` after
        ``t`` steps (0: constant).
    seed
        Seed of the weight initialisation.

    Notes
    -----
    Measured prequentially, batches of 256, the first 25 000 events of each stream
    (``bird_strikes``: all 19 302), AUC of ``ctr-net`` alone; "3 seeds" is the mean over
    model seeds 0, 1, 2, otherwise seed 0.

    *Why ``river-fm`` won on ``flights``* (0.7051 against 0.6847 over 3 seeds for the
    network before the sparse SGD terms, the pair table and the time-field default). Not
    hashing: ``flights`` holds 3 259 tokens (plane 3 120, destination 94, carrier 15, hour 19,
    weekday 7, origin 3, month 1), 1.35 % of them share a row of the ``2**18``-row table
    (``movielens`` 2.5 %, the others none). Not the numeric field: both models standardise
    ``log_distance`` online. The stream drifts: the late rate of a day ranges from 0.09 to
    0.51 over these 30 days (sd 0.093), and the running late rate of the past batches alone
    scores 0.635. Shuffling the same events removes the drift and reverses the ranking:
    ``river-fm`` 0.6440 and ``river-logreg`` 0.6458 against 0.6631 for the old network (in
    time order 0.7039, 0.6998, 0.6853). River's models step by SGD at 0.05 per event on
    one-hot tokens, so the weights of frequent tokens follow the daily rate; the old
    network's Adam steps at 0.002 per 8 events did not.

    *What was tried on the old network* (``flights``): first-order weights apart at Adam
    0.01 / 0.03: 0.6794 / 0.6610 (Adam's normalised steps make rare tokens noisy, not
    frequent ones fast); the same weights by SGD at 0.0125 per event: 0.6959; one Adam step
    per 2 events: 0.6974 (four times the dense steps); the running click rate of past
    labels (half-lives 256 and 2 048 events) as numeric inputs: 0.6791; without the time
    fields: 0.6894.

    *What was kept*, each a default now:

    * Sparse terms by plain SGD per event. The whole factorisation machine by SGD at 0.025
      per event with factors started at 0.1 and no time fields: ``flights`` 0.7038 (3
      seeds), level with ``river-fm``. ``fm_lr`` trades the streams (3 seeds, with the
      pairs): 0.0125 gives ``flights`` 0.7058 / ``mpls_stops`` 0.7895 / ``bird_strikes``
      0.8451 / ``movielens`` 0.6736, the default 0.025 gives 0.7088 / 0.7873 / 0.8426 /
      0.6705; 0.05 (seed 0) 0.7085 / 0.7802 / 0.8348 / 0.6647. 0.025 keeps ``flights``
      clear of ``river-fm`` on every seed. ``fm_init=0.01`` (factors that barely learn under
      SGD): 0.7070 / 0.7886 / 0.8438 / 0.6725.
    * The pair table (Wide & Deep's crosses), ``pair_lr`` 0.01, against none
      (``pair_lr=0``), seed 0: ``flights`` 0.7080 / 0.7022, ``mpls_stops`` 0.7866 /
      0.7881, ``bird_strikes`` 0.8420 / 0.8410, ``movielens`` 0.6708 / 0.6690. ``pair_lr``
      0.005 / 0.02: ``flights`` 0.7055 / 0.7102, ``mpls_stops`` 0.7881 / 0.7821,
      ``bird_strikes`` 0.8425 / 0.8385, ``movielens`` 0.6703 / 0.6702. Pair collisions
      do not matter: 53 577 distinct pairs on ``flights``, 4.8 % of them sharing a row of
      the ``2**20`` table; ``2**22`` rows gave the same AUC.
    * No time fields by default. Every stream here carries its own time of day (and mostly
      its weekday) as a field, so UTC hour and weekday only repeat it, and with the old
      token names an ``hour`` field and the UTC hour were the very same tokens on
      ``movielens``, whose ``hour`` is the UTC hour. ``time_fields=True`` (seed 0): ``flights``
      0.7010, ``mpls_stops`` 0.7825, ``bird_strikes`` 0.8378, ``movielens`` 0.6494
      against 0.7080 / 0.7866 / 0.8420 / 0.6708. The time tokens are now ``utc_hour=`` and
      ``utc_dow=``, never a field's own token.
    * :data:`~streamadapt.events.NO_ID` is no token of the sparse terms: ``mpls_stops``
      (no users, no items), factorisation machine alone, 0.7896 against 0.7882 with the two
      constant tokens.

    *Left out* (seed 0 unless said): a learning-rate schedule: ``warmup=100`` ``flights``
    0.7091, ``mpls_stops`` 0.7851, ``bird_strikes`` 0.8385, ``movielens`` 0.6697 (against
    0.7080 / 0.7866 / 0.8420 / 0.6708); ``decay=1000`` 0.7015 / 0.7904 / 0.8454 / 0.6710:
    decay helps the steadier streams and costs the drifting one 0.65 points, so both stay
    off. A sparse rate moved online by the normalised hypergradient (Baydin et al., ICLR
    2018) rose five-fold on ``mpls_stops`` too and cost it 1.0-1.6 points (consecutive
    steps of 8 events share a residual that the next batch does not). Mixing the model
    with and without pairs by running log loss picked the pairs on ``mpls_stops``, whose
    log loss they lower while they lower its AUC. Numeric fields as real-valued inputs of
    the factorisation machine: ``flights`` -0.15, ``mpls_stops`` -0.3, ``bird_strikes``
    +0.2, ``movielens`` -0.2 points. A field-aware factorisation machine (4 factors per
    field pair) gave ``flights`` nothing (0.7040 against 0.7048). Per-field table sizes:
    at most 2.5 % of tokens share a row, so nothing to win. One Adam step per 4 events:
    ``flights`` +0.11, ``movielens`` +0.15, ``mpls_stops`` +0.02, ``bird_strikes`` -0.06
    points, for twice the dense steps.

    Earlier (the Adam-trained factorisation machine, ``clicks`` seed 1 and 40 000-event
    cuts): the factorisation machine is what closes the gap to ``river-fm`` on ``clicks``,
    whose clicks come from user x topic preferences; an FM over the DCN's own embeddings
    instead of a second table did nothing at the DCN's rate and cost the real streams
    0.02-0.03 AUC at a faster one; a calendar-day token lowered ``flights`` and
    ``movielens``. Numeric standardisation ignores a missing value (count, mean and M2 per
    field, merged per batch). On ``clicks`` (seeds 0, 1, 2, 20 000 events) the present
    defaults score 0.6312 / 0.6198 / 0.6163 against ``river-fm``'s 0.6231 / 0.6125 /
    0.6097.
    """

    task = "ctr"
    has_hidden = True
    exact_batch_learning = False

    def __init__(
        self,
        n_buckets: int = 1 << 18,
        emb_dim: int = 8,
        n_cross: int = 2,
        deep: tuple[int, ...] = (64,),
        hidden_dim: int = 32,
        lr: float = 0.002,
        step_size: int = 8,
        time_fields: bool = False,
        key: str = "input",
        fields: tuple[str, ...] | None = None,
        tta_rate_weight: float = 50.0,
        rate_alpha: float = 1e-3,
        fm_dim: int = 8,
        fm_lr: float = 0.025,
        fm_init: float = 0.1,
        pair_lr: float = 0.01,
        pair_buckets: int = 1 << 20,
        warmup: int = 0,
        decay: int = 0,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_buckets", n_buckets), ("emb_dim", emb_dim),
                            ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if n_cross < 0:
            raise ValueError(f"n_cross must be >= 0, got {n_cross}")
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r}; valid choices: {', '.join(KEYS)}")
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if fm_dim < 0:
            raise ValueError(f"fm_dim must be >= 0, got {fm_dim}")
        if not fm_lr > 0:
            raise ValueError(f"fm_lr must be > 0, got {fm_lr}")
        if not fm_init >= 0:
            raise ValueError(f"fm_init must be >= 0, got {fm_init}")
        if not pair_lr >= 0:
            raise ValueError(f"pair_lr must be >= 0, got {pair_lr}")
        if pair_buckets < 1:
            raise ValueError(f"pair_buckets must be >= 1, got {pair_buckets}")
        if warmup < 0 or decay < 0:
            raise ValueError(f"warmup and decay must be >= 0, got {warmup} and {decay}")
        if not tta_rate_weight >= 0:
            raise ValueError(f"tta_rate_weight must be >= 0, got {tta_rate_weight}")
        if not 0 < rate_alpha <= 1:
            raise ValueError(f"rate_alpha must be in (0, 1], got {rate_alpha}")
        self.n_buckets = n_buckets
        self.emb_dim = emb_dim
        self.n_cross = n_cross
        self.deep = tuple(deep)
        self.hidden_dim = hidden_dim
        self.lr = lr
        self.step_size = step_size
        self.time_fields = time_fields
        self.key = key
        self.fields = None if fields is None else tuple(fields)
        self.tta_rate_weight = tta_rate_weight
        self.rate_alpha = rate_alpha
        self.fm_dim = fm_dim
        self.fm_lr = fm_lr
        self.fm_init = fm_init
        self.pair_lr = pair_lr
        self.pair_buckets = pair_buckets
        self.warmup = warmup
        self.decay = decay
        self.seed = seed
        self._net: DCN | None = None
        self._lr_scale = 1.0
        self._t = 0  # optimizer steps taken
        self._rate = [0.0, 0.0]  # labels seen, running click rate
        self._cat: list[str] = []  # categorical field names (besides user, item, time)
        self._num: list[str] = []
        self._opts: dict[str, torch.optim.Optimizer | None] | None = None
        _load_optimizer_stack()
        self._rows: list[_TokenRows] = []  # per categorical field: value -> table row
        self._last: tuple[tuple[Impression, ...], _Tokens] | None = None
        self._last_forward: tuple[_Tokens, list[np.ndarray], tuple[np.ndarray, np.ndarray]
                                  ] | None = None

    # -- features -------------------------------------------------------------------------
    def _build(self, xs: Sequence[Impression]) -> None:
        first = xs[0]
        self._cat = sorted(self.fields if self.fields is not None else first.categorical)
        self._num = sorted(first.numeric)
        self._net = self._new_net(len(self._cat), len(self._num))
        self._opts = None
        k = len(self._num)
        self._stats = np.zeros((3, k))  # count, mean, M2 (Welford)
        self._bind()

    def _new_net(self, n_cat: int, n_num: int, init: bool = True) -> DCN:
        """A new network; with ``init=False`` its weights are left uninitialised (the
        caller loads them all: the random initialisation of the tables takes longer than
        copying a saved state into them)."""
        n_fields = 2 + n_cat + (2 if self.time_fields else 0)
        n_pairs = n_fields * (n_fields - 1) // 2
        if self.pair_lr and self.n_buckets ** 2 * max(n_pairs, 1) >= 1 << 62:
            raise ValueError(f"n_buckets={self.n_buckets} is too large for the pair hash with "
                             f"{n_fields} fields; lower it or set pair_lr=0")
        args = (self.n_buckets, n_fields, n_num, self.emb_dim, self.n_cross, self.deep,
                self.hidden_dim, self.fm_dim, self.fm_init,
                self.pair_buckets if self.pair_lr else 0)
        if not init:
            with torch.device("meta"):
                net = DCN(*args)
            net = net.to_empty(device="cpu")
            # the pair layout is no state: compute it again
            net.pair_rows, net.pair_cols = torch.triu_indices(n_fields, n_fields, 1)
            return net
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return DCN(*args)

    def _dense_params(self) -> list[nn.Parameter]:
        assert self._net is not None
        return [p for n, p in self._net.named_parameters()
                if not n.startswith(("emb.", "fm.", "pairs."))]

    def _torch_optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        """The torch optimizers (built on first use: building one imports torch's compiler
        stack, a second or more), the format of the optimizer states in a saved state and
        the holders of the learning rates saved with it; the steps run in :meth:`_step`,
        their arithmetic that of these optimizers: Adam for the dense weights, SparseAdam
        for the embeddings, plain SGD for the sparse terms (gradients summed per step)."""
        if self._opts is None:
            assert self._net is not None
            net = self._net
            self._opts = {
                "opt": torch.optim.Adam(self._dense_params(), lr=self.lr),
                "opt_emb": torch.optim.SparseAdam([net.emb.weight], lr=self.lr),
                "opt_fm": (torch.optim.SGD([net.fm.weight], lr=self.fm_lr)
                           if net.fm is not None else None),
                "opt_pair": (torch.optim.SGD([net.pairs.weight], lr=self.pair_lr)
                             if net.pairs is not None else None),
            }
            self._set_lrs()
        return self._opts

    @property
    def _opt(self) -> torch.optim.Optimizer:
        opt = self._torch_optimizers()["opt"]
        assert opt is not None
        return opt

    @property
    def _opt_emb(self) -> torch.optim.Optimizer:
        opt = self._torch_optimizers()["opt_emb"]
        assert opt is not None
        return opt

    @property
    def _opt_fm(self) -> torch.optim.Optimizer | None:
        return self._torch_optimizers()["opt_fm"]

    @property
    def _opt_pair(self) -> torch.optim.Optimizer | None:
        return self._torch_optimizers()["opt_pair"]

    def _optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        """Every torch optimizer with its base learning rate."""
        opts = self._torch_optimizers()
        base = {"opt": self.lr, "opt_emb": self.lr, "opt_fm": self.fm_lr,
                "opt_pair": self.pair_lr}
        return [(opt, base[k]) for k, opt in opts.items() if opt is not None]

    def _lr_factor(self) -> float:
        """What multiplies every base rate at step ``_t``: lr scale x schedule."""
        t, f = self._t, self._lr_scale
        if self.warmup:
            f *= min(1.0, (t + 1) / self.warmup)
        if self.decay:
            f /= math.sqrt(1.0 + t / self.decay)
        return f

    def _set_lrs(self) -> None:
        """Every torch optimizer's learning rate at step ``_t`` (base rate x lr scale x
        schedule), if they are built."""
        if self._opts is None:
            return
        f = self._lr_factor()
        for opt, lr in self._optimizers():
            for g in opt.param_groups:
                g["lr"] = lr * f

    # -- the hand-written step's layout -----------------------------------------------------
    def _bind(self) -> None:
        """Lay out the weights for :meth:`_step` and :meth:`_forward`: the dense weights
        become views of one flat vector (their gradient and Adam's moments are flat vectors
        too, so an Adam step is a few vector operations), every weight is also seen as a
        numpy array sharing its memory, and the torch optimizers' moments (present after
        :meth:`load_state_dict`) move into these arrays."""
        assert self._net is not None
        net = self._net
        dense = self._dense_params()
        sizes = [p.numel() for p in dense]
        flat = torch.cat([p.detach().reshape(-1) for p in dense])
        for p, view in zip(dense, flat.split(sizes), strict=True):
            p.data = view.view_as(p)
        self._flat = flat.numpy()
        self._gflat = np.zeros_like(self._flat)
        self._m = np.zeros_like(self._flat)
        self._v = np.zeros_like(self._flat)
        self._tmp = np.zeros_like(self._flat)
        self._adam_t = 0
        self._hyper = (_ADAM, _ADAM)
        emb = net.emb.weight
        self._m_emb = torch.zeros_like(emb, requires_grad=False)
        self._v_emb = torch.zeros_like(emb, requires_grad=False)
        self._emb_t = 0
        self._opt_from_torch()
        self._views()
        fields = ("user", "item", *self._cat)  # the cache's bound shared among them
        self._rows = [_TokenRows(f"{f}=", self.n_buckets, _CACHE_LIMIT // len(fields))
                      for f in fields]
        b = self.n_buckets
        self._time_rows = (
            np.array([zlib.crc32(f"utc_hour={h}".encode()) % b for h in range(24)]),
            np.array([zlib.crc32(f"utc_dow={d}".encode()) % b for d in range(7)]))
        self._last = None
        self._last_forward = None

    def _views(self) -> None:
        """numpy views of every weight and gradient (kept by :meth:`_check_views`)."""
        assert self._net is not None
        net = self._net
        w = {n: p.detach().numpy() for n, p in net.named_parameters()}
        grads: dict[str, np.ndarray] = {}
        off = 0
        for p in self._dense_params():
            n = p.numel()
            grads[next(k for k, q in net.named_parameters() if q is p)] = \
                self._gflat[off:off + n].reshape(p.shape)
            off += n
        lin = [i for i, m in enumerate(net.deep) if isinstance(m, nn.Linear)]
        self._np = {
            "emb": w["emb.weight"],
            "cross": [(w[f"cross.{i}.weight"], w[f"cross.{i}.bias"],
                       grads[f"cross.{i}.weight"], grads[f"cross.{i}.bias"])
                      for i in range(len(net.cross))],
            "deep": [(w[f"deep.{i}.weight"], w[f"deep.{i}.bias"],
                      grads[f"deep.{i}.weight"], grads[f"deep.{i}.bias"]) for i in lin],
            "mod": None if net.mod is None else (w["mod.scale"], w["mod.shift"],
                                                 grads["mod.scale"], grads["mod.shift"]),
            "head": (w["head.weight"], w["head.bias"], grads["head.weight"],
                     grads["head.bias"]),
            "out": (w["out.weight"], w["out.bias"], grads["out.weight"], grads["out.bias"]),
            "fm": w.get("fm.weight"),
            "pairs": None if net.pairs is None else w["pairs.weight"].reshape(-1),
            "m_emb": self._m_emb.numpy(),
            "v_emb": self._v_emb.numpy(),
        }
        self._pair_cols = (net.pair_rows.numpy(), net.pair_cols.numpy())
        self._ptrs = self._data_ptrs()
        # numpy's BLAS multiplies small matrices on one thread and larger ones on several,
        # whose spinning workers cost more than the product on a busy machine: past that
        # size the steps multiply with torch (one thread)
        shapes = [w.shape for w, *_ in self._np["cross"] + self._np["deep"]]
        shapes.append(self._np["head"][0].shape)
        per_row = max(a * b for a, b in shapes)
        self._mm: Any = (np.matmul if self.step_size * per_row <= _BLAS_ONE_THREAD
                         else _torch_matmul)
        # rows of a forward pass per chunk: as many as one BLAS thread takes (with torch,
        # any number)
        self._chunk = (max(1, _BLAS_ONE_THREAD // per_row) if self._mm is np.matmul
                       else 1 << 30)

    def _data_ptrs(self) -> list[int]:
        assert self._net is not None
        return [p.data_ptr() for p in self._net.parameters()]

    def _check_views(self) -> None:
        """Re-attach a weight whose tensor was replaced (``p.data = ...``) from outside."""
        if self._data_ptrs() == self._ptrs:
            return
        off = 0
        with torch.no_grad():
            for p in self._dense_params():
                n = p.numel()
                view = torch.from_numpy(self._flat[off:off + n]).view_as(p)
                if p.data_ptr() != view.data_ptr():
                    view.copy_(p.data)
                    p.data = view
                off += n
        self._views()

    def _opt_from_torch(self) -> None:
        """Move the torch optimizers' moments and hyperparameters (when built) into the
        flat arrays."""
        if self._opts is None:
            return
        b1, b2 = self._opt.param_groups[0]["betas"]
        eb1, eb2 = self._opt_emb.param_groups[0]["betas"]
        self._hyper = ((float(b1), float(b2), float(self._opt.param_groups[0]["eps"])),
                       (float(eb1), float(eb2), float(self._opt_emb.param_groups[0]["eps"])))
        st = self._opt.state
        params = self._dense_params()
        off = 0
        for p in params:
            n = p.numel()
            if p in st:
                self._adam_t = int(st[p]["step"])
                self._m[off:off + n] = st[p]["exp_avg"].reshape(-1).numpy()
                self._v[off:off + n] = st[p]["exp_avg_sq"].reshape(-1).numpy()
            off += n
        st.clear()
        assert self._net is not None
        emb = self._net.emb.weight
        st = self._opt_emb.state
        if emb in st:
            self._emb_t = int(st[emb]["step"])
            self._m_emb.copy_(st[emb]["exp_avg"])
            self._v_emb.copy_(st[emb]["exp_avg_sq"])
        st.clear()

    def _opt_to_torch(self) -> None:
        """Put the moments into the torch optimizers' state, in their own format (copies)."""
        self._opt.state.clear()
        self._opt_emb.state.clear()
        if self._adam_t:
            off = 0
            for p in self._dense_params():
                n = p.numel()
                self._opt.state[p] = {
                    "step": torch.tensor(float(self._adam_t)),
                    "exp_avg": torch.from_numpy(self._m[off:off + n].copy()).view_as(p),
                    "exp_avg_sq": torch.from_numpy(self._v[off:off + n].copy()).view_as(p)}
                off += n
        if self._emb_t:
            assert self._net is not None
            self._opt_emb.state[self._net.emb.weight] = {
                "step": self._emb_t, "exp_avg": self._m_emb.clone(),
                "exp_avg_sq": self._v_emb.clone()}
        self._set_lrs()

    # -- features ---------------------------------------------------------------------------
    def _tokens(self, xs: Sequence[Impression]) -> _Tokens:
        """Table rows, presence and raw numeric values of ``xs`` (NaN: missing), one list
        comprehension and one dictionary pass per field; the last batch is remembered, so
        the forward pass and the learning of the same batch encode it once."""
        if self._net is None:
            self._build(xs)
        last = self._last
        if last is not None and len(last[0]) == len(xs) and all(map(is_, last[0], xs)):
            return last[1]
        n, rows = len(xs), self._rows
        n_fields = len(rows) + (2 if self.time_fields else 0)
        idx = np.empty((n, n_fields), dtype=np.int64)
        present = np.ones((n, n_fields), dtype=np.float32)
        for j, ids in enumerate(([x.user_id for x in xs], [x.item_id for x in xs])):
            idx[:, j] = np.fromiter(map(rows[j].__getitem__, ids), np.int64, n)
            present[:, j] = np.fromiter(map(NO_ID.__ne__, ids), np.bool_, n)
        if self._cat:
            cats = [x.categorical for x in xs]
            for j, f in enumerate(self._cat, 2):
                vals = [c.get(f, _MISSING) for c in cats]
                idx[:, j] = np.fromiter(map(rows[j].__getitem__, vals), np.int64, n)
        if self.time_fields:
            hours = np.floor_divide(np.fromiter((x.timestamp for x in xs), np.float64, n),
                                    3600.0).astype(np.int64)
            idx[:, -2] = self._time_rows[0][hours % 24]
            idx[:, -1] = self._time_rows[1][(hours // 24 + 4) % 7]
        raw = np.empty((n, len(self._num)))
        if self._num:
            nan = math.nan
            nums = [x.numeric for x in xs]
            for j, f in enumerate(self._num):
                raw[:, j] = np.fromiter((d.get(f, nan) for d in nums), np.float64, n)
        out = _Tokens(idx, present, raw)
        self._last = (tuple(xs), out)
        return out

    def _encode(self, xs: Sequence[Impression]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(token rows (n, n_fields), scaled numeric values, present)`` as tensors;
        ``present`` is 0 for a user or item that is :data:`~streamadapt.events.NO_ID`, 1
        elsewhere."""
        tok = self._tokens(xs)
        return (torch.from_numpy(tok.idx.copy()), torch.from_numpy(self._scaled(tok.raw)),
                torch.from_numpy(tok.present.copy()))

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        """Standardised numeric values (float32), a missing value at the running mean (0)."""
        if not self._num:
            return np.empty((raw.shape[0], 0), dtype=np.float32)
        out = self._scale(raw)
        out[np.isnan(raw)] = 0.0
        return out.astype(np.float32)

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        n, mean, m2 = self._stats
        var = np.where(n > 1, m2 / np.maximum(n - 1, 1), 1.0)
        std = np.where(var > 1e-12, np.sqrt(np.maximum(var, 1e-12)), 1.0)
        return np.clip((raw - mean) / std, -5.0, 5.0)

    def _update_stats(self, raw: np.ndarray) -> None:
        """Merge a batch into the running count, mean and M2 per field (Chan et al.'s
        pairwise update); ``NaN`` marks a missing value, which counts for nothing. (Learning
        merges step by step, all steps of a batch at once: :meth:`_learn_scaled`.)"""
        n, mean, m2 = self._stats
        ok = ~np.isnan(raw)
        k = ok.sum(0)
        b_mean = np.where(ok, raw, 0.0).sum(0) / np.maximum(k, 1)
        b_m2 = (np.where(ok, raw - b_mean, 0.0) ** 2).sum(0)
        total = n + k
        delta = b_mean - mean
        w = k / np.maximum(total, 1)
        self._stats = np.stack([total, mean + delta * w, m2 + b_m2 + delta ** 2 * n * w])

    # -- the network in numpy (the torch module's arithmetic, its weights shared) -----------
    def _pair_index(self, idx: np.ndarray) -> np.ndarray:
        """:meth:`DCN.pair_index` in numpy (the same rows)."""
        rows, cols = self._pair_cols
        n_pairs = rows.size
        key = (idx[:, rows] * self.n_buckets + idx[:, cols]) * n_pairs + np.arange(n_pairs)
        return (key % _PRIME) * 48271 % _PRIME % self.pair_buckets

    def _dense(self, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """``(DCN logit, last hidden layer, what the backward pass needs)`` from ``x0``."""
        net, mm = self._np, self._mm
        x = x0
        cross = []
        for w, b, _, _ in net["cross"]:
            u = mm(x, w.T)
            u += b
            cross.append((x, u))
            x = x0 * u + x
        d = x0
        deep = []
        for i, (w, b, _, _) in enumerate(net["deep"]):
            z = mm(d, w.T)
            z += b
            z0 = z
            if i == 0 and net["mod"] is not None:
                scale, shift = net["mod"][:2]
                z = z * scale
                z += shift
            deep.append((d, z0, z))
            d = np.maximum(z, 0.0)
        cat = np.concatenate((x, d), axis=1)
        wh, bh = net["head"][:2]
        h = mm(cat, wh.T)
        h += bh
        np.tanh(h, out=h)
        wo, bo = net["out"][:2]
        logit = h @ wo[0] + bo[0]
        return logit, h, [x0, cross, deep, cat, h]

    def _pair_layout(self, tok: _Tokens) -> tuple[np.ndarray, np.ndarray] | None:
        """Row of the pair table of every pair of fields of every event, and 1 where both
        tokens are present (``None`` without a pair table)."""
        if self._np["pairs"] is None or not self._pair_cols[0].size:
            return None
        rows, cols = self._pair_cols
        return self._pair_index(tok.idx), tok.present[:, rows] * tok.present[:, cols]

    def _sparse(self, idx: np.ndarray, present: np.ndarray,
                pairs: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(factorisation machine + pair logit, masked FM rows, pair rows, pair mask)``;
        ``pairs``: the events' :meth:`_pair_layout`."""
        net = self._np
        logit = np.zeros(idx.shape[0], dtype=np.float32)
        t = pi = pm = None
        if net["fm"] is not None:
            t = net["fm"][idx] * present[:, :, None]
            v = t[:, :, 1:]
            s = _sum(v, 1)
            logit += _sum(t[:, :, 0], 1) + 0.5 * _sum(s * s - _sum(v * v, 1), 1)
        if pairs is not None:
            pi, pm = pairs
            logit += _sum(net["pairs"][pi] * pm, 1)
        return logit, t, pi, pm

    def _logits(self, tok: _Tokens, num: np.ndarray,
                pairs: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[Any, ...]]:
        """``(logit, last hidden layer, field embeddings, what the backward pass needs)``."""
        n = tok.idx.shape[0]
        e = self._np["emb"][tok.idx]
        x0 = np.concatenate((e.reshape(n, -1), num), axis=1)
        logit, h, saved = self._dense(x0)
        sparse, t, pi, pm = self._sparse(tok.idx, tok.present, pairs)
        return logit + sparse, h, e, (saved, t, pi, pm)

    def _backward(self, g: np.ndarray, saved: list[Any]) -> np.ndarray:
        """Gradients of ``sum(g * logit)`` into the flat gradient; returns it for ``x0``."""
        net, mm = self._np, self._mm
        x0, cross, deep, cat, h = saved
        wo, _, gwo, gbo = net["out"]
        np.dot(g, h, out=gwo[0])
        gbo[0] = _sum(g, 0)
        dz = g[:, None] * wo[0]
        dz *= 1.0 - h * h
        wh, _, gwh, gbh = net["head"]
        mm(dz.T, cat, out=gwh)
        _sum(dz, 0, out=gbh)
        dcat = mm(dz, wh)
        d0 = x0.shape[1]
        dx, dd = dcat[:, :d0], dcat[:, d0:]
        for i in range(len(deep) - 1, -1, -1):
            w, _, gw, gb = net["deep"][i]
            d_in, z0, z = deep[i]
            dd = dd * (z > 0)
            if i == 0 and net["mod"] is not None:
                scale, _, gscale, gshift = net["mod"]
                _sum(dd * z0, 0, out=gscale)
                _sum(dd, 0, out=gshift)
                dd = dd * scale
            mm(dd.T, d_in, out=gw)
            _sum(dd, 0, out=gb)
            dd = mm(dd, w)
        dx0 = np.array(dd, dtype=np.float32)
        for i in range(len(cross) - 1, -1, -1):
            w, _, gw, gb = net["cross"][i]
            x, u = cross[i]
            du = dx * x0
            dx0 += dx * u
            mm(du.T, x, out=gw)
            _sum(du, 0, out=gb)
            dx = dx + mm(du, w)
        dx0 += dx
        return dx0

    # -- adapter --------------------------------------------------------------------------
    def _forward(self, xs: Sequence[Impression]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and keys of a batch. The same batch again, every number the pass
        reads unchanged (as when a batch is predicted, then learnt from at once), gets the
        same answer without the pass."""
        tok = self._tokens(xs)
        self._check_views()
        seen = self._forward_reads(tok)
        last = self._last_forward
        if last is not None and last[0] is tok and all(
                np.array_equal(a, b) for a, b in zip(last[1], seen, strict=True)):
            p, h = last[2]
            return p.copy(), h.copy()
        # the numpy pass of the steps, in chunks small enough for one BLAS thread
        num, c, n = self._scaled(tok.raw), self._chunk, len(xs)
        logits, hs = [], []
        for i in range(0, n, c):
            part = _Tokens(tok.idx[i:i + c], tok.present[i:i + c], tok.raw[i:i + c])
            logit, hid, e, _ = self._logits(part, num[i:i + c], self._pair_layout(part))
            logits.append(logit)
            if self.key == "input":  # user, item and categorical fields: no time, no numeric
                hid = e[:, : 2 + len(self._cat)].reshape(len(logit), -1)
            hs.append(hid)
        logit = np.concatenate(logits)
        p = np.tanh(logit * np.float32(0.5))
        p *= 0.5
        p += 0.5
        p, h = p.astype(np.float64), np.concatenate(hs)
        self._last_forward = (tok, seen, (p, h))
        return p.copy(), h.copy()

    def _forward_reads(self, tok: _Tokens) -> list[np.ndarray]:
        """Copies of every number the forward pass of ``tok`` reads: the dense weights, the
        batch's rows of the tables, the numeric statistics."""
        net = self._np
        seen = [self._flat.copy(), net["emb"][tok.idx], self._stats.copy()]
        if net["fm"] is not None:
            seen.append(net["fm"][tok.idx])
        if net["pairs"] is not None and self._pair_cols[0].size:
            seen.append(net["pairs"][self._pair_index(tok.idx)])
        return seen

    def predict_and_hidden_many(self, xs: Sequence[Impression]) -> tuple[np.ndarray, np.ndarray]:
        """Click probabilities and hidden representations from one forward pass."""
        if not xs:
            return np.empty(0), np.empty((0, self.hidden_dim), dtype=np.float32)
        check_finite_inputs(xs)
        return self._forward(xs)

    def _predict_many(self, xs: Sequence[Impression]) -> np.ndarray:
        return self._forward(xs)[0]

    def _hidden_many(self, xs: Sequence[Impression]) -> np.ndarray:
        return self._forward(xs)[1]

    def _learn_many(self, xs: Sequence[Impression], ys: np.ndarray) -> None:
        tok = self._tokens(xs)  # builds the network on the first batch
        self._check_views()
        k, n = self.step_size, len(xs)
        # everything that does not depend on the weights, for all steps at once
        num = self._learn_scaled(tok.raw)
        target = (ys >= 0.5).astype(np.float32)
        # each step's mean label, as float32 (what ``mean()`` of the step's targets gives)
        sizes = np.minimum(k, n - np.arange(0, n, k)).astype(np.float32)
        means = (np.add.reduceat(target, np.arange(0, n, k)) / sizes).tolist()
        pairs = self._pair_layout(tok)
        # each step's distinct embedding rows: the step's number times the table size plus
        # the row is unique over the batch and sorts by step
        n_fields, size = tok.idx.shape[1], self.n_buckets
        keys, inverse = np.unique(tok.idx + (np.arange(n) // k * size)[:, None],
                                  return_inverse=True)
        inverse = inverse.reshape(n, n_fields)
        bounds = np.searchsorted(keys, np.arange(0, n + k, k) // k * size)
        for j, i in enumerate(range(0, n, k)):
            part = _Tokens(tok.idx[i:i + k], tok.present[i:i + k], tok.raw[i:i + k])
            lo, hi = bounds[j], bounds[j + 1]
            rows = keys[lo:hi] - j * size, inverse[i:i + k].reshape(-1) - lo
            self._step(part, num[i:i + k], target[i:i + k], means[j], rows,
                       None if pairs is None else (pairs[0][i:i + k], pairs[1][i:i + k]))

    def _learn_scaled(self, raw: np.ndarray) -> np.ndarray:
        """The scaled numeric inputs of every step of a batch, each step's scaled by the
        running statistics after its own values were merged (:meth:`_update_stats`, step
        by step, as learning goes); the statistics end as after the whole batch. Each
        step's count, mean and M2 are taken for all steps at once; only the merge loops."""
        n, n_num = raw.shape
        if not n_num:
            return np.empty((n, 0), dtype=np.float32)
        k = self.step_size
        steps = -(-n // k)
        chunks = np.full((steps * k, n_num), np.nan)
        chunks[:n] = raw
        chunks = chunks.reshape(steps, k, n_num)
        ok = ~np.isnan(chunks)
        counts = ok.sum(1)
        b_means = np.where(ok, chunks, 0.0).sum(1) / np.maximum(counts, 1)
        b_m2s = (np.where(ok, chunks - b_means[:, None], 0.0) ** 2).sum(1)
        stats = np.empty((steps, 3, n_num))
        count, mean, m2 = self._stats
        for i in range(steps):
            total = count + counts[i]
            delta = b_means[i] - mean
            w = counts[i] / np.maximum(total, 1)
            mean, m2 = mean + delta * w, m2 + b_m2s[i] + delta ** 2 * count * w
            count = total
            stats[i] = count, mean, m2
        self._stats = stats[-1].copy()
        count, mean, m2 = stats[:, 0, None], stats[:, 1, None], stats[:, 2, None]
        var = np.where(count > 1, m2 / np.maximum(count - 1, 1), 1.0)
        std = np.where(var > 1e-12, np.sqrt(np.maximum(var, 1e-12)), 1.0)
        out = np.clip((chunks - mean) / std, -5.0, 5.0)
        out[~ok] = 0.0
        return out.reshape(steps * k, n_num)[:n].astype(np.float32)

    def _step(self, tok: _Tokens, num: np.ndarray, target: np.ndarray, mean: float,
              rows: tuple[np.ndarray, np.ndarray],
              pairs: tuple[np.ndarray, np.ndarray] | None) -> None:
        """One step on a chunk of at most ``step_size`` events: the dense weights by Adam,
        the embeddings by SparseAdam on the mean log loss; the sparse terms by SGD on its
        sum. The same arithmetic as ``loss.backward()`` and the torch optimizers' steps,
        with hand-written gradients (equal up to float32 rounding; tested). ``target``: the
        0/1 labels (float32), ``mean`` their mean; ``rows``: the distinct embedding rows of
        the step and where each token's row is among them; ``pairs``: the events'
        :meth:`_pair_layout`."""
        n = len(target)
        logit, _, _, (saved, t, pi, pm) = self._logits(tok, num, pairs)
        self._update_rate(mean, n)
        if not np.isfinite(logit).all():
            return  # never let a non-finite gradient reach the weights
        # d(summed loss) / d(logit) = sigmoid(logit) - target, sigmoid by tanh (no overflow)
        r = np.tanh(logit * np.float32(0.5))
        r *= 0.5
        r += 0.5
        r -= target
        dx0 = self._backward(r * np.float32(1.0 / n), saved)
        f = self._lr_factor()
        self._adam(self.lr * f)
        n_emb = tok.idx.shape[1] * self.emb_dim
        self._sparse_adam(*rows, dx0[:, :n_emb].reshape(-1, self.emb_dim), self.lr * f)
        net = self._np
        if t is not None:  # plain SGD on the summed loss: the gradient of logit times r
            step = tok.present * (r * np.float32(-self.fm_lr * f))[:, None]
            v = t[:, :, 1:]
            grad = np.concatenate((step[:, :, None],
                                   step[:, :, None] * (_sum(v, 1)[:, None, :] - v)), axis=2)
            np.add.at(net["fm"], tok.idx.reshape(-1), grad.reshape(-1, grad.shape[2]))
        if pi is not None:
            assert pm is not None
            np.add.at(net["pairs"], pi.reshape(-1),
                      (pm * (r[:, None] * np.float32(-self.pair_lr * f))).reshape(-1))
        self._t += 1

    def _adam(self, lr: float) -> None:
        """``torch.optim.Adam``'s step (no weight decay, no amsgrad) on the flat weights."""
        b1, b2, eps = self._hyper[0]
        self._adam_t += 1
        t = float(self._adam_t)
        g, m, v, tmp = self._gflat, self._m, self._v, self._tmp
        np.subtract(g, m, out=tmp)
        tmp *= 1 - b1
        m += tmp  # lerp towards g
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp /= (1 - b2**t) ** 0.5
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= -(lr / (1 - b1**t))
        self._flat += tmp
        if not self._adam_t % 64:
            # a first moment that only decays (a weight whose gradient stays 0, as behind a
            # dead ReLU) turns subnormal after ~800 steps, and every operation on a
            # subnormal float is many times slower; below 1.2e-38 it moves no weight
            m[np.abs(m) < _TINY] = 0.0

    def _sparse_adam(self, uniq: np.ndarray, inv: np.ndarray, grads: np.ndarray,
                     lr: float) -> None:
        """``torch.optim.SparseAdam``'s step on the distinct embedding rows ``uniq``, token
        ``i``'s gradient ``grads[i]`` added to row ``uniq[inv[i]]`` (repeats summed, as the
        sparse gradient is coalesced)."""
        b1, b2, eps = self._hyper[1]
        g = np.zeros((uniq.size, grads.shape[1]), dtype=np.float32)
        np.add.at(g, inv.reshape(-1), grads)
        self._emb_t += 1
        t = self._emb_t
        net = self._np
        m_all, v_all = net["m_emb"], net["v_emb"]
        m = m_all[uniq]
        m += (g - m) * (1 - b1)
        v = v_all[uniq]
        v += (g * g - v) * (1 - b2)
        m_all[uniq] = m
        v_all[uniq] = v
        np.sqrt(v, out=v)
        v += eps
        m /= v
        m *= -(lr * math.sqrt(1 - b2**t) / (1 - b1**t))
        net["emb"][uniq] += m

    def _update_rate(self, mean: float, k: int) -> None:
        n = self._rate[0] + k
        a = max(k / n, 1.0 - (1.0 - self.rate_alpha) ** k)
        self._rate = [n, self._rate[1] + a * (mean - self._rate[1])]

    # -- drift adaptation hooks -------------------------------------------------------------
    def adaptation_actions(self) -> frozenset[str]:
        """``lr_boost``, and ``tta`` when there is a deep tower to adapt."""
        return frozenset({"lr_boost", "tta"} if self.deep else {"lr_boost"})

    def set_lr_scale(self, scale: float) -> None:
        """Scale every learning rate (``lr``, ``fm_lr``, ``pair_lr``) by ``scale`` (absolute:
        1.0 restores them), on top of the schedule."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr scale must be a positive finite number, got {scale}")
        self._lr_scale = float(scale)
        if self._net is not None:
            self._set_lrs()

    def _built(self) -> DCN:
        if self._net is None:
            raise RuntimeError("ctr-net has seen no data yet: there is no network to adapt")
        if self._net.mod is None:
            raise RuntimeError(f"ctr-net with deep={self.deep} has no deep tower to adapt; "
                               "test-time adaptation needs at least one deep layer")
        return self._net

    def tta_encode(self, xs: Sequence[Impression]) -> torch.Tensor:
        """``x0``, the concatenated field embeddings and numeric values."""
        net = self._built()
        idx, num, _ = self._encode(xs)
        with torch.no_grad():
            return net.x0(idx, num)[0]

    def tta_input_layer(self) -> nn.Linear:
        """The deep tower's first dense layer over ``x0``."""
        layer = self._built().deep[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def tta_modulator(self) -> nn.Module:
        mod = self._built().mod
        assert mod is not None
        return mod

    def tta_loss(self, xs: Sequence[Impression], encoded: torch.Tensor) -> torch.Tensor:
        """Mean prediction entropy plus ``tta_rate_weight`` times ``KL(r || pbar)``, the
        divergence of the batch's mean click probability ``pbar`` from the running click
        rate ``r`` of the labels seen.

        Plain entropy minimisation (TENT) is a poor fit for a rare binary target: the
        entropy of a click probability falls fastest by pushing it towards 0, so the
        predictions drift to "no click". Near the rate the divergence is second order while
        the entropy's pull is first order, hence the large default weight. Measured on
        ``clicks`` (seed 0, drift at event 10 000; trained on the first 10 000 events, then
        five passes of NHL with ``lr=0.5, max_step=0.05, max_drift=1`` over the next 2 000
        unlabelled ones in batches of 50): with ``base_logit=-3`` (click rate 0.096)
        entropy alone ends at a mean prediction of 0.047 and logloss 0.3278 (unadapted:
        0.3107); weight 1 is no better (0.048, 0.3275), weight 50 ends at 0.076 and 0.3091.
        With ``base_logit=-1`` (rate 0.272): entropy 0.214 and 0.5698 (unadapted 0.5605),
        weight 50 0.266 and 0.5587. AUC moved by at most 0.002 in every case; under the
        default NHL bounds all variants stay within 0.002 logloss of each other.
        """
        net = self._built()
        logit, _ = net.from_x0(encoded)
        with torch.no_grad():  # the sparse terms stay frozen
            idx, _, present = self._encode(xs)
            sparse = net.sparse_logit(idx, present)
        logit = logit + sparse
        p = torch.sigmoid(logit).clamp(1e-6, 1 - 1e-6)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        if self.tta_rate_weight == 0 or self._rate[0] == 0:
            return entropy
        r = min(max(self._rate[1], 1e-4), 1 - 1e-4)
        pbar = p.mean()
        kl = r * math.log(r) - r * pbar.log() + (1 - r) * math.log(1 - r) \
            - (1 - r) * (1 - pbar).log()
        return entropy + self.tta_rate_weight * kl

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._net is None:
            return {"format": _FORMAT, "built": False, "lr_scale": self._lr_scale}
        self._opt_to_torch()  # the torch optimizers' format is the saved one
        try:
            opts = {
                "opt": optimizer_state(self._opt),
                "opt_emb": optimizer_state(self._opt_emb),
                "opt_fm": None if self._opt_fm is None else optimizer_state(self._opt_fm),
                "opt_pair": (None if self._opt_pair is None
                             else optimizer_state(self._opt_pair)),
            }
        finally:
            self._opt.state.clear()
            self._opt_emb.state.clear()
        return {
            "format": _FORMAT,
            "built": True,
            "cat": list(self._cat),
            "num": list(self._num),
            "stats": self._stats.copy(),
            "rate": list(self._rate),
            "steps": self._t,
            "lr_scale": self._lr_scale,
            "net": dict(self._net.state_dict()),
            **opts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"expected a {_FORMAT!r} state, got {state.get('format')!r}; "
                             "a state saved by an older ctr-net cannot be restored: the "
                             "model changed (pair table, SGD for the sparse terms, time "
                             "tokens), retrain it")
        self._lr_scale = float(state["lr_scale"])
        if not state.get("built"):
            self._net = None
            self._last = None
            self._last_forward = None
            self._rate = [0.0, 0.0]
            self._t = 0
            return
        cat, num = list(state["cat"]), list(state["num"])
        net = self._new_net(len(cat), len(num), init=False)
        try:
            net.load_state_dict(state["net"])
        except RuntimeError as exc:
            raise ValueError(f"state does not fit {self!r}: {exc}") from exc
        self._net, self._cat, self._num = net, cat, num
        self._opts = None
        stats = state["stats"]
        self._stats = np.asarray(stats.numpy() if isinstance(stats, torch.Tensor) else stats,
                                 dtype=np.float64).reshape(3, len(num))
        self._rate = [float(v) for v in state["rate"]]
        self._t = int(state["steps"])
        load_optimizer_state(self._opt, state["opt"])
        load_optimizer_state(self._opt_emb, state["opt_emb"])
        if self._opt_fm is not None:
            load_optimizer_state(self._opt_fm, state["opt_fm"])
        if self._opt_pair is not None:
            load_optimizer_state(self._opt_pair, state["opt_pair"])
        self._bind()
        self.set_lr_scale(self._lr_scale)  # the optimizer states carried the saved lr
