"""The lambda gate of ReLoop2: a misleading memory is switched off, a helpful one kept."""

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.adapters.base import Adapter
from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.adapters.registry import make_model
from streamadapt.adapters.reloop2 import ReLoop2
from streamadapt.datasets.clicks import click_stream
from streamadapt.features import ForecastInput
from streamadapt.memory import ErrorMemory, LambdaGate, LSHSketch
from streamadapt.report import logloss

#: How much worse than its base a gated model may end over a whole misleading stream.
CTR_TOLERANCE = 0.01  # log loss
FORECAST_TOLERANCE = 0.05  # relative mean absolute error


class Persistence(Adapter):
    """Persistence forecaster with a frozen random tanh layer as its hidden representation."""

    task = "forecast"
    has_hidden = True

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._w = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        return np.array([x.last for x in xs])

    def _hidden_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        w = torch.tensor([(x.loads[0],) * (4 - len(x.loads)) + x.loads[-4:] for x in xs])
        return torch.tanh((w - w.mean(1, keepdim=True)) @ self._w / 10.0).numpy()

    def _learn_many(self, xs, ys):
        return None

    def state_dict(self):
        return {"w": self._w}

    def load_state_dict(self, state):
        self._w = state["w"].clone()


class Misled(ReLoop2):
    """Writes mirrored labels: each stored error is the negative of the true one
    (``y -> 2 y_base - y`` for loads, ``y -> 1 - y`` for clicks)."""

    def _new_memory(self, dim: int) -> ErrorMemory:
        memory = super()._new_memory(dim)
        write, task = memory.write, self.task

        def mirrored(keys, ys, y_base):
            ys = np.asarray(ys, dtype=np.float64)
            return write(keys, 1.0 - ys if task == "ctr" else 2.0 * np.asarray(y_base) - ys,
                         y_base)

        memory.write = mirrored  # type: ignore[method-assign]
        return memory


def _trend(n: int) -> tuple[list[ForecastInput], np.ndarray]:
    """Two links whose load climbs 5 per step: persistence is always 5 short."""
    xs, ys = [], []
    for t in range(n // 2):
        for k in range(2):
            loads = tuple(10.0 * k + 5.0 * (t + j) for j in range(4))
            xs.append(ForecastInput(f"l{k}", 60.0 * t, loads, (60.0,) * 4))
            ys.append(loads[-1] + 5.0)
    return xs, np.asarray(ys)


def _prequential(model: ReLoop2, xs: list, ys: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    final, base = [], []
    for i in range(0, len(xs), batch):
        f, b = model.predict_with_base_many(xs[i:i + batch])
        final.append(f)
        base.append(b)
        model.learn_many(xs[i:i + batch], ys[i:i + batch])
    return np.concatenate(final), np.concatenate(base)


def _clicks(n: int) -> tuple[list, np.ndarray]:
    ev = list(click_stream(seed=3, n_events=n).events)
    return ev, np.array([e.label for e in ev], dtype=float)


def test_misleading_click_memory_is_gated_off():
    xs, ys = _clicks(6000)
    params = {"memory": "exact", "lam": 0.5, "n_neighbors": 16, "gate_window": 500,
              "gate_swing": 500}
    gated = Misled(CtrNet(seed=0), gate=True, **params)
    fixed = Misled(CtrNet(seed=0), gate=False, **params)
    g_final, g_base = _prequential(gated, xs, ys, 100)
    f_final, f_base = _prequential(fixed, xs, ys, 100)
    np.testing.assert_allclose(g_base, f_base)  # same base, learning the same stream
    assert logloss(ys, f_final) > logloss(ys, f_base) + 0.03  # the memory really misleads
    assert logloss(ys, g_final) <= logloss(ys, g_base) + CTR_TOLERANCE
    st = gated.stats()
    assert st["lam_eff"] < 0.02 * 0.5
    assert st["loss_corrected"] > st["loss_base"]
    assert fixed.stats()["lam_eff"] == 0.5  # ungated: tracked, never moved
    final, base = gated.predict_with_base_many(xs[:50])
    np.testing.assert_allclose(final, base, atol=0.02)


def test_misleading_forecast_memory_is_gated_off_and_a_helpful_one_kept():
    xs, ys = _trend(4000)
    params = {"memory": "exact", "lam": 1.0, "gamma": 0.0, "n_neighbors": 8,
              "gate_window": 200, "gate_swing": 200}
    bad = Misled(Persistence(), gate=True, **params)
    good = ReLoop2(Persistence(), gate=True, **params)
    b_final, base = _prequential(bad, xs, ys, 20)
    g_final, _ = _prequential(good, xs, ys, 20)
    mae_base = np.abs(ys - base).mean()
    assert mae_base == pytest.approx(5.0)
    assert np.abs(ys - b_final).mean() <= mae_base * (1 + FORECAST_TOLERANCE)
    assert bad.stats()["lam_eff"] == 0.0
    assert good.stats()["lam_eff"] == 1.0
    assert np.abs(ys - g_final)[200:].mean() < 0.01
    assert good.stats()["loss_corrected"] < 0.01 < 4.9 < good.stats()["loss_base"]


def test_helpful_click_memory_keeps_lambda_high():
    # a frozen, untrained base (about 0.5 everywhere): the memory's neighbours know better
    xs, ys = _clicks(4000)
    model = ReLoop2(CtrNet(seed=0), memory="exact", lam=0.5, n_neighbors=16, learn_base=False,
                    gate=True, gate_window=500, gate_swing=500)
    final, base = _prequential(model, xs, ys, 100)
    assert logloss(ys, final) < logloss(ys, base) - 0.01
    assert model.stats()["lam_eff"] > 0.8 * 0.5


def test_the_gate_scores_the_memory_before_the_batch_is_written():
    xs, ys = _clicks(300)
    model = make_model("ctr-net+reloop2-gated", seed=0, n_tables=8, n_bits=4)
    assert math.isnan(model.stats()["loss_base"])
    model.learn_many(xs[:100], ys[:100])  # the memory was empty: no correction to score
    st = model.stats()
    assert st["loss_corrected"] == st["loss_base"] and st["lam_eff"] == 0.5
    model.learn_many(xs[100:200], ys[100:200])
    assert model.stats()["loss_corrected"] != model.stats()["loss_base"]


def test_gate_state_round_trips():
    xs, ys = _trend(400)
    a = Misled(Persistence(), memory="sketch", lam=1.0, gamma=0.0, n_tables=8, n_bits=4,
               gate=True, gate_window=100, gate_swing=1000)
    _prequential(a, xs[:300], ys[:300], 20)
    assert 0.0 < a.stats()["lam_eff"] < 1.0
    b = Misled(Persistence(seed=1), memory="sketch", lam=1.0, gamma=0.0, n_tables=8, n_bits=4,
               gate=True, gate_window=100, gate_swing=1000, seed=1)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    keys = ("lam_eff", "loss_base", "loss_corrected")
    assert {k: b.stats()[k] for k in keys} == {k: a.stats()[k] for k in keys}
    np.testing.assert_allclose(a.predict_many(xs[300:]), b.predict_many(xs[300:]))
    a.learn_many(xs[300:], ys[300:])
    b.learn_many(xs[300:], ys[300:])
    assert b.stats()["lam_eff"] == a.stats()["lam_eff"]

    old = a.state_dict()
    del old["gate"]  # a checkpoint written before the gate existed
    b.load_state_dict(old)
    assert b.stats()["lam_eff"] == 1.0 and math.isnan(b.stats()["loss_base"])


def test_restored_gate_lambda_is_checked():
    state = LambdaGate(0.5).state_dict()
    state["lam"] = 0.9
    with pytest.raises(ValueError, match=r"gate lambda 0.9 outside \[0, 0.5\]"):
        LambdaGate(0.5).load_state_dict(state)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lam": -0.1}, "lam must be a finite number >= 0, got -0.1"),
    ({"gate_window": 0}, "gate_window must be an integer >= 1, got 0"),
    ({"gate_swing": 2.5}, "gate_swing must be an integer >= 1, got 2.5"),
    ({"gate_margin": 1.0}, r"gate_margin must be in \[0, 1\), got 1.0"),
])
def test_bad_gate_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReLoop2(CtrNet(), gate=True, **kwargs)


def test_gated_names_and_memory_bytes_unchanged():
    m = make_model("liquid+reloop2-gated", seed=0)
    assert (m.gate, m.gamma, m.task) == (True, 0.0, "forecast")
    assert repr(m.clone()) == repr(m)
    s = make_model("ctr-net+reloop2-gated", n_tables=4, n_bits=3, emb_dim=4)
    xs, ys = _clicks(100)
    s.learn_many(xs, ys)
    assert s.stats()["bytes"] == LSHSketch.footprint(s._memory.dim, 4, 3)
