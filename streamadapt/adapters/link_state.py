"""Per-link state shared by the neural forecasters: running scales, hidden-state slots
(LRU over links), the grouping of a batch into one sequence per link and the encoding of a
load window into features.

The encoding (used by :mod:`~streamadapt.adapters.liquid` and the MLP baselines of
:mod:`~streamadapt.adapters.mlp`, so that they differ only in how they learn) works in
relative terms, so that it means the same before and after a failure moves a link's load:

* the link's *scale* is the window's mean load times the root mean square of the link's
  relative one-step changes (exponentially weighted, floored at 1e-3; the window mean is
  floored at 1e-6, so a constant or idle link never divides by zero);
* features: the window's loads minus the current load, over the scale; the elapsed time
  since the previous sample, ``dt / time_scale_s``; time-of-day and day-of-week sines and
  cosines; all clipped to ``[-clip, clip]``. (No absolute level: after a failure it would
  stay out of its usual range for as long as the running mean takes to follow.)
* the target of a model is the next load minus the current one, over the scale.

>>> from streamadapt.features import WindowStore
>>> store, scales = WindowStore(window=4), LinkScales(max_keys=2)
>>> xs = [store.push("a", 300.0 * t, 10.0 + t) for t in range(4)]
>>> slots = scales.slots(["a"])
>>> feats, dt, last, scale = encode_windows(xs[-1:], scales, slots, 4, 300.0, 10.0,
...                                         take_in=np.array([True]), alpha=0.1)
>>> feats.shape, dt.tolist(), last.tolist(), scale.round(3).tolist()
((1, 8), [1.0], [13.0], [0.514])
>>> waves(["a", "b", "a"])
[[0, 1], [2]]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamadapt.features import ForecastInput
from streamadapt.state import load_optimizer_state, optimizer_state

__all__ = [
    "LinkScales",
    "Sequences",
    "sequences",
    "encode_windows",
    "features",
    "padded_loads",
    "window_features",
    "waves",
    "n_features",
    "net_state",
    "load_net_state",
]

#: Features besides the window: elapsed time and four time-of-day/week encodings.
N_EXTRA = 5

_TWO_PI = 2 * math.pi


def waves(keys: Sequence[str]) -> list[list[int]]:
    """Positions grouped so that no key repeats within a group, order kept per key."""
    if len(set(keys)) == len(keys):
        return [list(range(len(keys)))]
    out: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        j = seen.get(k, 0)
        seen[k] = j + 1
        if j == len(out):
            out.append([])
        out[j].append(i)
    return out


@dataclass(frozen=True, slots=True)
class Sequences:
    """A batch's inputs grouped into one sequence per key, in order.

    ``keys``: the distinct keys, by first appearance; ``link`` and ``rank``: each input's
    key (index into ``keys``) and its place in the key's sequence; ``count``: inputs per
    key; ``pos[r, l]``: the input at place ``r`` of key ``l`` (-1 past its count).
    """

    keys: list[str]
    link: np.ndarray
    rank: np.ndarray
    count: np.ndarray
    pos: np.ndarray

    @property
    def steps(self) -> int:
        """The longest sequence."""
        return self.pos.shape[0]

    def last(self) -> np.ndarray:
        """The last input of each key."""
        return self.pos[self.count - 1, np.arange(len(self.keys))]


def sequences(keys: Sequence[str]) -> Sequences:
    """Group ``keys`` (one per input) into :class:`Sequences`.

    >>> s = sequences(["a", "b", "a"])
    >>> s.keys, s.rank.tolist(), s.pos.tolist()
    (['a', 'b'], [0, 0, 1], [[0, 1], [2, -1]])
    """
    index: dict[str, int] = {}
    n = len(keys)
    link = np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64, n)
    m = len(index)
    if m == n:
        rank = np.zeros(n, dtype=np.int64)
        count = np.ones(n, dtype=np.int64)
    else:
        order = np.argsort(link, kind="stable")
        count = np.bincount(link, minlength=m)
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.repeat(starts, count)
    pos = np.full((int(count.max(initial=1)), m), -1, dtype=np.int64)
    pos[rank, link] = np.arange(n)
    return Sequences(list(index), link, rank, count, pos)


class LinkScales:
    """Per-key running statistics and hidden-state slots in growable arrays, with an LRU
    over ``max_keys`` keys; a new key reuses the slot of the one it evicts.

    Per key: ``ts`` (timestamp of the last sample taken in), ``n`` (samples taken in),
    ``mean`` (exponentially weighted mean load, for reports), ``var`` (exponentially weighted mean
    square of the relative one-step change, each change winsorised at three times the
    current root mean square, starting from the prior ``0.02 ** 2``), and,
    when ``width > 0``, the hidden state before (``h_in``) and after (``h_out``) the last
    sample.

    A model that takes in several samples of a key in one call keeps a *snapshot* of the
    key as it was before the call (``first``: the timestamp of the call's first sample;
    ``s_ts``, ``s_n``, ``s_mean``, ``s_var``, ``s_h_in``, ``s_h_out``). Asked again for the
    same samples, it puts the key back (:meth:`rewind`) and steps through them once more;
    and the sample before them (the last one taken in before the call) can still be encoded
    as it was. The snapshot is part of the state.
    """

    PRIOR_VAR = 0.02**2
    #: Per-key numpy fields and their values for a new key.
    _NUMPY = {"ts": -np.inf, "n": 0.0, "mean": 0.0, "var": PRIOR_VAR, "first": np.nan,
              "s_ts": -np.inf, "s_n": 0.0, "s_mean": 0.0, "s_var": PRIOR_VAR}
    #: Per-key hidden-state fields (zeros for a new key).
    _TORCH = ("h_in", "h_out", "s_h_in", "s_h_out")
    #: The live fields and their snapshot copies.
    _SNAP = (("ts", "s_ts"), ("n", "s_n"), ("mean", "s_mean"), ("var", "s_var"),
             ("h_in", "s_h_in"), ("h_out", "s_h_out"))

    def __init__(self, max_keys: int, width: int = 0) -> None:
        self.max_keys = max_keys
        self.width = width
        self.slot_of: OrderedDict[str, int] = OrderedDict()
        self._alloc(min(max_keys, 64))

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "ts", None)
        grow = cap - (0 if old is None else old.shape[0])
        for name, fill in self._NUMPY.items():
            new = np.full(grow, fill)
            a = getattr(self, name, None)
            setattr(self, name, new if a is None else np.concatenate([a, new]))
        for name in self._TORCH:
            new = torch.zeros(grow, self.width)
            a = getattr(self, name, None)
            setattr(self, name, new if a is None else torch.cat([a, new]))

    def _init(self, s: int) -> None:
        for name, fill in self._NUMPY.items():
            getattr(self, name)[s] = fill
        for name in self._TORCH:
            getattr(self, name)[s] = 0.0

    def slots(self, keys: Sequence[str]) -> np.ndarray:
        """The slot of each key (distinct keys), creating or evicting as needed."""
        out = np.empty(len(keys), dtype=np.int64)
        slot_of = self.slot_of
        for i, k in enumerate(keys):
            s = slot_of.get(k)
            if s is None:
                if len(slot_of) >= self.max_keys:
                    _, s = slot_of.popitem(last=False)
                elif len(slot_of) >= self.ts.shape[0]:
                    self._alloc(min(self.max_keys, 2 * self.ts.shape[0]))
                    s = len(slot_of)
                else:
                    s = len(slot_of)
                self._init(s)
                slot_of[k] = s
            else:
                slot_of.move_to_end(k)
            out[i] = s
        return out

    def update(self, slots: np.ndarray, last: np.ndarray, change: np.ndarray,
               has_change: np.ndarray, alpha: float) -> None:
        """Take in each slot's current load and, where known, its relative change."""
        n = self.n[slots] + 1.0
        a = np.maximum(1.0 / n, alpha)
        self.mean[slots] += a * (last - self.mean[slots])
        b = np.where(has_change, np.maximum(1.0 / (n + 1.0), alpha), 0.0)
        var = self.var[slots]
        # winsorised at 3 rms: a failure's jump is one outlier, not a new volatility
        self.var[slots] += b * (np.minimum(change * change, 9.0 * var) - var)
        self.n[slots] = n

    def update_many(self, slots: np.ndarray, take: np.ndarray, last: np.ndarray,
                    change: np.ndarray, has_change: np.ndarray, alpha: float) -> np.ndarray:
        """:meth:`update` over sequences: row ``r`` of the ``(steps, len(slots))`` arrays is
        each slot's ``r``-th sample, taken in where ``take``. Returns the variance after
        each sample (the same arithmetic as calling :meth:`update` row by row)."""
        n = self.n[slots] + np.cumsum(take, axis=0)
        with np.errstate(divide="ignore"):
            a = np.where(take, np.maximum(1.0 / n, alpha), 0.0)
            b = np.where(take & has_change, np.maximum(1.0 / (n + 1.0), alpha), 0.0)
        sq = change * change
        mean, var = self.mean[slots], self.var[slots]
        out = np.empty_like(sq)
        for r in range(len(take)):
            mean = mean + a[r] * (last[r] - mean)
            # winsorised at 3 rms: a failure's jump is one outlier, not a new volatility
            var = var + b[r] * (np.minimum(sq[r], 9.0 * var) - var)
            out[r] = var
        self.n[slots], self.mean[slots], self.var[slots] = n[-1], mean, var
        return out

    def snapshot(self, slots: np.ndarray, first: np.ndarray) -> None:
        """Keep the slots as they are now, before a call takes in samples from ``first`` on."""
        t = torch.from_numpy(slots)
        for live, snap in self._SNAP:
            if live in self._TORCH:
                getattr(self, snap)[t] = getattr(self, live)[t]
            else:
                getattr(self, snap)[slots] = getattr(self, live)[slots]
        self.first[slots] = first

    def rewind(self, slots: np.ndarray) -> None:
        """Put the slots back as :meth:`snapshot` kept them."""
        t = torch.from_numpy(slots)
        for live, snap in self._SNAP:
            if live in self._TORCH:
                getattr(self, live)[t] = getattr(self, snap)[t]
            else:
                getattr(self, live)[slots] = getattr(self, snap)[slots]

    def _fields(self, idx: np.ndarray) -> dict[str, Any]:
        t = torch.from_numpy(idx)
        out: dict[str, Any] = {name: getattr(self, name)[idx] for name in self._NUMPY}
        out.update({name: getattr(self, name)[t].clone() for name in self._TORCH})
        return out

    def _put(self, slots: np.ndarray, state: dict[str, Any], m: int) -> None:
        """Write ``state``'s rows into ``slots``; a state without snapshots (an older one)
        leaves them empty."""
        t = torch.from_numpy(slots)
        for name, fill in self._NUMPY.items():
            v = state.get(name)
            getattr(self, name)[slots] = fill if v is None else np.asarray(v, dtype=np.float64)
        if not self.width:
            return
        for name in self._TORCH:
            v = state.get(name)
            getattr(self, name)[t] = 0.0 if v is None else torch.as_tensor(
                v, dtype=torch.float32).reshape(m, self.width)

    def state_dict(self) -> dict[str, Any]:
        idx = np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))
        return {"keys": list(self.slot_of), **self._fields(idx)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = list(state["keys"])
        self.slot_of = OrderedDict((k, i) for i, k in enumerate(keys))
        for name in (*self._NUMPY, *self._TORCH):
            self.__dict__.pop(name, None)
        self._alloc(max(min(self.max_keys, 64), len(keys)))
        m = len(keys)
        self._put(np.arange(m, dtype=np.int64), state, m)

    # -- per-key state, moved with its partition ---------------------------------------------
    def export_keys(self, keys: Collection[str]) -> dict[str, Any]:
        """The state of those of ``keys`` that are known, in :meth:`state_dict`'s format."""
        known = [k for k in keys if k in self.slot_of]
        idx = np.array([self.slot_of[k] for k in known], dtype=np.int64)
        return {"keys": known, **self._fields(idx)}

    def import_keys(self, state: dict[str, Any]) -> None:
        """Take in what :meth:`export_keys` gave (overwriting those keys)."""
        keys = list(state["keys"])
        if not keys:
            return
        self._put(self.slots(keys), state, len(keys))

    def drop_keys(self, keys: Collection[str] | None = None) -> None:
        """Forget ``keys`` (all keys when None)."""
        if keys is None:
            keys = list(self.slot_of)
        gone = [k for k in keys if k in self.slot_of]
        if not gone:
            return
        state = self.export_keys([k for k in self.slot_of if k not in set(gone)])
        self.load_state_dict(state)


def n_features(window: int) -> int:
    """How many features :func:`encode_windows` gives for a window of ``window`` loads."""
    return window - 1 + N_EXTRA


def padded_loads(xs: Sequence[ForecastInput], window: int) -> np.ndarray:
    """The inputs' last ``window`` loads, ``(n, window)``; a shorter window is padded with
    its oldest load."""
    rows = [x.loads for x in xs]
    if all(len(r) == window for r in rows):
        return np.array(rows, dtype=np.float64)
    out = np.empty((len(rows), window))
    for i, r in enumerate(rows):
        r = r[-window:]
        out[i, : window - len(r)] = r[0]
        out[i, window - len(r):] = r
    return out


def encode_windows(xs: Sequence[ForecastInput], scales: LinkScales, slots: np.ndarray,
                   window: int, time_scale_s: float, clip: float,
                   take_in: np.ndarray | None = None,
                   alpha: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features ``(n, window + 4)``, elapsed times ``(n,)``, current loads and scales.

    Rows where ``take_in`` is true first update their slot's statistics (weight ``alpha``
    at least) with the current load and its relative change.
    """
    loads = padded_loads(xs, window)
    if take_in is not None and take_in.any():
        last = loads[:, -1]
        level = np.maximum(loads.mean(axis=1), 1e-6)
        has = np.array([len(x.loads) >= 2 for x in xs]) & take_in
        change = (last - loads[:, -2]) / level
        scales.update(slots[take_in], last[take_in], change[take_in], has[take_in], alpha)
    return features(xs, loads, scales.var[slots], time_scale_s, clip)


def window_features(xs: Sequence[ForecastInput], var: np.ndarray, window: int,
                    time_scale_s: float, clip: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`encode_windows` gives, from each row's relative variance ``var`` instead
    of a slot: a pure function, for encodings that must not touch any link's statistics."""
    return features(xs, padded_loads(xs, window), np.asarray(var, dtype=np.float64),
                    time_scale_s, clip)


def features(xs: Sequence[ForecastInput], loads: np.ndarray, var: np.ndarray,
             time_scale_s: float, clip: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`encode_windows` gives, from :func:`padded_loads` and each row's
    relative variance."""
    window = loads.shape[1]
    last = loads[:, -1]
    level = np.maximum(loads.mean(axis=1), 1e-6)
    scale = level * np.maximum(np.sqrt(var), 1e-3)
    ts = np.array([x.timestamp for x in xs])
    dt = np.minimum(np.array([x.dts[-1] for x in xs]) / time_scale_s, clip)
    day, week = _TWO_PI * (ts % 86_400.0) / 86_400.0, _TWO_PI * (ts % 604_800.0) / 604_800.0
    feats = np.empty((len(xs), N_EXTRA + window - 1))
    feats[:, : window - 1] = (loads[:, :-1] - last[:, None]) / scale[:, None]
    feats[:, window - 1] = dt
    feats[:, window:] = np.stack(
        [np.sin(day), np.cos(day), np.sin(week), np.cos(week)], 1)
    np.clip(feats, -clip, clip, out=feats)
    return feats, dt, last, scale


def net_state(fmt: str, model: Any) -> dict[str, Any]:
    """The state every per-link torch forecaster has: format tag, network, optimizer,
    random generator and per-link scales (``model._net``, ``_opt``, ``_gen``, ``_links``)."""
    return {
        "format": fmt,
        "net": dict(model._net.state_dict()),
        "opt": optimizer_state(model._opt),
        "gen": model._gen.get_state(),
        "links": model._links.state_dict(),
    }


def load_net_state(fmt: str, model: Any, state: dict[str, Any]) -> None:
    """Load what :func:`net_state` wrote, checking the format and the network's shape."""
    if state.get("format") != fmt:
        raise ValueError(f"expected a {fmt!r} state, got {state.get('format')!r}")
    try:
        model._net.load_state_dict(state["net"])
    except RuntimeError as exc:
        raise ValueError(f"state does not fit {model!r}: {exc}") from exc
    load_optimizer_state(model._opt, state["opt"])
    model._gen.set_state(state["gen"])
    model._links.load_state_dict(state["links"])
