"""Prequential metrics against brute force and hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from streamadapt.events import NO_ID
from streamadapt.report import (
    LOGLOSS_EPS,
    PrequentialAccumulator,
    auc,
    ctr_metrics,
    forecast_metrics,
    gauc,
    logloss,
    rolling_series,
    slot_edges,
)


def pairwise_auc(y, s):
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("n, levels", [(5, 3), (40, 4), (300, 1000), (301, 2)])
def test_auc_equals_pairwise_count_with_ties(n, levels):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = rng.integers(0, levels, n) / levels  # few levels: many ties
    assert auc(y, s) == pytest.approx(pairwise_auc(y.tolist(), s.tolist()), abs=1e-12)


def test_auc_edge_cases():
    assert auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    assert auc(np.array([], dtype=float), np.array([])) is None
    assert auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_gauc_is_impression_weighted_mean_of_user_auc():
    rng = np.random.default_rng(7)
    users = rng.integers(0, 12, 400)
    y = rng.integers(0, 2, 400)
    y[users == 3] = 1  # a user with one class only: left out
    s = rng.random(400)
    num = den = used = 0
    for u in np.unique(users):
        m = users == u
        a = pairwise_auc(y[m].tolist(), s[m].tolist())
        if a is not None:
            num += a * m.sum()
            den += m.sum()
            used += 1
    value, n_users = gauc(y, s, users)
    assert n_users == used == 11
    assert value == pytest.approx(num / den, abs=1e-12)
    assert gauc(np.array([1, 1]), np.array([0.1, 0.2]), np.array([0, 0])) == (None, 0)


def test_mape_leaves_out_zero_loads_only():
    m = forecast_metrics(np.array([0.0, 2.0, 4.0]), np.array([1.0, 1.0, 5.0]))
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(1.0)
    # (|1 - 2| / 2 + |5 - 4| / 4) / 2 = 0.375
    assert m["mape"] == pytest.approx(37.5)
    assert m["mape_excluded"] == 1
    zeros = forecast_metrics(np.zeros(3), np.ones(3))
    assert zeros["mape"] is None and zeros["mape_excluded"] == 3 and zeros["mae"] == 1.0
    assert forecast_metrics(np.empty(0), np.empty(0))["mae"] is None


def test_rmse_and_mae_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 2.0, 1.0, 4.0])
    m = forecast_metrics(y, p)
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 4))


def test_logloss_is_clipped_and_matches_definition():
    y = np.array([1.0, 0.0, 1.0])
    p = np.array([0.8, 0.3, 0.0])  # a certain, wrong prediction
    expected = -(math.log(0.8) + math.log(0.7) + math.log(LOGLOSS_EPS)) / 3
    assert logloss(y, p) == pytest.approx(expected)
    assert math.isfinite(logloss(np.array([0.0]), np.array([1.0])))
    m = ctr_metrics(y, p, np.array([0, 0, 0]))
    assert m["click_rate"] == pytest.approx(2 / 3) and m["n"] == 3


def test_impressions_without_a_user_are_left_out_of_gauc_only():
    y = [1, 0, 1, 0, 1, 0]
    p = [0.9, 0.1, 0.2, 0.8, 0.7, 0.6]
    users = ["a", "a", NO_ID, NO_ID, "b", "b"]
    acc = PrequentialAccumulator("ctr")
    acc.update(y, p, range(6), users)
    m = acc.summary(n_slots=1)
    assert m["auc"] == pytest.approx(pairwise_auc(y, p)) and m["n"] == 6
    assert m["gauc"] == 1.0 and m["gauc_users"] == 2 and m["gauc_excluded"] == 2
    nobody = PrequentialAccumulator("ctr")
    nobody.update(y, p, range(6), [NO_ID] * 6)
    m = nobody.summary(n_slots=2)
    assert m["auc"] == pytest.approx(pairwise_auc(y, p))
    assert (m["gauc"], m["gauc_users"], m["gauc_excluded"]) == (None, 0, 6)
    assert [(s["gauc"], s["gauc_excluded"]) for s in m["slots"]] == [(None, 3), (None, 3)]
    # without no_group every score has a user, even one named like the placeholder
    assert ctr_metrics(np.array(y), np.array(p), np.zeros(6))["gauc_excluded"] == 0


def test_slot_edges():
    assert slot_edges(0.0, 10.0, 5).tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert slot_edges(0.0, 10.0, slot_seconds=4.0).tolist() == [0.0, 4.0, 8.0, 12.0]
    assert slot_edges(0.0, 8.0, slot_seconds=4.0).tolist() == [0.0, 4.0, 8.0, 12.0]
    assert len(slot_edges(5.0, 5.0, 10)) == 2
    with pytest.raises(ValueError, match="slot_seconds must be > 0, got 0"):
        slot_edges(0.0, 1.0, slot_seconds=0)
    with pytest.raises(ValueError, match="n_slots must be >= 1, got 0"):
        slot_edges(0.0, 1.0, 0)


def test_slots_partition_the_scores_and_match_subsets():
    rng = np.random.default_rng(3)
    n = 500
    t = np.sort(rng.uniform(0, 1000, n))
    y = rng.integers(0, 2, n).astype(float)
    p = rng.random(n)
    keys = [f"u{k}" for k in rng.integers(0, 20, n)]
    acc = PrequentialAccumulator("ctr")
    for lo in range(0, n, 64):  # fed in batches, as the pipeline does
        acc.update(y[lo:lo + 64], p[lo:lo + 64], t[lo:lo + 64], keys[lo:lo + 64])
    out = acc.summary(n_slots=4)
    assert out["n"] == n and len(acc) == n
    assert out["auc"] == pytest.approx(pairwise_auc(y.tolist(), p.tolist()))
    assert sum(s["n"] for s in out["slots"]) == n
    for s in out["slots"]:
        m = (t >= s["start"]) & ((t < s["end"]) | (s["end"] == t.max()))
        assert s["n"] == m.sum()
        assert s["auc"] == pytest.approx(pairwise_auc(y[m].tolist(), p[m].tolist()))


def test_empty_slots_are_kept_with_null_metrics():
    acc = PrequentialAccumulator("forecast")
    acc.update([1.0, 2.0], [1.0, 1.0], [0.0, 100.0], ["a", "a"])
    slots = acc.summary(n_slots=4)["slots"]
    assert [s["n"] for s in slots] == [1, 0, 0, 1]
    assert slots[1]["mae"] is None and slots[3]["mae"] == 1.0


def test_non_finite_predictions_are_counted_not_scored():
    acc = PrequentialAccumulator("forecast")
    acc.update([1.0, 2.0, 3.0], [1.0, float("nan"), float("inf")], [0, 1, 2], ["a"] * 3)
    out = acc.summary()
    assert out["n"] == 1 and out["non_finite_predictions"] == 2 and out["mae"] == 0.0


def test_update_rejects_ragged_input_and_bad_task():
    acc = PrequentialAccumulator("forecast")
    with pytest.raises(ValueError, match="1 labels, 2 predictions"):
        acc.update([1.0], [1.0, 2.0], [0.0], ["a"])
    with pytest.raises(ValueError, match="unknown task 'regression'; valid choices"):
        PrequentialAccumulator("regression")


def test_rolling_series_is_a_trailing_mean():
    v = np.arange(10, dtype=float)
    ts, vals = rolling_series(v, np.arange(10) * 2.0, window=3)
    brute = [v[max(0, i - 2):i + 1].mean() for i in range(10)]
    assert vals == pytest.approx(brute) and ts == (np.arange(10) * 2.0).tolist()
    ts, vals = rolling_series(np.ones(10_000), np.arange(10_000.0), window=50, max_points=100)
    assert len(vals) == 100 and ts[0] == 0.0 and ts[-1] == 9999.0
    assert rolling_series(np.empty(0), np.empty(0), 5) == ([], [])
