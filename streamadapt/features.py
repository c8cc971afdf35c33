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
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

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

    Parameters
    ----------
    window
        How many recent loads each input carries.
    max_keys
        How many keys are remembered; the least recently seen key is forgotten first.
    """

    def __init__(self, window: int = 12, max_keys: int = 100_000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._loads: OrderedDict[str, deque[float]] = OrderedDict()
        self._dts: dict[str, deque[float]] = {}
        self._last_ts: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._loads)

    def push(
        self,
        key: str,
        timestamp: float,
        load: float,
        covariates: Mapping[str, float] | None = None,
        event_id: str = "",
    ) -> ForecastInput:
        """Append one sample to the key's window and return the window as an input."""
        loads = self._loads.get(key)
        if loads is None:
            loads = deque(maxlen=self.window)
            dts: deque[float] = deque(maxlen=self.window)
            self._loads[key] = loads
            self._dts[key] = dts
            dt = 0.0
            if len(self._loads) > self.max_keys:
                old, _ = self._loads.popitem(last=False)
                del self._dts[old]
                del self._last_ts[old]
        else:
            self._loads.move_to_end(key)
            dts = self._dts[key]
            dt = max(timestamp - self._last_ts[key], 0.0)
        loads.append(load)
        dts.append(dt)
        self._last_ts[key] = timestamp
        return ForecastInput(key, timestamp, tuple(loads), tuple(dts), covariates or {}, event_id)

    def state_dict(self) -> dict:
        return {
            "window": self.window,
            "keys": list(self._loads),
            "loads": [list(v) for v in self._loads.values()],
            "dts": [list(self._dts[k]) for k in self._loads],
            "last_ts": [self._last_ts[k] for k in self._loads],
        }

    def export_keys(self, keys: Collection[str]) -> dict:
        """The windows of those of ``keys`` that are known, in :meth:`state_dict`'s format."""
        known = [k for k in keys if k in self._loads]
        return {
            "window": self.window,
            "keys": known,
            "loads": [list(self._loads[k]) for k in known],
            "dts": [list(self._dts[k]) for k in known],
            "last_ts": [self._last_ts[k] for k in known],
        }

    def import_keys(self, state: dict) -> None:
        """Take in what :meth:`export_keys` gave (overwriting those keys)."""
        for key, loads, dts, ts in zip(
            state["keys"], state["loads"], state["dts"], state["last_ts"], strict=True
        ):
            self._loads[key] = deque(loads, maxlen=self.window)
            self._loads.move_to_end(key)
            self._dts[key] = deque(dts, maxlen=self.window)
            self._last_ts[key] = ts
        while len(self._loads) > self.max_keys:
            old, _ = self._loads.popitem(last=False)
            del self._dts[old]
            del self._last_ts[old]

    def drop_keys(self, keys: Collection[str] | None = None) -> None:
        """Forget ``keys`` (all when None)."""
        for key in list(self._loads) if keys is None else keys:
            if self._loads.pop(key, None) is not None:
                del self._dts[key]
                del self._last_ts[key]

    def load_state_dict(self, state: dict) -> None:
        self._loads.clear()
        self._dts.clear()
        self._last_ts.clear()
        for key, loads, dts, ts in zip(
            state["keys"], state["loads"], state["dts"], state["last_ts"], strict=True
        ):
            self._loads[key] = deque(loads, maxlen=self.window)
            self._dts[key] = deque(dts, maxlen=self.window)
            self._last_ts[key] = ts
