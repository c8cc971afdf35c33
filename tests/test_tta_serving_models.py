"""Drift-adaptation hooks of the serving models: liquid, ctr-net and their ReLoop2 wrappers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.adapters.base import Adapter
from streamadapt.adapters.liquid import LiquidForecaster
from streamadapt.adapters.registry import make_model, model_names
from streamadapt.adapters.reloop2 import ReLoop2
from streamadapt.checks import sample_data
from streamadapt.drift.policy import DEFAULT_ACTIONS
from streamadapt.settings import DEFAULT_MODEL
from streamadapt.tta import NHL, HebbianHooks, SupportsLRScale, supported_actions, supports
from streamadapt.tta.hooks import refresh_memory

SERVING = ["liquid", "liquid-ltc", "ctr-net", "ctr-net+reloop2", "liquid+reloop2"]
_PROTOCOLS = {"tta": HebbianHooks, "lr_boost": SupportsLRScale}


def _base(model):
    return model.base if isinstance(model, ReLoop2) else model


def _links(model):
    links = getattr(_base(model), "_links", None)
    return None if links is None else state_io.dumps(links.state_dict()) + bytes(
        str(list(links.slot_of)), "utf8")


def _trained(name, n=160, seed=0):
    """A model fed prequentially (predict, then learn) on the first ``n`` samples."""
    model = make_model(name, seed=seed)
    task = model.task
    xs, ys = sample_data(task, n=240)
    for i in range(0, n, 16):
        model.predict_many(xs[i:i + 16])
        model.learn_many(xs[i:i + 16], ys[i:i + 16])
    return model, xs, ys


@pytest.mark.parametrize("name", SERVING)
def test_serving_models_have_every_hook(name):
    model = make_model(name, seed=0)
    assert isinstance(model, HebbianHooks) and isinstance(model, SupportsLRScale)
    assert supports(model, "tta") and supports(model, "lr_boost")
    # an error memory (ReLoop2) or liquid's replay ring; ctr-net alone has neither
    assert supports(model, "memory_refresh") == (name != "ctr-net")


@pytest.mark.parametrize("name", SERVING)
def test_nhl_moves_only_the_input_layer_and_modulator_and_never_link_states(name):
    model, xs, _ = _trained(name)
    net = _base(model)._net
    layer, mod = model.tta_input_layer(), model.tta_modulator()
    params = dict(net.named_parameters())
    weight = next(k for k, p in params.items() if p is layer.weight)
    modulator = {k for k, p in params.items() if any(p is q for q in mod.parameters())}
    assert modulator
    before = {k: p.detach().clone() for k, p in params.items()}
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    nhl = NHL(eta=0.5, lr=1.0, max_step=0.02, max_drift=0.05)
    nhl.begin(model)
    drifts = []
    for i in range(160, 240, 16):  # as the monitor does: adapt a batch, then predict it
        links = _links(model)
        drifts.append(nhl.adapt(model, xs[i:i + 16])["drift"])
        assert _links(model) == links, "test-time adaptation wrote a link's state"
        model.predict_many(xs[i:i + 16])
    for k, p in params.items():
        if k != weight and k not in modulator:
            assert torch.equal(p, before[k]), f"{k} moved"
    for k, b in net.named_buffers():
        assert torch.equal(b, buffers[k]), f"buffer {k} moved"
    assert not torch.equal(params[weight], before[weight]), "the input layer did not move"
    assert any(not torch.equal(params[k], before[k]) for k in modulator), "modulator still"
    assert 0 < max(drifts) <= 0.05 + 1e-6
    ref = max(float(before[weight].norm()), 1.0)
    assert float((params[weight].detach() - before[weight]).norm()) <= 0.05 * ref + 1e-5


@pytest.mark.parametrize("name", SERVING)
def test_tta_loss_is_finite_with_a_gradient_to_the_modulator(name):
    model, xs, _ = _trained(name)
    batch = xs[160:176]
    loss = model.tta_loss(batch, model.tta_encode(batch))
    assert loss.dim() == 0 and torch.isfinite(loss)
    params = list(model.tta_modulator().parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_liquid_tta_pairs_the_previous_window_with_the_state_before_it():
    # one input per link and per batch, adapted before it is predicted (the monitor's order):
    # the tta row of x_t is the training row of x_{t-1}: same window (the store keeps 8 loads,
    # the model reads 4), state before it, elapsed time and target
    xs, ys = sample_data("forecast", n=240)
    model = LiquidForecaster(window=4, seed=0)
    for i in range(0, 200, 4):
        model.predict_many(xs[i:i + 4])
        model.learn_many(xs[i:i + 4], ys[i:i + 4])
    feats, h, ts, target, valid = model._tta_rows(xs[200:204])
    rows = (model._rpos - 4 + torch.arange(4)) % model.replay_size
    assert valid.all()
    torch.testing.assert_close(h, model._rh[rows], rtol=0, atol=0)
    torch.testing.assert_close(ts, model._rt[rows])
    torch.testing.assert_close(target, model._ry[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats, model._rx[rows], rtol=1e-5, atol=1e-6)
    # a link repeated within the batch: its second input pairs with the state after the
    # first's previous sample (h_out); a third has no known state and is left out
    _, h, _, _, valid = model._tta_rows([xs[200], xs[204], xs[208]])
    slot = model._links.slot_of[xs[200].key]
    assert valid.tolist() == [True, True, False]
    assert torch.equal(h[1], model._links.h_out[slot])


def test_liquid_tta_rows_use_only_their_own_links_state():
    model, xs, _ = _trained("liquid", n=160)
    batch = xs[160:164]  # four distinct links, not yet taken in
    assert len({x.key for x in batch}) == 4

    def loss(b):
        with torch.no_grad():
            return float(model.tta_loss(b, model.tta_encode(b)))

    singles = [loss([x]) for x in batch]
    assert loss(batch) == pytest.approx(np.mean(singles), rel=1e-5)
    other = model._links.slot_of[batch[1].key]
    model._links.h_in[other] += 1.0  # another link's state changes: row 0 does not
    assert loss(batch[:1]) == singles[0]
    assert loss(batch[1:2]) != singles[1]


def test_liquid_untrained_network_is_the_plain_cell():
    model = LiquidForecaster(seed=0)
    net = model._net
    x, h, ts = torch.randn(5, 16), torch.randn(5, 32), torch.rand(5, 1)
    assert torch.equal(net.step(x, h, ts), net.cell(x, h, ts))
    with pytest.raises(ValueError, match="expected a 'liquid-v2' state, got 'liquid-v1'"):
        model.load_state_dict({**model.state_dict(), "format": "liquid-v1"})


@pytest.mark.parametrize("name", ["ctr-net+reloop2", "liquid+reloop2"])
def test_nhl_begin_empties_the_reloop2_memory(name):
    model, _, _ = _trained(name)
    assert model.stats()["entries"] > 0
    resets = model.stats()["resets"]
    NHL().begin(model)
    assert model.stats()["entries"] == 0 and model.stats()["resets"] == resets + 1


class _HiddenOnly(Adapter):
    """A forecaster with a hidden layer and no adaptation hook."""

    task = "forecast"
    has_hidden = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _predict_many(self, xs):
        return np.array([x.last for x in xs])

    def _hidden_many(self, xs):
        return np.array([[x.last, 1.0] for x in xs], dtype=np.float32)

    def _learn_many(self, xs, ys):
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        return None


def test_reloop2_reports_only_what_its_base_supports():
    model = ReLoop2(_HiddenOnly())
    assert supported_actions(model) == {"memory_refresh"}
    assert not supports(model, "tta") and not supports(model, "lr_boost")
    with pytest.raises(TypeError, match="ReLoop2 does not implement the HebbianHooks"):
        NHL().begin(model)
    with pytest.raises(TypeError, match=r"base _HiddenOnly has no set_lr_scale\(\)"):
        model.set_lr_scale(2.0)
    refresh_memory(model)  # its own action still works


def test_ctr_net_without_a_deep_tower_does_not_offer_tta():
    model = make_model("ctr-net", deep=(), seed=0)
    assert supported_actions(model) == {"lr_boost"}
    with pytest.raises(TypeError, match="CtrNet does not implement"):
        NHL().begin(model)


def _lrs(model):
    base = _base(model)
    opts = [base._opt] + ([base._opt_emb] if hasattr(base, "_opt_emb") else [])
    return [g["lr"] for o in opts for g in o.param_groups]


@pytest.mark.parametrize("name", ["liquid", "ctr-net", "ctr-net+reloop2"])
def test_lr_scale_is_absolute_checkpointed_and_restorable(name):
    model, xs, ys = _trained(name)
    lr = _base(model).lr
    model.set_lr_scale(3.0)
    model.set_lr_scale(3.0)  # idempotent
    assert _lrs(model) == pytest.approx([3 * lr] * len(_lrs(model)))
    other = make_model(name, seed=1)
    other.load_state_dict(state_io.loads(state_io.dumps(model.state_dict())))
    assert _lrs(other) == pytest.approx([3 * lr] * len(_lrs(other)))
    other.set_lr_scale(1.0)  # the optimizer state carried 3 * lr: 1.0 must still restore
    assert _lrs(other) == [lr] * len(_lrs(other))
    model.set_lr_scale(1.0)
    assert _lrs(model) == [lr] * len(_lrs(model))
    with pytest.raises(ValueError, match="positive finite number, got -1.0"):
        model.set_lr_scale(-1.0)


def test_unbuilt_ctr_net_keeps_its_lr_scale():
    model = make_model("ctr-net", seed=0)
    model.set_lr_scale(2.0)
    xs, ys = sample_data("ctr", n=16)
    model.learn_many(xs, ys)
    assert _lrs(model) == pytest.approx([2 * model.lr] * 2)


def test_default_models_have_every_hook_of_the_default_policy():
    assert set(DEFAULT_ACTIONS) == set(DEFAULT_MODEL)
    for task, name in DEFAULT_MODEL.items():
        model = make_model(name, seed=0)
        wanted = {a for acts in DEFAULT_ACTIONS[task].values() for a in acts}
        missing = sorted(a for a in wanted if not supports(model, a))
        assert not missing, f"default {task} model {name!r} lacks hooks for {missing}"


@pytest.mark.parametrize("name", sorted(model_names()))
def test_declared_actions_have_their_hooks(name):
    model = make_model(name, seed=0)
    for action in supported_actions(model):
        if action in _PROTOCOLS:
            assert isinstance(model, _PROTOCOLS[action]), (name, action)
        else:
            assert callable(getattr(model, "refresh_memory", None)
                            or getattr(model, "reset_memory", None)), (name, action)


def test_liquid_memory_refresh_keeps_only_the_newest_replay_rows():
    from streamadapt.adapters.liquid import LiquidForecaster
    from streamadapt.checks import sample_data
    from streamadapt.tta.hooks import supports

    xs, ys = sample_data("forecast")
    m = LiquidForecaster(refresh_keep=8, update_every=10_000, seed=0)
    m.learn_many(xs[:40], ys[:40])
    newest = m._ry[(m._rpos - 8 + torch.arange(8)) % m.replay_size].clone()
    assert supports(m, "memory_refresh") and m._rsize == 40
    m.refresh_memory()
    assert m._rsize == 8 and torch.equal(m._ry[:8], newest) and m._rpos == 8
    m.learn_many(xs[40:42], ys[40:42])  # the ring goes on after the kept rows
    assert m._rsize == 10
