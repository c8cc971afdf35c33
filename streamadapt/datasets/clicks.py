"""A synthetic click stream whose users change their tastes abruptly (seeded).

Users like some item topics and dislike others; at each drift point every affected user's
topic preferences are shuffled, so what the model learned about that user's tastes turns
wrong at once. The stream measures how fast a click model recovers after such a change
(the responsiveness ReLoop2 is about; Zhu et al., KDD 2023, arXiv 2306.08808).

Click model, per impression of item ``i`` (topic ``c(i)``) to user ``u`` at slot
``position``::

    p = sigmoid(base_logit + strength * pref[u, c(i)] + item_bias[i] - 0.3 * position)

with ``pref`` drawn from N(0, 1) per user and topic, ``item_bias`` from N(0, 0.5²).
Impressions are ``interval_s`` apart on average (exponential gaps). With ``delay_s`` set,
impressions carry no label: each click comes later as a :class:`~streamadapt.events.Label`
event, ``delay_s * U(0.5, 1.5)`` seconds after its impression (bounded, so an attribution
window of ``1.5 * delay_s`` sees them all); non-clicks get a ``Label(0)`` only when
``emit_negatives`` is set (otherwise the attribution window resolves them). All events come
out in time order. ``info["oracle_auc"]`` is the AUC of the true click probabilities, the
ceiling any model can reach on the stream.

>>> s = click_stream(seed=1, n_events=1000, drift_at=500, delay_s=30.0)
>>> s.task, s.n_events == len(s.events), len(s.drift_points)
('ctr', True, 1)
>>> ts = [e.timestamp for e in s.events]
>>> ts == sorted(ts), sum(e.kind == "impression" for e in s.events)
(True, 1000)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from streamadapt.datasets import Stream
from streamadapt.events import Event, Impression, Label
from streamadapt.report import auc

__all__ = ["click_stream"]

T0 = 1_700_000_000.0


def click_stream(
    seed: int = 0,
    n_events: int = 20_000,
    drift_at: int | Sequence[int] | None = None,
    delay_s: float | None = None,
    emit_negatives: bool = False,
    n_users: int = 200,
    n_items: int = 500,
    n_topics: int = 8,
    strength: float = 2.0,
    base_logit: float = -1.0,
    drift_fraction: float = 1.0,
    interval_s: float = 1.0,
) -> Stream:
    """Impressions (and delayed labels) with abrupt preference drift.

    Parameters
    ----------
    seed
        Seed of everything random.
    n_events
        Number of impressions (``Label`` events come on top).
    drift_at
        Impression indices where preferences shuffle; ``None`` means one drift at the middle,
        ``()`` means none.
    delay_s
        ``None``: labels inline. Otherwise labels come as later ``Label`` events.
    emit_negatives
        With ``delay_s``: also emit ``Label(0)`` for non-clicks.
    n_users, n_items, n_topics
        Population sizes.
    strength
        Weight of user-topic preference in the click logit.
    base_logit
        Click logit offset (sets the overall click rate).
    drift_fraction
        Share of users whose preferences shuffle at each drift point.
    interval_s
        Mean seconds between impressions.
    """
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")
    if delay_s is not None and not delay_s > 0:
        raise ValueError(f"delay_s must be > 0 or None, got {delay_s}")
    if not 0.0 <= drift_fraction <= 1.0:
        raise ValueError(f"drift_fraction must be in [0, 1], got {drift_fraction}")
    if min(n_users, n_items, n_topics) < 1:
        raise ValueError(f"n_users, n_items, n_topics must be >= 1, got "
                         f"{n_users}, {n_items}, {n_topics}")
    drifts = [n_events // 2] if drift_at is None else (
        [drift_at] if isinstance(drift_at, int) else list(drift_at))
    bad = [d for d in drifts if not 0 < d < n_events]
    if bad:
        raise ValueError(f"drift_at must lie in 1..{n_events - 1}, got {bad}")
    rng = np.random.default_rng(seed)
    pref = rng.normal(size=(n_users, n_topics))
    topic = rng.integers(n_topics, size=n_items)
    item_bias = rng.normal(0.0, 0.5, size=n_items)
    users = rng.integers(n_users, size=n_events)
    items = rng.integers(n_items, size=n_events)
    position = rng.integers(5, size=n_events)
    stamps = T0 + np.cumsum(rng.exponential(interval_s, size=n_events))
    coins = rng.random(n_events)
    delays = None if delay_s is None else delay_s * rng.uniform(0.5, 1.5, size=n_events)
    clicks = np.empty(n_events, dtype=np.int64)
    prob = np.empty(n_events)
    edges = [0, *sorted(drifts), n_events]
    for k in range(len(edges) - 1):
        if k > 0:  # shuffle the tastes of a share of users
            moved = rng.random(n_users) < drift_fraction
            for u in np.flatnonzero(moved):
                pref[u] = pref[u, rng.permutation(n_topics)]
        sl = slice(edges[k], edges[k + 1])
        u, i = users[sl], items[sl]
        logit = base_logit + strength * pref[u, topic[i]] + item_bias[i] - 0.3 * position[sl]
        prob[sl] = 1.0 / (1.0 + np.exp(-logit))
        clicks[sl] = coins[sl] < prob[sl]

    impressions = [
        Impression(
            event_id=f"c{seed}-{j}", user_id=f"u{users[j]}", item_id=f"i{items[j]}",
            timestamp=float(stamps[j]), categorical={"topic": f"t{topic[items[j]]}"},
            numeric={"position": float(position[j])},
            label=None if delay_s is not None else int(clicks[j]),
        )
        for j in range(n_events)
    ]
    events: list[Event]
    if delays is None:
        events = list(impressions)
    else:
        labels = [
            Label(event_id=f"c{seed}-{j}", label=float(clicks[j]),
                  timestamp=float(stamps[j] + delays[j]))
            for j in range(n_events) if clicks[j] or emit_negatives
        ]
        labels.sort(key=lambda e: e.timestamp)
        events = list(heapq.merge(impressions, labels, key=lambda e: e.timestamp))
    return Stream(
        name="clicks",
        task="ctr",
        events=events,
        drift_points=[float(stamps[d]) for d in sorted(drifts)],
        n_events=len(events),
        info={"seed": seed, "impressions": n_events, "drift_at": sorted(drifts),
              "n_users": n_users, "n_items": n_items, "n_topics": n_topics,
              "click_rate": float(clicks.mean()), "delay_s": delay_s,
              "oracle_auc": auc(clicks, prob)},
    )
