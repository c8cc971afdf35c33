"""Soft Hebbian rule, bounded NHL step and the Hebbian adapters (streamadapt.tta)."""

import numpy as np
import pytest
import torch

from streamadapt.adapters.naive import LastValue
from streamadapt.checks import sample_data
from streamadapt.tta import NHL, HebbianHooks, soft_hebb_delta, supports
from streamadapt.tta.hooks import refresh_memory
from streamadapt.tta.model import HebbianClicks, HebbianForecaster


def test_soft_hebb_matches_the_per_sample_rule():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=g)
    x = torch.randn(5, 6, generator=g)
    expected = torch.zeros_like(w)
    for xi in x:
        u = w @ xi
        y = torch.softmax(u / 0.7, dim=0)
        for k in range(4):
            expected[k] += 0.1 * y[k] * (xi - u[k] * w[k])
    got = soft_hebb_delta(w, x, temperature=0.7, eta=0.1)
    assert torch.allclose(got, expected / 5, atol=1e-6)


def test_soft_hebb_pulls_winning_rows_towards_unit_norm():
    g = torch.Generator().manual_seed(1)
    w = 0.2 * torch.randn(3, 5, generator=g)
    for _ in range(3000):
        x = torch.randn(16, 5, generator=g)
        w = w + soft_hebb_delta(w, x, temperature=0.5, eta=0.05)
    norms = w.norm(dim=1)
    assert torch.isfinite(w).all()
    assert ((norms > 0.7) & (norms < 1.3)).any(), norms


def _trained(model, task, n=240):
    xs, ys = sample_data(task, n=n)
    for i in range(0, n, 16):
        model.learn_many(xs[i:i + 16], ys[i:i + 16])
    return xs, ys


@pytest.mark.parametrize("cls,task", [(HebbianForecaster, "forecast"), (HebbianClicks, "ctr")])
def test_nhl_moves_only_input_layer_and_modulator_within_bounds(cls, task):
    model = cls(seed=0) if task == "ctr" else cls(window=8, seed=0)
    xs, _ = _trained(model, task)
    before = {k: v.clone() for k, v in model._net.state_dict().items()}
    nhl = NHL(eta=0.5, lr=1.0, max_step=0.02, max_drift=0.05)
    nhl.begin(model)
    drifts = [nhl.adapt(model, xs[i:i + 16])["drift"] for i in range(0, 240, 16)]
    after = model._net.state_dict()
    for name in ("body.weight", "body.bias", "out.weight", "out.bias", "input.bias"):
        assert torch.equal(before[name], after[name]), f"{name} moved"
    assert not torch.equal(before["input.weight"], after["input.weight"])
    assert max(drifts) <= 0.05 + 1e-6
    ref = max(float(before["input.weight"].norm()), 1.0)
    assert float((after["input.weight"] - before["input.weight"]).norm()) <= 0.05 * ref + 1e-5


@pytest.mark.parametrize("cls,task", [(HebbianForecaster, "forecast"), (HebbianClicks, "ctr")])
def test_the_modulator_lowers_its_unsupervised_loss(cls, task):
    model = cls(seed=0) if task == "ctr" else cls(window=8, seed=0)
    xs, _ = _trained(model, task)
    batch = xs[:64]
    with torch.no_grad():
        start = float(model.tta_loss(batch, model.tta_encode(batch)))
    nhl = NHL(hebbian=False, lr=0.05, max_step=0.05, max_drift=0.5)
    nhl.begin(model)
    for _ in range(30):
        nhl.adapt(model, batch)
    with torch.no_grad():
        end = float(model.tta_loss(batch, model.tta_encode(batch)))
    assert end < start


def test_hooks_are_detected_and_required():
    assert isinstance(HebbianForecaster(), HebbianHooks)
    assert supports(HebbianClicks(), "lr_boost") and not supports(LastValue(), "tta")
    with pytest.raises(TypeError, match="LastValue does not implement"):
        NHL().begin(LastValue())
    with pytest.raises(ValueError, match="unknown action 'retrain'"):
        supports(LastValue(), "retrain")


def test_lr_scale_round_trips_and_rejects_bad_values():
    m = HebbianClicks(lr=0.01)
    m.set_lr_scale(3.0)
    assert m._opt.param_groups[0]["lr"] == pytest.approx(0.03)
    m2 = HebbianClicks(lr=0.01)
    m2.load_state_dict(m.state_dict())
    assert m2._opt.param_groups[0]["lr"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="positive finite"):
        m.set_lr_scale(float("nan"))


def test_collapse_prone_entropy_minimisation_is_bounded():
    # unbounded entropy minimisation drives click probabilities to 0 or 1; the drift bound
    # keeps the adapted predictions close to the unadapted ones
    model = HebbianClicks(seed=0)
    xs, _ = _trained(model, "ctr")
    p0 = model.predict_many(xs)
    nhl = NHL(lr=5.0, max_step=0.05, max_drift=0.05)
    nhl.begin(model)
    for _ in range(200):
        nhl.adapt(model, xs[:64])
    p1 = model.predict_many(xs)
    assert np.isfinite(p1).all()
    assert np.abs(p1 - p0).max() < 0.25


def test_memory_refresh_accepts_the_reloop2_name():
    class Memory:
        resets = 0

        def reset_memory(self):
            self.resets += 1

    m = Memory()
    assert supports(m, "memory_refresh") and not supports(LastValue(), "memory_refresh")
    refresh_memory(m)
    assert m.resets == 1
    with pytest.raises(TypeError, match="LastValue has no refresh_memory"):
        refresh_memory(LastValue())
