"""Per-key history windows that turn link-load samples into forecasting inputs.

A forecasting adapter never sees a raw sample: it sees a :class:`ForecastInput`, the window
of the link's most recent loads ending at the current sample, with the elapsed time between
samples. The label of that input is the load of the link's *next* sample.

>>> store = WindowStore(window=3)
>>> for t, load in enumerate([1.0, 2.0, 4.0, 8.0]):
...     x = store.push("A-B", float(t * 60), load)
>>> x.loads, x.dts
((2.0, 4.0, 8.0), (60.0, 60.0, 60.0))
>>> lag_features(x)["lag_1"]
8.0
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ForecastInput", "WindowStore", "lag_features", "time_features"]

_DAY = 86_400.0
_WEEK = 7 * _DAY


@dataclass(frozen=True, slots=True)
class ForecastInput:
    """The window of one link's recent loads, oldest first; the last one is the current load.

    ``dts[i]`` is the elapsed seconds between sample ``i - 1`` and sample ``i``
    (``dts[0]`` is 0 for a link's first sample). Windows are shorter than the configured
    length while a link is new.
    """

    key: str
    timestamp: float
    loads: tuple[float, ...]
    dts: tuple[float, ...]
    covariates: Mapping[str, float] = field(default_factory=dict)
    event_id: str = ""

    @property
    def last(self) -> float:
        return self.loads[-1]


def time_features(timestamp: float) -> dict[str, float]:
    """Cyclic time-of-day and day-of-week encodings of a unix timestamp."""
    day = 2 * math.pi * (timestamp % _DAY) / _DAY
    week = 2 * math.pi * (timestamp % _WEEK) / _WEEK
    return {
        "tod_sin": math.sin(day),
        "tod_cos": math.cos(day),
        "dow_sin": math.sin(week),
        "dow_cos": math.cos(week),
    }


@functools.cache
def _lag_names(k: int) -> tuple[str, ...]:
    return tuple(f"lag_{i + 1}" for i in range(k))


def lag_features(x: ForecastInput, n_lags: int | None = None) -> dict[str, float]:
    """Flat features for tabular models: ``lag_1`` (current load) ... ``lag_k``, the last
    elapsed time as ``log1p`` seconds (gaps of a night or a weekend would otherwise swamp an
    online scaler), time-of-day encodings and the covariates (prefixed ``cov_``).

    Windows shorter than ``n_lags`` are padded with their oldest load.
    """
    loads = x.loads
    k = n_lags or len(loads)
    names = _lag_names(k)
    if len(loads) >= k:
        out = dict(zip(names, loads[: -k - 1 : -1], strict=True))
    else:
        padded = loads[::-1] + (loads[0],) * (k - len(loads))
        out = dict(zip(names, padded, strict=True))
    out["log_dt"] = math.log1p(x.dts[-1])
    out.update(time_features(x.timestamp))
    for name, value in x.covariates.items():
        out[f"cov_{name}"] = value
    return out


class WindowStore:
    """Keeps the last ``window`` loads of each key, bounded to ``max_keys`` keys (LRU).

    The windows live in preallocated arrays indexed by a slot per key (loads and elapsed
    times, right-aligned, with a count and the last timestamp), so that
    :meth:`push_many` builds the inputs of a whole micro-batch with a few array operations
    however many samples of one key it holds.

    Parameters
    ----------
    window
        How many recent loads each input carries.
    max_keys
        How many keys are remembered; the least recently seen key is forgotten first.

    >>> store = WindowStore(window=2)
    >>> xs = store.push_many(["a", "b", "a"], [0.0, 0.0, 60.0], [1.0, 5.0, 2.0])
    >>> [(x.key, x.loads, x.dts) for x in xs]
    [('a', (1.0,), (0.0,)), ('b', (5.0,), (0.0,)), ('a', (1.0, 2.0), (0.0, 60.0))]
    """

    #: Below this many samples :meth:`push_many` pushes one by one (cheaper than arrays).
    _SMALL = 8

    def __init__(self, window: int = 12, max_keys: int = 100_000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._reset()

    def _reset(self) -> None:
        #: key -> slot, least recently seen first.
        self._slot: OrderedDict[str, int] = OrderedDict()
        self._free: list[int] = []
        cap = min(self.max_keys, 64)
        self._buf = np.zeros((cap, self.window))  # loads, right-aligned
        self._dbuf = np.zeros((cap, self.window))  # elapsed times, right-aligned
        self._count = np.zeros(cap, dtype=np.int64)
        self._ts = np.zeros(cap)

    def __len__(self) -> int:
        return len(self._slot)

    def keys(self) -> list[str]:
        """The keys held, least recently seen first."""
        return list(self._slot)

    @property
    def _loads(self) -> OrderedDict[str, int]:
        """The keys held, least recently seen first (key -> slot)."""
        return self._slot

    # -- slots ------------------------------------------------------------------------------
    def _new_slot(self, key: str) -> int:
        """A slot for a new key (evicting the least recently seen key when full)."""
        if len(self._slot) >= self.max_keys:
            _, s = self._slot.popitem(last=False)
        elif self._free:
            s = self._free.pop()
        else:
            s = len(self._slot)
            if s >= self._buf.shape[0]:
                self._grow(min(self.max_keys, 2 * self._buf.shape[0]))
        self._count[s] = 0
        self._slot[key] = s
        return s

    def _grow(self, cap: int) -> None:
        extra = cap - self._buf.shape[0]
        self._buf = np.concatenate([self._buf, np.zeros((extra, self.window))])
        self._dbuf = np.concatenate([self._dbuf, np.zeros((extra, self.window))])
        self._count = np.concatenate([self._count, np.zeros(extra, dtype=np.int64)])
        self._ts = np.concatenate([self._ts, np.zeros(extra)])

    def _window(self, s: int) -> tuple[list[float], list[float]]:
        c = int(self._count[s])
        w = self.window
        return self._buf[s, w - c:].tolist(), self._dbuf[s, w - c:].tolist()

    def _set(self, key: str, loads: list[float], dts: list[float], ts: float) -> None:
        s = self._slot.get(key)
        if s is None:
            s = self._new_slot(key)
        else:
            self._slot.move_to_end(key)
        loads, dts = list(loads)[-self.window:], list(dts)[-self.window:]
        c = len(loads)
        self._buf[s] = 0.0
        self._dbuf[s] = 0.0
        if c:
            self._buf[s, -c:] = loads
            self._dbuf[s, -c:] = dts
        self._count[s] = c
        self._ts[s] = ts

    # -- pushing ----------------------------------------------------------------------------
    def push(
        self,
        key: str,
        timestamp: float,
        load: float,
        covariates: Mapping[str, float] | None = None,
        event_id: str = "",
    ) -> ForecastInput:
        """Append one sample to the key's window and return the window as an input."""
        s = self._slot.get(key)
        if s is None:
            s = self._new_slot(key)
            dt = 0.0
        else:
            self._slot.move_to_end(key)
            dt = max(timestamp - float(self._ts[s]), 0.0)
        w = self.window
        c = min(int(self._count[s]) + 1, w)
        row, drow = self._buf[s], self._dbuf[s]
        row[:-1] = row[1:]
        drow[:-1] = drow[1:]
        row[-1], drow[-1] = load, dt
        self._count[s], self._ts[s] = c, timestamp
        return ForecastInput(key, timestamp, tuple(row[w - c:].tolist()),
                             tuple(drow[w - c:].tolist()), covariates or {}, event_id)

    def push_many(
        self,
        keys: Sequence[str],
        timestamps: Sequence[float],
        loads: Sequence[float],
        covariates: Sequence[Mapping[str, float] | None] | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> list[ForecastInput]:
        """:meth:`push` each sample in order; the same inputs, built for the whole batch at
        once (a key may come several times)."""
        n = len(keys)
        covs = covariates if covariates is not None else [None] * n
        eids = event_ids if event_ids is not None else [""] * n
        slot_of = self._slot
        # last-seen order, as pushing one by one leaves it
        last_seen = list(dict.fromkeys(reversed(keys)))[::-1]
        new = sum(1 for k in last_seen if k not in slot_of)
        if n < self._SMALL or len(slot_of) + new > self.max_keys:
            # few samples, or keys would be evicted within the batch: one by one
            return [self.push(k, t, v, c, e)
                    for k, t, v, c, e in zip(keys, timestamps, loads, covs, eids, strict=True)]
        created = []
        for k in last_seen:
            if k in slot_of:
                slot_of.move_to_end(k)
            else:
                created.append(self._new_slot(k))
        w = self.window
        sl = np.fromiter((slot_of[k] for k in keys), np.int64, n)
        ts = np.asarray(timestamps, dtype=np.float64)
        # group the batch by slot (stable: time order within a key)
        order = np.argsort(sl, kind="stable")
        ss = sl[order]
        head = np.empty(n, dtype=bool)
        head[0] = True
        np.not_equal(ss[1:], ss[:-1], out=head[1:])
        grp = np.cumsum(head) - 1
        firsts = np.flatnonzero(head)
        rank = np.arange(n) - firsts[grp]
        links = ss[firsts]
        per = np.diff(np.append(firsts, n))
        cnt0 = self._count[links]
        # elapsed time: since the key's previous sample (0 for a key's first sample)
        tso = ts[order]
        prev = np.where(rank > 0, np.roll(tso, 1), self._ts[links][grp])
        known = ~np.isin(links, created)[grp]
        dt = np.where((rank > 0) | known, np.maximum(tso - prev, 0.0), 0.0)
        # per key: its stored window, then the batch's samples; a sample's window ends at it
        span = w + int(per.max())
        lm = np.zeros((len(links), span))
        dm = np.zeros((len(links), span))
        lm[:, :w], dm[:, :w] = self._buf[links], self._dbuf[links]
        lm[grp, w + rank] = np.asarray(loads, dtype=np.float64)[order]
        dm[grp, w + rank] = dt
        cols = (rank + 1)[:, None] + np.arange(w)
        win = np.empty((n, w))
        dwin = np.empty((n, w))
        win[order] = lm[grp[:, None], cols]
        dwin[order] = dm[grp[:, None], cols]
        cnt = np.empty(n, dtype=np.int64)
        cnt[order] = np.minimum(cnt0[grp] + rank + 1, w)
        ends = per[:, None] + np.arange(w)
        rows = np.arange(len(links))[:, None]
        self._buf[links], self._dbuf[links] = lm[rows, ends], dm[rows, ends]
        self._count[links] = np.minimum(cnt0 + per, w)
        self._ts[links] = tso[firsts + per - 1]
        covs = [c or {} for c in covs]
        if cnt.min() == w:  # every window full: the common case, built without a loop body
            return list(map(ForecastInput, keys, timestamps, map(tuple, win.tolist()),
                            map(tuple, dwin.tolist()), covs, eids))
        out = []
        for k, t, lw, dw, c, cov, e in zip(keys, timestamps, win.tolist(), dwin.tolist(),
                                           cnt.tolist(), covs, eids, strict=True):
            out.append(ForecastInput(k, t, tuple(lw[w - c:]), tuple(dw[w - c:]), cov, e))
        return out

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.export_keys(list(self._slot))

    def export_keys(self, keys: Collection[str]) -> dict:
        """The windows of those of ``keys`` that are known, in :meth:`state_dict`'s format."""
        known = [k for k in keys if k in self._slot]
        wins = [self._window(self._slot[k]) for k in known]
        return {
            "window": self.window,
            "keys": known,
            "loads": [lw for lw, _ in wins],
            "dts": [dw for _, dw in wins],
            "last_ts": [float(self._ts[self._slot[k]]) for k in known],
        }

    def import_keys(self, state: dict) -> None:
        """Take in what :meth:`export_keys` gave (overwriting those keys)."""
        for key, loads, dts, ts in zip(
            state["keys"], state["loads"], state["dts"], state["last_ts"], strict=True
        ):
            self._set(key, loads, dts, ts)

    def drop_keys(self, keys: Collection[str] | None = None) -> None:
        """Forget ``keys`` (all when None)."""
        if keys is None:
            self._reset()
            return
        for key in keys:
            s = self._slot.pop(key, None)
            if s is not None:
                self._free.append(s)

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        self.import_keys(state)
