"""Seasonal references: a signal compared with the same phase of earlier cycles, per key.

A link's load follows the time of day (and the day of the week); to a detector that watches
the raw load, every morning is covariate drift. Here each value is compared with what the
*same key* did at the *same phase* of *earlier cycles* (seasonal differencing in the sense
of Box and Jenkins, with an exponentially weighted seasonal profile as in Holt-Winters;
Winters 1960), and the residual is what a detector watches:

* :class:`SeasonalProfile`: per key and per declared period (seconds, e.g. a day and a
  week), the period is cut into bins of ``bin_s`` seconds; each bin keeps an exponentially
  weighted mean over cycles (weight ``alpha`` for the newest cycle; the first cycles are
  averaged equally). The reference at a time is the linear interpolation of the two nearest
  bin centres, so a ramp within a bin is not mistaken for a residual. Values of the current
  cycle are held apart and join the reference only when a later cycle touches the bin: a
  change is compared with earlier cycles, never with itself. The longest period whose
  reference is known is used; until a week has been seen, the daily profile stands in.
  A key's first cycle (from its first value) is only learnt. Residuals are divided by the
  key's residual spread (exponentially weighted root mean square of its residuals, known
  once ``spread_events`` exist; a residual beyond three spreads counts as three and is
  learnt ten times slower, so that a change does not quickly inflate the spread that
  measures it), so keys of different noise are comparable. Phases come from the
  timestamps (unix seconds), so irregular spacing and gaps are fine. At most ``max_keys``
  keys are kept (least recently seen forgotten first).
* :class:`InputSignal`: an input statistic (see :data:`~streamadapt.drift.signals.
  INPUT_STATS`) through the profile, keyed by link (forecast) or by one key (clicks).
* :class:`LossSignal`: the drift loss (see :func:`~streamadapt.drift.signals.drift_loss`)
  through the profile, keyed the same way: a model that errs more in the morning ramp than
  at night does not raise an alarm every morning.

Both return NaN where the reference is not known yet (a key's first cycle, and the start of
its second); :class:`~streamadapt.drift.watch.SignalWatcher` skips non-finite values. Periods
are declared, not estimated. State is plain data (see :mod:`streamadapt.state`).

>>> import numpy as np
>>> p = SeasonalProfile(periods=(86_400.0,), bin_s=3600.0)
>>> t = np.arange(0, 3 * 86_400, 600.0)                     # three days, every 10 minutes
>>> v = np.sin(2 * np.pi * t / 86_400) + np.random.default_rng(0).normal(0, 0.05, t.size)
>>> v[t >= 2.5 * 86_400] += 1.0                             # a level shift on day three
>>> z = p.score_many(["a"] * t.size, t, v)
>>> bool(np.isnan(z[:144]).all()), round(float(np.nanstd(z[144:360])), 1)
(True, 1.0)
>>> round(float(np.median(z[360:])), 0)
16.0
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamadapt.drift.signals import drift_loss, input_stat

__all__ = ["SeasonalProfile", "InputSignal", "LossSignal", "DAY", "WEEK"]

DAY = 86_400.0
WEEK = 7 * DAY

# rows of a bin table: cycles folded, reference mean, current-cycle weight and weighted sum,
# current cycle index; the spread table also keeps the key's first timestamp
_N, _M, _CW, _CS, _CYC, _FIRST = range(6)


def _check_periods(periods: Sequence[float], bin_s: float) -> tuple[float, ...]:
    if not periods:
        raise ValueError("periods must name at least one cycle length in seconds, got ()")
    out = []
    for p in periods:
        if not (isinstance(p, int | float) and math.isfinite(p) and p > 0):
            raise ValueError(f"periods must be positive numbers of seconds, got {p!r}")
        out.append(float(p))
    if not (math.isfinite(bin_s) and 0 < bin_s <= min(out)):
        raise ValueError(f"bin_s must be in (0, shortest period {min(out)}], got {bin_s!r}")
    return tuple(sorted(set(out)))


def _array(x: Any) -> np.ndarray:
    """A float array from a state value (a tensor after :func:`streamadapt.state.loads`)."""
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _new_table(bins: int, rows: int = 5) -> list[list[float]]:
    """A bin table as Python lists (rows of bins): scoring reads and writes single values,
    which lists do several times faster than numpy arrays; the state is arrays."""
    t = [[0.0] * bins for _ in range(rows)]
    t[_CYC] = [math.nan] * bins
    return t


class SeasonalProfile:
    """Per-key seasonal reference of a scalar signal; ``score_many`` returns residual z-scores.

    Parameters
    ----------
    periods
        Cycle lengths in seconds (a day, a week, ...).
    bin_s
        Width of a phase bin in seconds.
    alpha
        Weight of the newest cycle in each bin's mean (0.3: about three cycles of memory).
    spread_events
        Residuals a key needs before its spread is known (in its second cycle).
    spread_memory
        Memory of the spread in residuals of the key (exponential weight
        ``1 / spread_memory``; the first ones are averaged equally).
    min_spread
        Floor of the residual spread.
    max_keys
        Keys remembered (least recently seen forgotten first).
    """

    def __init__(
        self,
        periods: Sequence[float] = (DAY,),
        bin_s: float = 3600.0,
        alpha: float = 0.3,
        spread_events: int = 30,
        spread_memory: int = 500,
        min_spread: float = 1e-3,
        max_keys: int = 100_000,
    ) -> None:
        self._periods = _check_periods(periods, bin_s)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        if spread_events < 1:
            raise ValueError(f"spread_events must be >= 1, got {spread_events!r}")
        self.periods = tuple(periods)
        self.bin_s = bin_s
        self.alpha = alpha
        self.spread_events = spread_events
        self.spread_memory = spread_memory
        self.min_spread = min_spread
        self.max_keys = max_keys
        self._bins = [max(1, round(p / bin_s)) for p in self._periods]
        self._reset()

    def _reset(self) -> None:
        # per key: one bin table per period (shortest first), then the spread table (1 bin)
        self._keys: OrderedDict[str, list[list[list[float]]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _entry(self, key: str) -> list[list[list[float]]]:
        e = self._keys.get(key)
        if e is None:
            e = [_new_table(b) for b in self._bins] + [_new_table(1, rows=6)]
            e[-1][_FIRST][0] = math.nan
            self._keys[key] = e
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        return e

    def _fold(self, t: list[list[float]], j: int, cycle: float) -> None:
        """Move bin ``j``'s current-cycle values into its reference when ``cycle`` is new."""
        if t[_CYC][j] == cycle:
            return
        if t[_CW][j] > 0:
            m = t[_CS][j] / t[_CW][j]
            n = t[_N][j]
            t[_M][j] = m if n == 0 else t[_M][j] + max(self.alpha, 1.0 / (n + 1)) * (m - t[_M][j])
            t[_N][j] = n + 1
        t[_CW][j] = t[_CS][j] = 0.0
        t[_CYC][j] = cycle

    def _score_one(self, key: str, ts: float, v: float) -> float:
        e = self._entry(key)
        where = []
        ref = math.nan
        for period, bins, t in zip(self._periods, self._bins, e, strict=False):
            s = ts / period * bins - 0.5  # position in bin units; bin centres at integers
            k0 = math.floor(s)
            f = s - k0
            b0, c0 = k0 % bins, k0 // bins
            b1, c1 = (k0 + 1) % bins, (k0 + 1) // bins
            cyc = t[_CYC]
            if cyc[b0] != c0:
                self._fold(t, b0, c0)
            if cyc[b1] != c1:
                self._fold(t, b1, c1)
            where.append((t, b0, b1, f))
        for t, b0, b1, f in reversed(where):  # the longest period with a known reference
            w0 = (1.0 - f) if t[_N][b0] > 0 else 0.0
            w1 = f if t[_N][b1] > 0 else 0.0
            if w0 + w1 > 0:
                ref = (w0 * t[_M][b0] + w1 * t[_M][b1]) / (w0 + w1)
                break
        sp = e[-1]
        if not sp[_FIRST][0] <= ts:
            sp[_FIRST][0] = ts
        if ts - sp[_FIRST][0] < self._periods[0]:  # the key's first cycle: learn only
            ref = math.nan
        n = sp[_N][0]
        var = sp[_M][0] if n >= self.spread_events else math.nan
        r = v - ref
        if math.isfinite(r):
            r2, w = r * r, max(1.0 / (n + 1), 1.0 / self.spread_memory)
            if r2 > 9.0 * var:  # beyond 3 spreads: capped, and learnt ten times slower
                r2, w = 9.0 * var, w / 10
            sp[_M][0] += w * (r2 - sp[_M][0])
            sp[_N][0] = n + 1
        for t, b0, b1, f in where:
            t[_CW][b0] += 1.0 - f
            t[_CS][b0] += (1.0 - f) * v
            t[_CW][b1] += f
            t[_CS][b1] += f * v
        return r / max(math.sqrt(var), self.min_spread)

    def score_many(self, keys: Sequence[str], timestamps: Sequence[float] | np.ndarray,
                   values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Residual z-score of each value against its key's earlier cycles, then learn it.

        NaN where the reference or the spread is not known yet, or the value is not finite
        (such values are not learnt).
        """
        ts = np.asarray(timestamps, dtype=np.float64).tolist()
        vs = np.asarray(values, dtype=np.float64).tolist()
        if not len(keys) == len(ts) == len(vs):
            raise ValueError(f"keys, timestamps and values differ in length: "
                             f"{len(keys)}, {len(ts)}, {len(vs)}")
        out = np.full(len(vs), np.nan)
        for i, (k, t, v) in enumerate(zip(keys, ts, vs, strict=True)):
            if math.isfinite(v) and math.isfinite(t):
                out[i] = self._score_one(k, t, v)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: keys in LRU order and, per period, the stacked bin tables."""
        keys = list(self._keys)
        tables = [np.array([self._keys[k][i] for k in keys], dtype=np.float64) if keys
                  else np.zeros((0, 5 + (i == len(self._bins)), b))
                  for i, b in enumerate([*self._bins, 1])]
        return {"periods": list(self._periods), "bins": list(self._bins), "keys": keys,
                "tables": tables}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the periods and bins must match)."""
        if ([float(p) for p in state["periods"]] != list(self._periods)
                or [int(b) for b in state["bins"]] != self._bins):
            raise ValueError(f"state is for periods {state['periods']} with bins "
                             f"{state['bins']}; this profile has {list(self._periods)} with "
                             f"{self._bins}")
        self._reset()
        tables = [_array(t) for t in state["tables"]]
        for j, key in enumerate(state["keys"]):
            self._keys[key] = [t[j].tolist() for t in tables]


def _keys_of(task: str, xs: Sequence[Any]) -> list[str]:
    """Links key forecasts; clicks share one key (their statistics are not per user)."""
    if task == "forecast":
        return [x.key for x in xs]
    return ["*"] * len(xs)


class _Signal:
    def __init__(self, task: str, periods: Sequence[float], bin_s: float, alpha: float,
                 spread_events: int, max_keys: int) -> None:
        if task not in ("forecast", "ctr"):
            raise ValueError(f"unknown task {task!r}; valid choices: forecast, ctr")
        self.task = task
        self.periods = tuple(periods)
        self.bin_s = bin_s
        self.alpha = alpha
        self.spread_events = spread_events
        self.max_keys = max_keys
        self.profile = SeasonalProfile(periods, bin_s, alpha, spread_events,
                                       max_keys=max_keys)

    def state_dict(self) -> dict[str, Any]:
        """The profile's plain-data state."""
        return {"task": self.task, "profile": self.profile.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if state["task"] != self.task:
            raise ValueError(f"state is for task {state['task']!r}, not {self.task!r}")
        self.profile.load_state_dict(state["profile"])


class InputSignal(_Signal):
    """An input statistic as a residual against its key's same phase in earlier cycles.

    Parameters
    ----------
    task
        ``"forecast"`` (keyed by link) or ``"ctr"`` (one key).
    stat
        Input statistic name; None picks ``log_load`` (forecast) or ``numeric_mean`` (ctr).
    periods, bin_s, alpha, spread_events, max_keys
        The :class:`SeasonalProfile`.

    >>> from streamadapt.features import WindowStore
    >>> rng = np.random.default_rng(0)
    >>> store, sig = WindowStore(window=3), InputSignal("forecast", periods=(600.0,), bin_s=60.0)
    >>> load = lambda t: 100.0 * (1.5 + np.sin(2 * np.pi * t / 600)) * rng.lognormal(0, 0.02)
    >>> xs = [store.push("a", float(t), load(t)) for t in range(0, 2400, 10)]
    >>> z = sig(xs)
    >>> bool(np.isnan(z[:60]).all()), round(float(np.nanstd(z[120:])), 1)
    (True, 0.9)
    """

    def __init__(self, task: str, stat: str | None = None, periods: Sequence[float] = (DAY,),
                 bin_s: float = 3600.0, alpha: float = 0.3, spread_events: int = 30,
                 max_keys: int = 100_000) -> None:
        super().__init__(task, periods, bin_s, alpha, spread_events, max_keys)
        self.stat = stat
        name = stat or {"forecast": "log_load", "ctr": "numeric_mean"}[task]
        self._fn: Callable[[Sequence[Any]], np.ndarray] = input_stat(task, name)

    def __call__(self, xs: Sequence[Any]) -> np.ndarray:
        """Residual z-score of each input's statistic (NaN while its reference is unknown)."""
        return self.profile.score_many(_keys_of(self.task, xs),
                                       [float(x.timestamp) for x in xs], self._fn(xs))


class LossSignal(_Signal):
    """The drift loss as a residual against its key's same phase in earlier cycles.

    Parameters
    ----------
    task
        ``"forecast"`` (keyed by link) or ``"ctr"`` (one key).
    periods, bin_s, alpha, spread_events, max_keys
        The :class:`SeasonalProfile`.

    >>> rng = np.random.default_rng(0)
    >>> sig = LossSignal("forecast", periods=(100.0,), bin_s=10.0, spread_events=5)
    >>> class X:
    ...     key = "a"
    >>> t = np.arange(400.0)
    >>> y = np.full(400, 10.0)
    >>> p = y + rng.normal(0, 1 + (t % 100 < 50), 400)       # worse half of each cycle
    >>> p[300:] += 6.0                                        # then worse everywhere
    >>> z = sig([X()] * 400, y, p, t)
    >>> round(float(np.nanmean(z[100:300])), 1), bool(np.nanmean(z[300:]) > 2.0)
    (0.2, True)
    """

    def __init__(self, task: str, periods: Sequence[float] = (DAY,), bin_s: float = 3600.0,
                 alpha: float = 0.3, spread_events: int = 30, max_keys: int = 100_000) -> None:
        super().__init__(task, periods, bin_s, alpha, spread_events, max_keys)

    def __call__(self, xs: Sequence[Any], y_true: np.ndarray, y_pred: np.ndarray,
                 timestamps: np.ndarray) -> np.ndarray:
        """Residual z-score of each event's drift loss (NaN while its reference is unknown)."""
        loss = drift_loss(self.task, y_true, y_pred)
        return self.profile.score_many(_keys_of(self.task, xs), timestamps, loss)
