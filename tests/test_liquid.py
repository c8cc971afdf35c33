"""The liquid forecaster: cells against ncps, per-link state, online adaptation, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ncps.torch import CfCCell as NcpsCfC

from streamadapt import state as state_io
from streamadapt.adapters.cells import CfCCell, LTCCell, make_cell
from streamadapt.adapters.liquid import LiquidForecaster
from streamadapt.adapters.registry import make_model
from streamadapt.datasets.linkload import linkload_stream
from streamadapt.features import ForecastInput, WindowStore
from streamadapt.pipeline import Pipeline


@pytest.mark.parametrize("mode", ["default", "no_gate"])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("activation", ["lecun_tanh", "silu"])
def test_fused_cfc_matches_ncps(mode, layers, activation):
    torch.manual_seed(layers)
    ref = NcpsCfC(5, 7, mode=mode, backbone_units=16, backbone_layers=layers,
                  backbone_activation=activation)
    mine = CfCCell.from_ncps(ref)
    x, h, ts = torch.randn(9, 5), torch.randn(9, 7), torch.rand(9, 1) * 4
    for _ in range(3):  # a few steps, feeding the state back
        want, _ = ref(x, h, ts)
        got = mine(x, h, ts)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        h = want


def test_ltc_matches_ncps_and_survives_zero_gap():
    from ncps.torch import LTCCell as NcpsLTC
    from ncps.wirings import FullyConnected

    torch.manual_seed(0)
    cell = LTCCell(4, 6, seed=3)
    ref = NcpsLTC(FullyConnected(6, erev_init_seed=3), in_features=4)
    ref.load_state_dict(cell.cell.state_dict())
    x, h, ts = torch.randn(5, 4), torch.randn(5, 6), torch.rand(5, 1) + 0.5
    torch.testing.assert_close(cell(x, h, ts), ref(x, h, ts)[1])
    assert torch.isfinite(cell(x, h, torch.zeros(5, 1))).all()


def test_bad_cell_names_list_the_choices():
    with pytest.raises(ValueError, match="valid choices: cfc, ltc"):
        make_cell("gru", 3, 4)
    with pytest.raises(ValueError, match="valid choices: cfc, ltc"):
        LiquidForecaster(cell="gru")
    with pytest.raises(ValueError, match="valid choices: lecun_tanh"):
        CfCCell(3, 4, activation="swish")


def _series(store, t, loads):
    return [store.push(k, 300.0 * t, v) for k, v in loads.items()]


def test_state_advances_once_per_sample_and_links_are_independent():
    store, model = WindowStore(window=12), LiquidForecaster(seed=0)
    for t in range(5):
        xs = _series(store, t, {"a": 10.0 + t, "b": 50.0})
        model.predict_many(xs)
    h1 = model.hidden_many(xs)
    h2 = model.hidden_many(xs)  # same samples again: same state, no second step
    np.testing.assert_array_equal(h1, h2)
    # stepping link b alone leaves link a's state alone
    xb = store.push("b", 300.0 * 5, 51.0)
    model.predict_many([xb])
    np.testing.assert_allclose(model.hidden_many([xs[0]]), h1[:1], rtol=1e-5, atol=1e-6)
    # a new sample of a advances its state
    xa = store.push("a", 300.0 * 5, 15.0)
    assert not np.allclose(model.hidden_many([xa]), h1[:1], rtol=1e-3, atol=1e-4)


def test_elapsed_time_enters_the_state():
    model = LiquidForecaster(seed=0)
    base = dict(key="a", timestamp=600.0, loads=(1.0, 2.0, 3.0))
    short = ForecastInput(dts=(0.0, 300.0, 300.0), **base)
    model.predict_many([ForecastInput("a", 300.0, (1.0, 2.0), (0.0, 300.0))])
    blob = state_io.dumps(model.state_dict())
    h_short = model.hidden_many([short])
    model.load_state_dict(state_io.loads(blob))
    h_long = model.hidden_many([ForecastInput(dts=(0.0, 300.0, 3000.0), **base)])
    assert not np.allclose(h_short, h_long)


def test_repeated_key_in_one_batch_equals_sequential_calls():
    store = WindowStore(window=12)
    xs = [store.push(k, 300.0 * t, 20.0 + t + i) for t in range(6) for i, k in
          enumerate("ab")]
    a, b = LiquidForecaster(seed=1), LiquidForecaster(seed=1)
    many = a.predict_many(xs)
    one = np.array([b.predict_one(x) for x in xs])
    np.testing.assert_allclose(many, one, rtol=1e-5)
    np.testing.assert_allclose(a.hidden_many(xs[-2:]), b.hidden_many(xs[-2:]), rtol=1e-5,
                               atol=1e-6)


def test_lru_bounds_links_and_evicts_the_oldest():
    model = LiquidForecaster(max_links=2, seed=0)
    for k in "abc":
        model.predict_one(ForecastInput(k, 0.0, (5.0,), (0.0,)))
    assert list(model._links.slot_of) == ["b", "c"]
    assert model.state_dict()["links"]["keys"] == ["b", "c"]


def test_learns_a_pattern_persistence_cannot():
    store, model = WindowStore(window=12), LiquidForecaster(seed=0, lr=3e-3)
    errs, naive = [], []
    prev = None
    for t in range(400):
        xs = [store.push(k, 300.0 * t, 50.0 + 10 * i + 4 * (t % 2)) for i, k in enumerate("ab")]
        if prev is not None:
            ys = np.array([x.last for x in xs])
            if t > 300:
                errs.append(np.abs(model.predict_many(prev) - ys).mean())
                naive.append(np.abs(np.array([x.last for x in prev]) - ys).mean())
            model.learn_many(prev, ys)
        model.predict_many(xs)
        prev = xs
    assert np.mean(errs) < 0.25 * np.mean(naive)


def test_constant_and_zero_links_stay_finite():
    model = LiquidForecaster(seed=0)
    store = WindowStore(window=12)
    prev = None
    for t in range(50):
        xs = _series(store, t, {"flat": 7.0, "idle": 0.0})
        if prev is not None:
            model.learn_many(prev, [7.0, 0.0])
        p = model.predict_many(xs)
        prev = xs
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [7.0, 0.0], atol=0.05)
    for name, param in model._net.named_parameters():
        assert torch.isfinite(param).all(), name


def test_big_batch_is_bounded_and_replay_stays_within_size():
    model = LiquidForecaster(seed=0, replay_size=64, max_fresh=32)
    xs = [ForecastInput(f"l{i}", 300.0, (1.0 + i % 5, 2.0), (0.0, 300.0)) for i in range(500)]
    model.predict_many(xs)
    model.learn_many(xs, np.full(500, 2.5))
    assert model._rsize == 64
    state = state_io.loads(state_io.dumps(model.state_dict()))
    assert state["replay"]["x"].shape[0] == 64


def test_state_round_trip_keeps_per_link_state_and_training():
    store = WindowStore(window=12)
    a = LiquidForecaster(seed=0)
    stream = [_series(store, t, {"a": 30 + 5 * np.sin(t / 5), "b": 80 + (t % 3)})
              for t in range(60)]
    for prev, cur in zip(stream[:30], stream[1:31], strict=True):
        a.predict_many(prev)
        a.learn_many(prev, [x.last for x in cur])
    b = LiquidForecaster(seed=9)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    np.testing.assert_array_equal(a.hidden_many(stream[30]), b.hidden_many(stream[30]))
    for prev, cur in zip(stream[30:59], stream[31:60], strict=True):
        np.testing.assert_allclose(a.predict_many(prev), b.predict_many(prev), rtol=1e-6)
        a.learn_many(prev, [x.last for x in cur])
        b.learn_many(prev, [x.last for x in cur])
    with pytest.raises(ValueError, match="does not fit"):
        LiquidForecaster(hidden=8).load_state_dict(a.state_dict())


def test_runs_in_the_pipeline_on_the_scenario_and_beats_persistence_late():
    stream = linkload_stream(seed=0, n_steps=300, severity="drastic")
    pipe = Pipeline("forecast", {"liquid": make_model("liquid", seed=0),
                                 "naive": make_model("last-value")})
    events = list(stream.events)
    err: dict[str, list[float]] = {"liquid": [], "naive": []}
    for i in range(0, len(events), 256):
        out = pipe.step(events[i : i + 256])
        for name, s in out.scores.items():
            if i >= len(events) // 2:
                err[name].extend(np.abs(s.y_pred - s.y_true))
    assert np.mean(err["liquid"]) < np.mean(err["naive"])


def test_ltc_variant_runs_in_the_pipeline():
    events = list(linkload_stream(seed=0, n_steps=40).events)
    pipe = Pipeline("forecast", {"ltc": make_model("liquid-ltc", seed=0)})
    preds = [r.prediction for i in range(0, len(events), 256)
             for r in pipe.step(events[i : i + 256]).predictions]
    assert len(preds) == len(events) and np.isfinite(preds).all()


# -- the closed-form step, the sequences and the flat optimiser ---------------------------------
@pytest.mark.parametrize("mode", ["default", "no_gate"])
def test_closed_form_cell_gradient_matches_autograd(mode):
    torch.manual_seed(0)
    cell = CfCCell(5, 7, backbone_units=16, mode=mode)
    x = torch.randn(9, 5, requires_grad=True)
    h, ts, w = torch.randn(9, 7), torch.rand(9, 1) * 3, torch.randn(9, 7)
    want = torch.autograd.grad((cell(x, h, ts) * w).sum(), [*cell.parameters(), x])
    got = [torch.empty_like(p) for p in cell.parameters()]
    with torch.no_grad():
        gx = cell.grads(x.detach(), h, ts, lambda h_new: w, got)
    for a, b in zip([*got, gx], want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_closed_form_network_gradient_matches_autograd():
    torch.manual_seed(1)
    model = LiquidForecaster(seed=3)
    net = model._net
    with torch.no_grad():  # away from the identity/zero initialisation
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, h, ts = torch.randn(50, 16), torch.randn(50, 32), torch.rand(50, 1)
    y = 2.0 * torch.randn(50)  # some errors beyond the Huber threshold
    loss = torch.nn.functional.huber_loss(net.head(net.step(x, h, ts))[:, 0], y)
    want = torch.autograd.grad(loss, list(net.parameters()))
    with torch.no_grad():
        net.grads(x, h, ts, y, model._grads)
    for (name, _), b in zip(net.named_parameters(), want, strict=True):
        torch.testing.assert_close(model._grads[name], b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("mode", ["default", "no_gate"])
def test_scan_equals_stepping_the_cell(layers, mode):
    torch.manual_seed(layers)
    cell = CfCCell(5, 7, backbone_units=16, backbone_layers=layers, mode=mode)
    xs, ts, h = torch.randn(4, 3, 5), torch.rand(4, 3, 1), torch.randn(3, 7)
    with torch.no_grad():
        states = cell.scan(cell.input_part(xs.view(-1, 5)).view(4, 3, -1), h, ts)
        for i in range(4):
            h = cell(xs[i], h, ts[i])
            torch.testing.assert_close(states[i], h, rtol=1e-5, atol=1e-6)


def test_flat_adam_is_torch_adam():
    a = LiquidForecaster(seed=0)
    ref = LiquidForecaster(seed=0)
    opt = torch.optim.Adam(ref._net.parameters(), lr=0.01)
    a.set_lr_scale(10.0)
    torch.manual_seed(0)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ref._net.parameters()]
        for p, g in zip(ref._net.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
        with torch.no_grad():
            a._grad.copy_(torch.cat([g.reshape(-1) for g in grads]))
            a._adam(a._grad)
    for p, q in zip(a._net.parameters(), ref._net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    # the checkpoint keeps torch's format: a torch optimiser's state loads into the model
    a._opt_to_torch()
    assert set(a._opt.state_dict()["state"][0]) == set(opt.state_dict()["state"][0])
    a._opt.state.clear()
    b = LiquidForecaster(seed=0)
    state = ref.state_dict()
    state["opt"] = state_io.optimizer_state(opt)
    state["net"] = dict(ref._net.state_dict())
    b.load_state_dict(state)
    torch.testing.assert_close(b._m, a._m, rtol=1e-5, atol=1e-8)
    assert b._adam_t == a._adam_t == 5


def test_one_update_per_update_every_fresh_labels():
    model = LiquidForecaster(seed=0, update_every=8, max_fresh=64)
    xs = [ForecastInput(f"l{i}", 300.0, (1.0 + i % 5, 2.0), (0.0, 300.0)) for i in range(40)]
    model.predict_many(xs)
    model.learn_many(xs[:20], np.full(20, 2.5))  # 20 fresh: 2 updates of 10
    assert model._adam_t == 2
    model.learn_many(xs[20:25], np.full(5, 2.5))  # 5 fresh wait
    assert model._adam_t == 2
    model.learn_many(xs[25:30], np.full(5, 2.5))  # 10 fresh: 1 update
    assert model._adam_t == 3
    big = [ForecastInput(f"m{i}", 300.0, (1.0, 2.0), (0.0, 300.0)) for i in range(500)]
    model.predict_many(big)
    model.learn_many(big, np.full(500, 2.0))  # at most max_fresh: bounded cost
    assert model._adam_t == 3 + 64 // 8


def test_ltc_weights_stay_in_the_flat_vector_after_its_constraints():
    model = make_model("liquid-ltc", seed=0)
    store = WindowStore(window=12)
    for t in range(40):
        xs = _series(store, t, {"a": 10.0 + t % 4, "b": 30.0})
        model.predict_many(xs)
        model.learn_many(xs, [x.last + 1.0 for x in xs])
    assert model._adam_t > 0
    for p, view in zip(model._net.parameters(), model._views, strict=True):
        assert p.data_ptr() == view.data_ptr()
