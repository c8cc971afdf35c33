"""Prequential metrics: cumulative, per chronological slot, and as rolling series for plots.

Each scored prediction was made *before* its label entered any model (the interleaved
test-then-train protocol of Gama, Sebastião and Rodrigues, "On evaluating stream learning
algorithms", Machine Learning 90, 2013), so every metric here is an honest online score.

Forecast metrics
----------------
``mae``, ``rmse`` and ``mape`` (percent). MAPE divides by the true load, which is undefined
for a zero load: events whose true load is exactly 0 are **left out of MAPE only** (they still
count in MAE and RMSE) and their number is reported as ``mape_excluded``. When every true
load is 0, ``mape`` is ``None``.

Click metrics
-------------
``auc``: the exact rank-based AUC (Mann-Whitney U with mid-ranks for ties), ``None`` while
only one class has been seen. ``logloss``: predictions clipped to ``[eps, 1 - eps]`` with
``eps = 1e-7``. ``gauc``: the impression-weighted mean of per-user AUC over the users who
have both a click and a non-click (Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018); ``gauc_users`` is how many users entered it. An impression whose
user is :data:`~streamadapt.events.NO_ID` (a stream without users) has no user to group by:
it counts in every other metric but is left out of gAUC, and ``gauc_excluded`` says how many
were. A stream with no users at all therefore reports ``gauc`` as ``None`` (not a copy of the
AUC), with ``gauc_users`` 0.

Slots
-----
Scores are grouped by the event time at which their label became known: ``n_slots`` equal
slots over the scored time span, or fixed ``slot_seconds`` wide slots from the first score.
Empty slots are kept (``n = 0``, metrics ``None``) so slots line up across models.

>>> acc = PrequentialAccumulator("ctr")
>>> acc.update([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], [0, 1, 2, 3], ["a", "a", "b", "b"])
>>> summary = acc.summary(n_slots=2)
>>> summary["auc"], summary["gauc"], [s["n"] for s in summary["slots"]]
(0.75, 0.5, [2, 2])
>>> anonymous = PrequentialAccumulator("ctr")
>>> anonymous.update([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], [0, 1, 2, 3], ["-"] * 4)
>>> s = anonymous.summary(n_slots=1)
>>> s["auc"], s["gauc"], s["gauc_users"], s["gauc_excluded"]
(0.75, None, 0, 4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamadapt.events import NO_ID

__all__ = [
    "PrequentialAccumulator",
    "auc",
    "gauc",
    "logloss",
    "forecast_metrics",
    "ctr_metrics",
    "slot_edges",
    "rolling_series",
    "LOGLOSS_EPS",
    "NO_GROUP",
]

LOGLOSS_EPS = 1e-7
#: The group id :class:`PrequentialAccumulator` gives impressions without a user (NO_ID).
NO_GROUP = -1
#: The metric plotted as a rolling series, per task.
ROLLING_METRIC = {"forecast": "mae", "ctr": "logloss"}


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Exact ROC AUC by ranks (ties get their mid-rank); ``None`` with fewer than 2 classes.

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y_true) >= 0.5
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    s = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # mid-ranks: every run of equal scores gets the mean of its 1-based positions
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [s.size]])
    mid = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def gauc(
    y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray
) -> tuple[float | None, int]:
    """Impression-weighted mean of per-group AUC over groups with both classes.

    Returns ``(gauc, number of groups used)``; ``(None, 0)`` when no group qualifies.

    >>> gauc(np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([0, 0, 1, 1]))
    (1.0, 1)
    """
    g = np.asarray(groups)
    if g.size == 0:
        return None, 0
    order = np.argsort(g, kind="mergesort")
    g_sorted = g[order]
    cuts = np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1
    total, weight, used = 0.0, 0, 0
    y = np.asarray(y_true)[order]
    s = np.asarray(y_score)[order]
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [g.size]]), strict=True):
        a = auc(y[lo:hi], s[lo:hi])
        if a is not None:
            total += a * int(hi - lo)
            weight += int(hi - lo)
            used += 1
    return (float(total / weight) if weight else None), used


def logloss(y_true: np.ndarray, y_prob: np.ndarray, eps: float = LOGLOSS_EPS) -> float | None:
    """Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(y_true, dtype=np.float64)
    if y.size == 0:
        return None
    p = np.clip(np.asarray(y_prob, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and MAPE (percent, zero loads left out; see the module docstring)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    n = int(y.size)
    if n == 0:
        return {"n": 0, "mae": None, "rmse": None, "mape": None, "mape_excluded": 0}
    err = p - y
    nz = y != 0.0
    n_nz = int(nz.sum())
    mape = float(np.mean(np.abs(err[nz]) / np.abs(y[nz])) * 100.0) if n_nz else None
    return {
        "n": n,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err * err))),
        "mape": mape,
        "mape_excluded": n - n_nz,
    }


def ctr_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: np.ndarray,
    no_group: int | None = None,
) -> dict[str, Any]:
    """AUC, clipped logloss, gAUC, the click rate and the mean predicted probability.

    Parameters
    ----------
    y_true, y_prob
        The 0/1 labels and the predicted click probabilities.
    groups
        The user of each score (any comparable values), for gAUC.
    no_group
        The group value meaning "no user": those scores are left out of gAUC only and
        counted in ``gauc_excluded``. ``None``: every score has a user.

    >>> m = ctr_metrics(np.array([1, 0]), np.array([0.8, 0.3]), np.array([7, 7]), no_group=7)
    >>> m["auc"], m["gauc"], m["gauc_users"], m["gauc_excluded"]
    (1.0, None, 0, 2)
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    n = int(y.size)
    g_all = np.asarray(groups)
    has_user = (g_all != no_group) if no_group is not None else np.ones(n, dtype=bool)
    g, used = gauc(y[has_user], p[has_user], g_all[has_user])
    return {
        "n": n,
        "auc": auc(y, p) if n else None,
        "logloss": logloss(y, p),
        "gauc": g,
        "gauc_users": used,
        "gauc_excluded": n - int(has_user.sum()),
        "click_rate": float(y.mean()) if n else None,
        "mean_prediction": float(np.mean(p)) if n else None,
    }


def slot_edges(
    t_min: float, t_max: float, n_slots: int = 10, slot_seconds: float | None = None
) -> np.ndarray:
    """Slot boundaries over ``[t_min, t_max]``: ``n_slots`` equal slots, or fixed width."""
    if slot_seconds is not None:
        if not slot_seconds > 0:
            raise ValueError(f"slot_seconds must be > 0, got {slot_seconds!r}")
        count = math.floor((t_max - t_min) / slot_seconds) + 1
        return t_min + slot_seconds * np.arange(count + 1, dtype=np.float64)
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots!r}")
    if t_max <= t_min:
        return np.array([t_min, t_min + 1.0])
    return np.linspace(t_min, t_max, n_slots + 1)


def rolling_series(
    values: np.ndarray, timestamps: np.ndarray, window: int, max_points: int = 500
) -> tuple[list[float], list[float]]:
    """Trailing mean of ``values`` over ``window`` scores, thinned to ``max_points``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [], []
    w = max(1, min(window, v.size))
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - w, 0)
    mean = (c[idx] - c[lo]) / (idx - lo)
    keep = np.unique(np.linspace(0, v.size - 1, min(max_points, v.size)).astype(np.int64))
    return np.asarray(timestamps)[keep].tolist(), mean[keep].tolist()


class PrequentialAccumulator:
    """Collects one model's scored predictions and summarises them.

    The scores are kept as compact numpy chunks (true value, prediction, label time, a small
    integer per key), about 28 bytes a score, because exact AUC needs every score and equal
    time slots need the whole span. Non-finite predictions are counted, not scored. For
    ``"ctr"`` the key is the user, and the key :data:`~streamadapt.events.NO_ID` gets the
    id :data:`NO_GROUP`, which gAUC leaves out.

    Parameters
    ----------
    task
        ``"forecast"`` or ``"ctr"``.
    """

    def __init__(self, task: str) -> None:
        if task not in ROLLING_METRIC:
            raise ValueError(f"unknown task {task!r}; valid choices: forecast, ctr")
        self.task = task
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._key_ids: dict[str, int] = {NO_ID: NO_GROUP} if task == "ctr" else {}
        self.non_finite = 0

    def __len__(self) -> int:
        return sum(c[0].size for c in self._chunks)

    def update(
        self,
        y_true: Sequence[float] | np.ndarray,
        y_pred: Sequence[float] | np.ndarray,
        timestamps: Sequence[float] | np.ndarray,
        keys: Sequence[str],
    ) -> None:
        """Add a batch of scores (e.g. one :class:`~streamadapt.pipeline.Scores`)."""
        y = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(y_pred, dtype=np.float64)
        t = np.asarray(timestamps, dtype=np.float64)
        if not (y.size == p.size == t.size == len(keys)):
            raise ValueError(
                f"lengths differ: {y.size} labels, {p.size} predictions, {t.size} times, "
                f"{len(keys)} keys"
            )
        ids = self._key_ids
        k = np.fromiter((ids.setdefault(key, len(ids)) for key in keys), np.int32, len(keys))
        ok = np.isfinite(p)
        if not ok.all():
            self.non_finite += int((~ok).sum())
            y, p, t, k = y[ok], p[ok], t[ok], k[ok]
        if y.size:
            self._chunks.append((y, p, t, k))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Everything scored so far: ``(y_true, y_pred, timestamps, key ids)``."""
        if not self._chunks:
            e = np.empty(0)
            return e, e, e, np.empty(0, dtype=np.int32)
        return tuple(np.concatenate(parts) for parts in zip(*self._chunks, strict=True))  # type: ignore[return-value]

    def _metrics(self, y: np.ndarray, p: np.ndarray, k: np.ndarray) -> dict[str, Any]:
        if self.task == "forecast":
            return forecast_metrics(y, p)
        return ctr_metrics(y, p, k, no_group=NO_GROUP)

    def summary(
        self,
        n_slots: int = 10,
        slot_seconds: float | None = None,
        edges: np.ndarray | None = None,
        rolling_window: int | None = None,
    ) -> dict[str, Any]:
        """Cumulative metrics, a ``"slots"`` list and a ``"rolling"`` series.

        ``edges`` (from :func:`slot_edges`) overrides ``n_slots``/``slot_seconds`` so that
        several models share the same slots.
        """
        y, p, t, k = self.arrays()
        out = self._metrics(y, p, k)
        out["non_finite_predictions"] = self.non_finite
        if edges is None:
            edges = (slot_edges(float(t.min()), float(t.max()), n_slots, slot_seconds)
                     if t.size else np.empty(0))
        slots = []
        if len(edges) >= 2:
            which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
            for i in range(len(edges) - 1):
                m = which == i
                slots.append({"start": float(edges[i]), "end": float(edges[i + 1]),
                              **self._metrics(y[m], p[m], k[m])})
        out["slots"] = slots
        metric = ROLLING_METRIC[self.task]
        if self.task == "forecast":
            per_score = np.abs(p - y)
        else:
            q = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
            per_score = -(y * np.log(q) + (1.0 - y) * np.log1p(-q))
        window = rolling_window or max(20, y.size // 100)
        ts, vals = rolling_series(per_score, t, window)
        out["rolling"] = {"metric": metric, "window": window, "timestamps": ts, "values": vals}
        return out
