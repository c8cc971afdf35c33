"""The link-load failure scenario: routing and re-routing on topologies with known answers,
the failure schedule, determinism, and the stream's shape."""

from __future__ import annotations

import numpy as np
import pytest

from streamadapt.adapters.naive import LastValue
from streamadapt.datasets import load_dataset
from streamadapt.datasets.linkload import (
    Failure,
    failure_shifts,
    linkload_stream,
    route_loads,
    route_paths,
)
from streamadapt.datasets.topologies import Topology, get_topology, link_id, random_topology
from streamadapt.pipeline import Pipeline

# A triangle with a long direct link A-C (weight 3) and a short detour A-B-C (2 hops of 1),
# plus a pendant node D hanging off C (a bridge).
TRI = Topology(
    "tri",
    {"A": 1.0, "B": 1.0, "C": 1.0, "D": 1.0},
    (("A", "B", 1.0), ("B", "C", 1.0), ("A", "C", 3.0), ("C", "D", 1.0)),
)


def test_shortest_paths_known_answer():
    paths = route_paths(TRI)
    assert paths[("A", "C")] == ["A-B", "B-C"]
    assert paths[("A", "D")] == ["A-B", "B-C", "C-D"]
    assert paths[("B", "D")] == ["B-C", "C-D"]


def test_loads_known_answer_and_rerouting():
    demands = {("A", "C"): 5.0, ("B", "C"): 2.0, ("A", "D"): 1.0}
    before = route_loads(TRI, demands)
    assert before == {"A-B": 6.0, "B-C": 8.0, "A-C": 0.0, "C-D": 1.0}
    # B-C fails: A->C and A->D take the direct link, B->C goes round B-A-C
    after = route_loads(TRI, demands, {"B-C"})
    assert after == {"A-B": 2.0, "B-C": 0.0, "A-C": 8.0, "C-D": 1.0}
    # the bridge C-D fails: A->D is dropped from every link it crossed
    cut = route_loads(TRI, demands, {"C-D"})
    assert cut == {"A-B": 5.0, "B-C": 7.0, "A-C": 0.0, "C-D": 0.0}


def test_shifts_skip_bridges_and_rank_failures():
    demands = {("A", "C"): 5.0, ("B", "C"): 2.0, ("A", "D"): 1.0}
    shifts = failure_shifts(TRI, demands)
    assert "C-D" not in shifts
    assert shifts["A-C"] == 0.0  # carries nothing, failing it moves nothing
    # B-C down: A-B 6->2, A-C 0->8 (C-D unchanged) over a total load of 15
    assert shifts["B-C"] == pytest.approx((4 + 8) / 15)


def test_failed_link_is_silent_until_repaired():
    s = linkload_stream(seed=3, topology="abilene", n_steps=40, noise=0.0,
                        failures=[Failure(step=20, link="KSCY-HSTN", repair_step=30)])
    events = list(s.events)
    by_step: dict[float, dict[str, float]] = {}
    for e in events:
        by_step.setdefault(e.timestamp, {})[e.link_id] = e.load
    # the failed link is silent while it is down and speaks again after the repair
    for step in range(40):
        loads = by_step[step * 300.0]
        assert ("HSTN-KSCY" in loads) == (not 20 <= step < 30)
    assert s.drift_points == [20 * 300.0, 30 * 300.0]
    assert s.info["failures"][0]["link"] == "HSTN-KSCY"


def test_failure_moves_load_onto_the_detour():
    topo = get_topology("abilene")
    s = linkload_stream(seed=0, topology=topo, n_steps=200, noise=0.0,
                        failures=[{"step": 100, "link": "LOSA-HSTN"}])
    loads: dict[str, list[float]] = {}
    for e in s.events:
        loads.setdefault(e.link_id, []).append(e.load)
    demands = {(a, b): 1.0 for a in topo.nodes for b in topo.nodes if a != b}
    before, after = route_loads(topo, demands), route_loads(topo, demands, {"HSTN-LOSA"})
    gained = [k for k in before if after[k] > before[k]]
    assert gained
    for k in gained:  # the step of the failure jumps well above the step before it
        assert loads[k][100] > loads[k][99] * 1.05
    assert len(loads["HSTN-LOSA"]) == 100


def test_deterministic_and_seeded():
    a = [e.model_dump() for e in linkload_stream(seed=5, n_steps=30).events]
    b = [e.model_dump() for e in linkload_stream(seed=5, n_steps=30).events]
    c = [e.model_dump() for e in linkload_stream(seed=6, n_steps=30).events]
    assert a == b
    assert a != c
    assert len({e["event_id"] for e in a}) == len(a)


def test_time_order_with_jitter_and_reiterable():
    s = linkload_stream(seed=2, topology="nsfnet", n_steps=50, jitter=0.3)
    ts = [e.timestamp for e in s.events]
    assert ts == sorted(ts)
    assert len(set(np.diff(ts).round(6))) > 2  # irregular spacing
    assert len(list(s.events)) == s.n_events == len(ts)


def test_severity_picks_larger_shift_for_drastic():
    for topo in ("abilene", "nsfnet", "random"):
        d = linkload_stream(seed=1, topology=topo, n_steps=10, severity="drastic")
        m = linkload_stream(seed=1, topology=topo, n_steps=10, severity="moderate")
        assert d.info["failures"][0]["shift"] > 2 * m.info["failures"][0]["shift"] > 0


def test_random_topology_survives_any_single_failure():
    topo = random_topology(10, seed=4)
    n_pairs = 10 * 9
    for lid in topo.link_ids:
        assert len(route_paths(topo, {lid})) == n_pairs


def test_real_topologies_are_connected_and_documented_sizes():
    for name, n, m in (("abilene", 11, 14), ("nsfnet", 14, 21)):
        t = get_topology(name)
        assert (len(t.nodes), len(t.links)) == (n, m)
        assert len(route_paths(t)) == n * (n - 1)
    assert link_id("B", "A") == "A-B"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"severity": "mild"}, "valid choices: drastic, moderate"),
        ({"topology": "euro28"}, "valid choices: abilene, nsfnet, random"),
        ({"failures": [{"step": 5, "link": "X-Y"}]}, "unknown link 'X-Y'"),
        ({"failures": [{"step": 500}]}, "outside"),
        ({"failures": [{"step": 5, "repair_step": 3}]}, "must be after"),
        ({"jitter": 0.7}, "jitter"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linkload_stream(n_steps=20, **kwargs)


def test_limit_and_dataset_registry_and_pipeline():
    s = load_dataset("linkload", seed=0, n_steps=20, limit=100)
    events = list(s.events)
    assert len(events) == s.n_events == 100
    p = Pipeline("forecast", {"naive": LastValue()})
    out = p.step(events)
    assert len(out.predictions) == 100
    assert len(out.scores["naive"]) == 100 - 14  # each link's first sample has no label yet


def test_encoded_records_are_the_events_as_encode_writes_them():
    from streamadapt.events import encode

    for stream in (linkload_stream(seed=1, n_steps=120),
                   linkload_stream(seed=2, jitter=0.3, n_steps=120, limit=700)):
        events = stream.events
        want = [encode(e) for e in events]
        got = list(events.encoded())
        assert len(want) == len(events) and got == want
