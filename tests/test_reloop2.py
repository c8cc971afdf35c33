"""The ReLoop2 wrapper: delayed writes, base vs corrected records, refresh, regression."""

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.adapters.naive import ClickRate
from streamadapt.adapters.registry import make_model
from streamadapt.adapters.reloop2 import ReLoop2, with_memory
from streamadapt.datasets.clicks import click_stream
from streamadapt.events import Impression, Label, LinkLoadSample
from streamadapt.features import ForecastInput
from streamadapt.memory import LSHSketch
from streamadapt.pipeline import Pipeline
from streamadapt.report import auc, logloss


class TinyForecaster(Adapter):
    """Persistence forecaster with a frozen random tanh layer as its hidden representation."""

    task = "forecast"
    has_hidden = True

    def __init__(self, window: int = 4, seed: int = 0):
        self.window = window
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self._w = torch.randn(window, 8, generator=g)

    def _padded(self, xs: Sequence[ForecastInput]) -> torch.Tensor:
        rows = [(x.loads[0],) * (self.window - len(x.loads)) + x.loads[-self.window:]
                for x in xs]
        return torch.tensor(rows, dtype=torch.float32)

    def _predict_many(self, xs):
        return np.array([x.last for x in xs])

    def _hidden_many(self, xs):
        w = self._padded(xs)
        return torch.tanh((w - w.mean(1, keepdim=True)) @ self._w / 10.0).numpy()

    def _learn_many(self, xs, ys):
        return None

    def state_dict(self):
        return {"w": self._w}

    def load_state_dict(self, state):
        self._w = state["w"].clone()


def test_regression_corrects_residuals_without_clamp():
    # a steady upward trend: persistence is always 5 short; the memory learns the residual
    events = [LinkLoadSample(event_id=str(i), link_id=f"l{i % 2}", timestamp=60.0 * i,
                             load=10.0 + 2.5 * i) for i in range(400)]
    wrapped = ReLoop2(TinyForecaster(), memory="exact", lam=1.0, gamma=0.0, n_neighbors=8)
    pipe = Pipeline("forecast", {"mem": wrapped, "base": TinyForecaster()})
    errors = {"mem": [], "base": []}
    records = []
    for i in range(0, 400, 20):
        out = pipe.step(events[i:i + 20])
        records += out.predictions
        for name, s in out.scores.items():
            errors[name] += list(np.abs(s.y_true - s.y_pred))
    late = slice(100, None)
    assert np.mean(errors["base"][late]) == pytest.approx(5.0)
    assert np.mean(errors["mem"][late]) < 0.01
    assert max(r.prediction for r in records) > 1.0  # no [0, 1] clamp for loads
    assert records[-1].prediction == pytest.approx(records[-1].base_prediction + 5.0)


def test_memory_is_written_only_when_the_label_arrives():
    s = click_stream(seed=0, n_events=600, delay_s=120.0, emit_negatives=True)
    ev = list(s.events)
    model = make_model("ctr-net+reloop2", seed=0, n_tables=8, n_bits=4)
    pipe = Pipeline("ctr", {"m": model}, attribution_window_s=600.0)
    impressions = [e for e in ev if isinstance(e, Impression)]
    labels = {e.event_id: e for e in ev if isinstance(e, Label)}
    first = impressions[:200]
    out = pipe.step(first)
    assert model.stats()["written"] == 0 and not out.scores
    assert all(r.prediction == r.base_prediction for r in out.predictions)
    out = pipe.step([labels[e.event_id] for e in first[:150]])  # labels, no impressions
    assert len(out.scores["m"]) == 150 and model.stats()["written"] == 150
    out = pipe.step(impressions[200:300])
    corrected = [r for r in out.predictions if r.prediction != r.base_prediction]
    assert len(corrected) > 50
    assert model.stats()["written"] == 150 and model.stats()["hit"] >= len(corrected)


def test_lambda_zero_is_the_base_model():
    s = click_stream(seed=1, n_events=1200)
    ev = list(s.events)
    ys = np.array([e.label for e in ev], dtype=float)
    m = ReLoop2(CtrNet(seed=0), lam=0.0, n_tables=8, n_bits=4)
    for i in range(0, 1000, 100):
        m.learn_many(ev[i:i + 100], ys[i:i + 100])
    final, base = m.predict_with_base_many(ev[1000:])
    np.testing.assert_array_equal(final, base)
    assert m.stats()["hit"] == 200


def test_memory_corrects_a_frozen_base_after_drift():
    s = click_stream(seed=0, n_events=16_000, drift_at=8000, n_users=40, n_topics=4)
    ev = list(s.events)
    ys = np.array([e.label for e in ev], dtype=float)
    model = ReLoop2(CtrNet(seed=0, key="input"), memory="exact", lam=0.8, n_neighbors=16)
    for i in range(0, 8000, 256):
        model.learn_many(ev[i:min(i + 256, 8000)], ys[i:min(i + 256, 8000)])
    model.learn_base = False  # freeze the slow learner at the drift
    final, base = [], []
    for i in range(8000, 16_000, 256):
        f, b = model.predict_with_base_many(ev[i:i + 256])
        final.append(f)
        base.append(b)
        model.learn_many(ev[i:i + 256], ys[i:i + 256])
    final, base = np.concatenate(final), np.concatenate(base)
    late, y = slice(4000, None), ys[8000:]
    assert logloss(y[late], final[late]) < logloss(y[late], base[late]) - 0.02
    assert auc(y[late], final[late]) > auc(y[late], base[late]) + 0.02


def test_refresh_policies():
    s = click_stream(seed=2, n_events=500)
    ev = list(s.events)
    ys = np.array([e.label for e in ev], dtype=float)
    m = ReLoop2(CtrNet(seed=0), n_tables=4, n_bits=3, reset_every=300)
    m.learn_many(ev[:250], ys[:250])
    assert m.stats()["entries"] > 0 and m.stats()["resets"] == 0
    m.learn_many(ev[250:300], ys[250:300])  # 300 labelled samples: reset
    assert m.stats()["entries"] == 0 and m.stats()["resets"] == 1
    m.learn_many(ev[300:400], ys[300:400])
    m.replace_base(CtrNet(seed=1, key="last", hidden_dim=16))
    assert m.stats()["entries"] == 0
    final, base = m.predict_with_base_many(ev[400:])
    np.testing.assert_array_equal(final, base)  # nothing remembered for the new base
    m.learn_many(ev[400:], ys[400:])
    assert m.stats()["bytes"] == LSHSketch.footprint(16, 4, 3)


def test_registered_combinations_take_both_kinds_of_parameters():
    m = make_model("ctr-net+reloop2-exact", lam=0.2, capacity=128, emb_dim=4, seed=3)
    assert (m.memory, m.lam, m.capacity, m.base.emb_dim, m.base.seed) == ("exact", 0.2, 128,
                                                                          4, 3)
    assert repr(m.clone()) == repr(m) and m.clone().base is not m.base
    with pytest.raises(ValueError, match=r"unknown parameters \['alpha'\]; valid choices: lam"):
        make_model("ctr-net+reloop2", alpha=1.0)
    assert with_memory(CtrNet(), lam=0.1).lam == 0.1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"base": ClickRate()}, "base ClickRate exposes no hidden representation"),
    ({"memory": "ring"}, "unknown memory 'ring'; valid choices: sketch, exact"),
    ({"tau": 0.0}, "tau must be > 0, got 0.0"),
    ({"gamma": 2.0}, r"gamma must be in \[0, 1\], got 2.0"),
    ({"n_bits": 40}, "n_bits must be in 1..24, got 40"),
])
def test_bad_parameters_are_named(kwargs, message):
    params = {"base": CtrNet(), **kwargs}
    with pytest.raises(ValueError, match=message):
        ReLoop2(**params)


def test_non_finite_hidden_never_reaches_the_memory():
    class Broken(TinyForecaster):
        def _hidden_many(self, xs):
            h = super()._hidden_many(xs)
            h[0] = np.nan
            return h

    m = ReLoop2(Broken(), memory="sketch", n_tables=2, n_bits=2)
    xs = [ForecastInput("a", float(i), (1.0, 2.0), (0.0, 1.0)) for i in range(4)]
    m.learn_many(xs, [1.0, 2.0, 3.0, 4.0])
    assert m.stats()["written"] == 3
    assert np.isfinite(m.predict_many(xs)).all()


def test_configuration_is_checked_without_allocating():
    m = ReLoop2(CtrNet(), n_tables=256, n_bits=24)  # gigabytes once built: not yet
    st = m.stats()
    assert {k: st[k] for k in ("entries", "bytes", "hit", "miss", "written", "resets")} == {
        "entries": 0, "bytes": 0, "hit": 0, "miss": 0, "written": 0, "resets": 0}
    assert st["lam_eff"] == m.lam and np.isnan([st["loss_base"], st["loss_corrected"]]).all()
