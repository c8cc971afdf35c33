"""The synthetic click stream: seeded, time ordered, drifting, with delayed labels."""

import numpy as np
import pytest

from streamadapt.datasets import load_dataset
from streamadapt.datasets.clicks import click_stream
from streamadapt.events import Impression, Label
from streamadapt.pipeline import Pipeline


def test_seeded_and_registered():
    a, b = click_stream(seed=4, n_events=300), load_dataset("clicks", seed=4, n_events=300)
    assert [e.model_dump() for e in a.events] == [e.model_dump() for e in b.events]
    c = click_stream(seed=5, n_events=300)
    assert [e.label for e in a.events] != [e.label for e in c.events]


def _topic_rates(events, users, topics):
    clicks, shown = np.zeros((users, topics)), np.zeros((users, topics))
    for e in events:
        u, t = int(e.user_id[1:]), int(e.categorical["topic"][1:])
        shown[u, t] += 1
        clicks[u, t] += e.label
    return clicks / np.maximum(shown, 1)


@pytest.mark.parametrize(("fraction", "low", "high"), [(0.0, 0.8, 1.0), (1.0, -1.0, 0.5)])
def test_drift_shuffles_preferences(fraction, low, high):
    s = click_stream(seed=0, n_events=24_000, drift_at=12_000, n_users=12, n_topics=4,
                     drift_fraction=fraction)
    ev = list(s.events)
    before, after = _topic_rates(ev[:12_000], 12, 4), _topic_rates(ev[12_000:], 12, 4)
    r = np.corrcoef(before.ravel(), after.ravel())[0, 1]
    assert low < r < high, r
    assert s.drift_points == [ev[12_000].timestamp]
    assert 0.5 < s.info["oracle_auc"] <= 1.0


@pytest.mark.parametrize("negatives", [False, True])
def test_delayed_labels_come_later_in_time_order(negatives):
    s = click_stream(seed=1, n_events=2000, delay_s=60.0, emit_negatives=negatives)
    ev = list(s.events)
    ts = [e.timestamp for e in ev]
    assert ts == sorted(ts) and s.n_events == len(ev)
    shown = {e.event_id: e.timestamp for e in ev if isinstance(e, Impression)}
    labels = [e for e in ev if isinstance(e, Label)]
    assert all(e.label is None for e in ev if isinstance(e, Impression))
    assert all(30.0 <= e.timestamp - shown[e.event_id] <= 90.0 for e in labels)
    n_clicks = sum(e.label for e in labels)
    assert len(labels) == (2000 if negatives else n_clicks)
    assert n_clicks == pytest.approx(s.info["click_rate"] * 2000)


def test_pipeline_joins_every_delayed_label():
    from streamadapt.adapters.naive import ClickRate

    s = click_stream(seed=3, n_events=3000, delay_s=60.0)
    pipe = Pipeline("ctr", {"rate": ClickRate()}, attribution_window_s=90.0)
    ev = list(s.events)
    scored = dead = 0
    for i in range(0, len(ev), 100):
        out = pipe.step(ev[i:i + 100])
        scored += len(out.scores.get("rate", []))
        dead += len(out.dead_letters)
    assert dead == 0 and scored + pipe.pending == 3000


@pytest.mark.parametrize(("params", "message"), [
    ({"drift_at": 0}, r"drift_at must lie in 1..99, got \[0\]"),
    ({"delay_s": -1.0}, "delay_s must be > 0 or None, got -1.0"),
    ({"drift_fraction": 2.0}, r"drift_fraction must be in \[0, 1\], got 2.0"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        click_stream(n_events=100, **params)
