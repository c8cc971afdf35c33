"""Seasonal signals (streamadapt.drift.seasonal) and watcher checkpoints."""

import numpy as np
import pytest

from streamadapt import state
from streamadapt.drift import DETECTORS, SignalWatcher
from streamadapt.drift.seasonal import DAY, WEEK, InputSignal, LossSignal, SeasonalProfile
from streamadapt.features import WindowStore


def _daily(n_days: float, step: float = 600.0, seed: int = 0, keys: int = 1):
    rng = np.random.default_rng(seed)
    t = np.repeat(np.arange(0, n_days * DAY, step), keys)
    k = np.tile([f"k{i}" for i in range(keys)], len(t) // keys)
    level = np.tile(np.arange(1, keys + 1, dtype=float), len(t) // keys)
    v = level * (2 + np.sin(2 * np.pi * t / DAY)) + rng.normal(0, 0.05, len(t))
    return list(k), t, v


def test_a_daily_cycle_is_not_a_residual_but_a_shift_is():
    keys, t, v = _daily(4, keys=3)
    v[t >= 3.5 * DAY] += 0.5
    z = SeasonalProfile().score_many(keys, t, v)
    assert np.isnan(z[t < DAY]).all()
    quiet = z[(t >= 2 * DAY) & (t < 3.5 * DAY)]
    assert 0.7 < np.nanstd(quiet) < 1.4 and abs(np.nanmean(quiet)) < 0.3
    assert np.nanmedian(z[t >= 3.5 * DAY]) > 5


def test_the_current_cycle_never_joins_its_own_reference():
    # a shift lasting the whole rest of a cycle stays visible to its end
    keys, t, v = _daily(3)
    v[t >= 2.2 * DAY] += 0.5
    z = SeasonalProfile().score_many(keys, t, v)
    late = z[(t >= 2.8 * DAY)]
    assert np.nanmin(late) > 3


def test_a_week_falls_back_to_the_day_until_it_is_known():
    rng = np.random.default_rng(1)
    t = np.arange(0, 16 * DAY, 1800.0)
    weekend = ((t // DAY) % 7 >= 5).astype(float)
    v = np.sin(2 * np.pi * t / DAY) + 2 * weekend + rng.normal(0, 0.05, t.size)
    both = SeasonalProfile(periods=(DAY, WEEK)).score_many(["a"] * t.size, t, v)
    day = SeasonalProfile(periods=(DAY,)).score_many(["a"] * t.size, t, v)
    first_week = (t >= DAY) & (t < 6.9 * DAY)
    np.testing.assert_allclose(both[first_week], day[first_week])
    saturday = t // DAY == 12  # the day profile expects Friday's level, the week knows better
    assert np.nanmean(np.abs(both[saturday])) < np.nanmean(np.abs(day[saturday])) / 3


def test_irregular_timestamps_and_nan_values():
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0, 3 * DAY, 3000))
    v = np.sin(2 * np.pi * t / DAY) + rng.normal(0, 0.05, t.size)
    v[::50] = np.nan
    z = SeasonalProfile().score_many(["a"] * t.size, t, v)
    assert np.isnan(z[::50]).all()
    assert 0.6 < np.nanstd(z[t > 2 * DAY]) < 1.5


def test_keys_are_bounded_lru():
    p = SeasonalProfile(max_keys=2)
    p.score_many(["a", "b", "a", "c"], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    assert len(p) == 2 and list(p.state_dict()["keys"]) == ["a", "c"]


@pytest.mark.parametrize("kw, match", [
    ({"periods": ()}, "at least one cycle"),
    ({"periods": (-1.0,)}, "positive numbers of seconds, got -1.0"),
    ({"bin_s": 1e6}, r"bin_s must be in \(0, shortest period 86400.0\], got 1000000.0"),
    ({"alpha": 0.0}, r"alpha must be in \(0, 1\], got 0.0"),
])
def test_bad_profile_arguments_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        SeasonalProfile(**kw)


def test_signals_round_trip_through_the_safe_state_format():
    store = WindowStore(window=4)
    keys, t, v = _daily(3, keys=2)
    xs = [store.push(k, ts, float(np.exp(x))) for k, ts, x in zip(keys, t, v, strict=True)]
    half = len(xs) // 2
    a, b = InputSignal("forecast"), InputSignal("forecast")
    a(xs[:half])
    b.load_state_dict(state.loads(state.dumps(a.state_dict())))
    np.testing.assert_array_equal(a(xs[half:]), b(xs[half:]))
    la, lb = LossSignal("forecast"), LossSignal("forecast")
    y = np.array([x.last for x in xs])
    la(xs[:half], y[:half], y[:half] * 1.1, t[:half])
    lb.load_state_dict(state.loads(state.dumps(la.state_dict())))
    np.testing.assert_array_equal(la(xs[half:], y[half:], y[half:] * 1.2, t[half:]),
                                  lb(xs[half:], y[half:], y[half:] * 1.2, t[half:]))
    with pytest.raises(ValueError, match="periods"):
        InputSignal("forecast", periods=(WEEK,)).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="unknown task 'vision'; valid choices: forecast, ctr"):
        LossSignal("vision")


def test_watcher_skips_non_finite_values():
    rng = np.random.default_rng(3)
    clean = np.r_[rng.normal(0, 1, 3000), rng.normal(1.5, 1, 1500)]
    holed = np.insert(clean, np.arange(0, clean.size, 7), np.nan)
    a, b = SignalWatcher("adwin", warmup=1000, seed=0), SignalWatcher("adwin", warmup=1000)
    hits_a = [j for j, _ in a.update_many(clean)]
    hits_b = [j for j, _ in b.update_many(holed)]
    assert a.normaliser == b.normaliser and len(hits_a) == len(hits_b) >= 1
    assert np.isfinite(holed[hits_b]).all()
    assert np.array_equal(holed[hits_b], clean[hits_a])


@pytest.mark.parametrize("name", list(DETECTORS))
@pytest.mark.parametrize("cut_at", [300, 800, 2100, 3030])
def test_a_restored_watcher_reports_what_an_uninterrupted_one_does(name, cut_at):
    rng = np.random.default_rng(7)
    vals = np.r_[rng.normal(0, 1, 2000), rng.normal(2.0, 1, 600), rng.normal(0, 1, 1400),
                 rng.normal(2.5, 1, 1000)]
    kw = dict(warmup=500, burn_in=100, n_replay=4000, refractory=300, seed=1)
    whole = SignalWatcher(name, **kw)
    hits = [j for i in range(0, vals.size, 64) for j, _ in
            [(i + j, s) for j, s in whole.update_many(vals[i:i + 64])]]
    first = SignalWatcher(name, **kw)
    before = [j for j, _ in first.update_many(vals[:cut_at])]
    blob = state.dumps(first.state_dict())
    second = SignalWatcher(name, **kw)
    second.load_state_dict(state.loads(blob))
    after = [cut_at + j for j, _ in second.update_many(vals[cut_at:])]
    assert before + after == hits, (name, before, after, hits)
    assert second.calibration == whole.calibration


def _linkload_run(monitor_kw, cut=None):
    from streamadapt.adapters.naive import LastValue
    from streamadapt.datasets import load_dataset
    from streamadapt.monitor import DriftMonitor
    from streamadapt.pipeline import Pipeline

    s = load_dataset("linkload", seed=0, n_steps=1000, failures=[{"step": 800}])
    events = list(s.events)
    mon = DriftMonitor(**monitor_kw)
    p = Pipeline("forecast", {"m": LastValue()}, monitor=mon)
    found = []
    for i in range(0, len(events), 200):
        if cut is not None and i == cut:
            restored = DriftMonitor(**monitor_kw)
            restored.load_signals_state(state.loads(state.dumps(mon.signals_state())))
            p.monitor = mon = restored
        n = len(mon.timeline)
        p.step(events[i:i + 200])
        found += [(e["signal"], e["timestamp"]) for e in mon.timeline[n:]
                  if e["type"] == "detection"]
    return found, s.drift_points[0]


def test_monitor_watches_seasonal_signals_and_restores_them():
    kw = dict(burn_in=200, n_replay=4000, refractory=0, on_loss=(), on_input=(),
              season_signals=("input", "loss"),
              record_metrics=False)
    whole, drift = _linkload_run(kw)
    after = [t for _, t in whole if t >= drift]
    assert after and after[0] - drift < 600 * 300.0 / 14  # within ~600 events
    assert _linkload_run(kw, cut=10_000) == (whole, drift)
    raw, _ = _linkload_run({**kw, "seasons": None})
    before = sum(t < drift for _, t in whole)
    assert sum(t < drift for _, t in raw) > before  # the daily cycle fires without seasons
