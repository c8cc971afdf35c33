"""The paper's baselines (incremental and static MLP) and river's per-link forecasters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.adapters.mlp import IncrementalMLP
from streamadapt.adapters.registry import make_model, model_names
from streamadapt.adapters.river_forecasters import RiverHoltWinters, RiverSNARIMAX
from streamadapt.features import ForecastInput, WindowStore


def _stream(n_steps: int, links: str = "ab", seed: int = 0) -> list[list[ForecastInput]]:
    rng = np.random.default_rng(seed)
    store = WindowStore(window=12)
    return [[store.push(k, 300.0 * t, 40.0 + 10 * i + 5 * np.sin(t / 6) + rng.normal(0, 0.3))
             for i, k in enumerate(links)] for t in range(n_steps)]


def _weights(model: IncrementalMLP) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model._net.parameters()]


def test_registered_names():
    names = model_names("forecast")
    for n in ("liquid", "liquid-ltc", "mlp-incremental-b256", "mlp-incremental-b1024",
              "mlp-incremental-b4096", "mlp-static", "river-snarimax", "river-holtwinters"):
        assert n in names
    assert make_model("mlp-incremental-b1024").retrain_every == 1024
    assert make_model("mlp-static").static


def test_incremental_refits_every_b_samples_and_is_frozen_between():
    steps = _stream(80)
    model = IncrementalMLP(retrain_every=20, epochs=2, seed=0)
    fits = []
    for prev, cur in zip(steps[:-1], steps[1:], strict=True):
        model.predict_many(prev)
        before = _weights(model)
        model.learn_many(prev, [x.last for x in cur])
        changed = any(not torch.equal(a, b) for a, b in zip(before, _weights(model),
                                                             strict=True))
        fits.append(changed)
    # 2 samples per step, B = 20: a re-fit on every 10th step, and only then
    assert model.n_fits == 79 * 2 // 20
    assert [i for i, f in enumerate(fits) if f] == [9, 19, 29, 39, 49, 59, 69]


def test_static_fits_once_and_never_again():
    steps = _stream(60)
    model = IncrementalMLP(retrain_every=30, static=True, seed=0)
    for prev, cur in zip(steps[:20], steps[1:21], strict=True):
        model.learn_many(prev, [x.last for x in cur])
    assert model.n_fits == 1
    frozen = _weights(model)
    for prev, cur in zip(steps[20:-1], steps[21:], strict=True):
        model.predict_many(prev)
        model.learn_many(prev, [x.last for x in cur])
    assert model.n_fits == 1
    assert all(torch.equal(a, b) for a, b in zip(frozen, _weights(model), strict=True))


def test_untrained_mlp_is_persistence_and_training_beats_it():
    steps = _stream(300)
    model = IncrementalMLP(retrain_every=64, seed=0)
    assert np.allclose(model.predict_many(steps[0]), [x.last for x in steps[0]])
    errs, naive = [], []
    for t, (prev, cur) in enumerate(zip(steps[:-1], steps[1:], strict=True)):
        y = np.array([x.last for x in cur])
        if t > 200:
            errs.append(np.abs(model.predict_many(prev) - y).mean())
            naive.append(np.abs(np.array([x.last for x in prev]) - y).mean())
        else:
            model.predict_many(prev)
        model.learn_many(prev, y)
    assert np.mean(errs) < np.mean(naive)


def test_mlp_state_round_trip_after_fits():
    steps = _stream(100)
    a = IncrementalMLP(retrain_every=30, epochs=2, seed=0)
    for prev, cur in zip(steps[:50], steps[1:51], strict=True):
        a.predict_many(prev)
        a.learn_many(prev, [x.last for x in cur])
    assert a.n_fits == 3
    b = IncrementalMLP(retrain_every=30, epochs=2, seed=5)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    for prev, cur in zip(steps[50:-1], steps[51:], strict=True):
        np.testing.assert_allclose(a.predict_many(prev), b.predict_many(prev), rtol=1e-6)
        a.learn_many(prev, [x.last for x in cur])
        b.learn_many(prev, [x.last for x in cur])
    assert a.n_fits == b.n_fits == 6
    with pytest.raises(ValueError, match="retrain_every is 8"):
        IncrementalMLP(retrain_every=8).load_state_dict(a.state_dict())


def test_snarimax_takes_each_sample_in_once_and_tracks_a_trend():
    store, model = WindowStore(window=4), RiverSNARIMAX(p=2, d=1, q=0)
    for t in range(300):
        x = store.push("a", 300.0 * t, 5.0 + 0.5 * t)
        p1 = model.predict_one(x)
        p2 = model.predict_one(x)  # the same sample again: not taken in twice
        assert p1 == p2
    assert p1 == pytest.approx(5.0 + 0.5 * 300, abs=0.5)


def test_holtwinters_is_persistence_until_a_season_then_learns_it():
    store, model = WindowStore(window=4), RiverHoltWinters(0.3, 0.05, 0.3, seasonality=8)
    pattern = [10.0, 12.0, 15.0, 11.0, 9.0, 8.0, 13.0, 16.0]
    first = model.predict_one(store.push("a", 0.0, pattern[0]))
    assert first == pattern[0]
    errs = []
    for t in range(1, 400):
        x = store.push("a", 300.0 * t, pattern[t % 8])
        p = model.predict_one(x)
        if t > 300:
            errs.append(abs(p - pattern[(t + 1) % 8]))
    assert np.mean(errs) < 0.5


def test_river_forecasters_bound_links_and_round_trip():
    model = RiverHoltWinters(seasonality=4, max_links=2)
    for t in range(20):
        for k in "abc":
            model.predict_one(ForecastInput(k, 300.0 * t, (float(t % 4 + 1),), (300.0,)))
    assert list(model._models) == ["b", "c"]
    other = RiverHoltWinters(seasonality=4, max_links=2)
    other.load_state_dict(state_io.loads(state_io.dumps(model.state_dict())))
    x = ForecastInput("c", 300.0 * 20, (1.0,), (300.0,))
    assert other.predict_one(x) == model.predict_one(x)
    with pytest.raises(ValueError, match="river-series-v1"):
        other.load_state_dict({"format": "river-pickle"})
