"""Per-link state shared by the neural forecasters: running scales, hidden-state slots
(LRU over links) and the encoding of a load window into features.

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
from typing import Any

import numpy as np
import torch

from streamadapt.features import ForecastInput
from streamadapt.state import load_optimizer_state, optimizer_state

__all__ = [
    "LinkScales",
    "encode_windows",
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


class LinkScales:
    """Per-key running statistics and hidden-state slots in growable arrays, with an LRU
    over ``max_keys`` keys; a new key reuses the slot of the one it evicts.

    Per key: ``ts`` (timestamp of the last sample taken in), ``n`` (samples taken in),
    ``mean`` (exponentially weighted mean load, for reports), ``var`` (exponentially weighted mean
    square of the relative one-step change, each change winsorised at three times the
    current root mean square, starting from the prior ``0.02 ** 2``), and,
    when ``width > 0``, the hidden state before (``h_in``) and after (``h_out``) the last
    sample.
    """

    PRIOR_VAR = 0.02**2

    def __init__(self, max_keys: int, width: int = 0) -> None:
        self.max_keys = max_keys
        self.width = width
        self.slot_of: OrderedDict[str, int] = OrderedDict()
        self._alloc(min(max_keys, 64))

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "ts", None)
        n = 0 if old is None else old.shape[0]
        grow = cap - n

        def ext(a: np.ndarray | None, fill: float) -> np.ndarray:
            new = np.full(grow, fill)
            return new if a is None else np.concatenate([a, new])

        self.ts = ext(old, -np.inf)
        self.n = ext(getattr(self, "n", None), 0.0)
        self.mean = ext(getattr(self, "mean", None), 0.0)
        self.var = ext(getattr(self, "var", None), self.PRIOR_VAR)
        zeros = torch.zeros(grow, self.width)
        self.h_in = zeros if old is None else torch.cat([self.h_in, zeros])
        self.h_out = zeros.clone() if old is None else torch.cat([self.h_out, zeros])

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
                self.ts[s], self.n[s], self.mean[s] = -np.inf, 0.0, 0.0
                self.var[s] = self.PRIOR_VAR
                self.h_in[s] = 0.0
                self.h_out[s] = 0.0
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

    def state_dict(self) -> dict[str, Any]:
        idx = np.fromiter(self.slot_of.values(), np.int64, len(self.slot_of))
        t = torch.from_numpy(idx)
        return {"keys": list(self.slot_of), "ts": self.ts[idx], "n": self.n[idx],
                "mean": self.mean[idx], "var": self.var[idx],
                "h_in": self.h_in[t].clone(), "h_out": self.h_out[t].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = list(state["keys"])
        self.slot_of = OrderedDict((k, i) for i, k in enumerate(keys))
        for name in ("ts", "h_in", "h_out", "n", "mean", "var"):
            self.__dict__.pop(name, None)
        self._alloc(max(min(self.max_keys, 64), len(keys)))
        m = len(keys)
        for name in ("ts", "n", "mean", "var"):
            getattr(self, name)[:m] = np.asarray(state[name], dtype=np.float64)
        self.h_in[:m] = torch.as_tensor(state["h_in"], dtype=torch.float32)
        self.h_out[:m] = torch.as_tensor(state["h_out"], dtype=torch.float32)


    # -- per-key state, moved with its partition ---------------------------------------------
    def export_keys(self, keys: Collection[str]) -> dict[str, Any]:
        """The state of those of ``keys`` that are known, in :meth:`state_dict`'s format."""
        known = [k for k in keys if k in self.slot_of]
        idx = np.array([self.slot_of[k] for k in known], dtype=np.int64)
        t = torch.from_numpy(idx)
        return {"keys": known, "ts": self.ts[idx], "n": self.n[idx], "mean": self.mean[idx],
                "var": self.var[idx], "h_in": self.h_in[t].clone(),
                "h_out": self.h_out[t].clone()}

    def import_keys(self, state: dict[str, Any]) -> None:
        """Take in what :meth:`export_keys` gave (overwriting those keys)."""
        keys = list(state["keys"])
        if not keys:
            return
        slots = self.slots(keys)
        for name in ("ts", "n", "mean", "var"):
            getattr(self, name)[slots] = np.asarray(state[name], dtype=np.float64)
        t = torch.from_numpy(slots)
        if self.width:
            self.h_in[t] = torch.as_tensor(state["h_in"], dtype=torch.float32)
            self.h_out[t] = torch.as_tensor(state["h_out"], dtype=torch.float32)

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


def _padded(xs: Sequence[ForecastInput], window: int) -> np.ndarray:
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
    loads = _padded(xs, window)
    if take_in is not None and take_in.any():
        last = loads[:, -1]
        level = np.maximum(loads.mean(axis=1), 1e-6)
        has = np.array([len(x.loads) >= 2 for x in xs]) & take_in
        change = (last - loads[:, -2]) / level
        scales.update(slots[take_in], last[take_in], change[take_in], has[take_in], alpha)
    return _features(xs, loads, scales.var[slots], time_scale_s, clip)


def window_features(xs: Sequence[ForecastInput], var: np.ndarray, window: int,
                    time_scale_s: float, clip: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`encode_windows` gives, from each row's relative variance ``var`` instead
    of a slot: a pure function, for encodings that must not touch any link's statistics."""
    return _features(xs, _padded(xs, window), np.asarray(var, dtype=np.float64), time_scale_s,
                     clip)


def _features(xs: Sequence[ForecastInput], loads: np.ndarray, var: np.ndarray,
              time_scale_s: float, clip: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
