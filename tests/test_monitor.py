"""DriftMonitor in the pipeline: detection -> action -> judged against the shadow -> outcome."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from streamadapt import metrics
from streamadapt.adapters.base import Adapter
from streamadapt.adapters.naive import LastValue
from streamadapt.drift.safeguard import Trial
from streamadapt.events import Impression, LinkLoadSample
from streamadapt.features import ForecastInput, WindowStore
from streamadapt.monitor import DriftMonitor
from streamadapt.pipeline import Pipeline
from streamadapt.tta.hooks import HebbianHooks
from streamadapt.tta.model import HebbianClicks

N_LINKS, SHIFT_AT, TREND = 8, 400, 3.0


class Offset(Adapter):
    """Persistence times ``scale`` plus ``bias``; test-time adaptation pulls ``bias`` towards
    ``target`` (or ``scale`` towards 0 when ``target`` is None). Learns nothing from labels."""

    task = "forecast"

    def __init__(self, target: float | None = 0.0, seed: int = 0):
        self.target = target
        self.seed = seed
        self.layer = torch.nn.Linear(2, 2)
        self.mod = torch.nn.Module()
        self.mod.bias = torch.nn.Parameter(torch.zeros(()))
        self.mod.scale = torch.nn.Parameter(torch.ones(()))
        self.boosts: list[float] = []
        self.refreshed = 0

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        s, b = float(self.mod.scale.detach()), float(self.mod.bias.detach())
        return np.array([s * x.last + b for x in xs])

    def _learn_many(self, xs: Sequence[Any], ys: np.ndarray) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"bias": float(self.mod.bias.detach()), "scale": float(self.mod.scale.detach())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.mod.bias.fill_(state["bias"])
            self.mod.scale.fill_(state["scale"])

    def tta_encode(self, xs):
        return torch.ones(len(xs), 2)

    def tta_input_layer(self):
        return self.layer

    def tta_modulator(self):
        return self.mod

    def tta_loss(self, xs, encoded):
        if self.target is None:
            return self.mod.scale**2
        return (self.mod.bias - self.target) ** 2

    def set_lr_scale(self, scale: float) -> None:
        self.boosts.append(scale)

    def refresh_memory(self) -> None:
        self.refreshed += 1


def _level_shift_events(n_steps: int = 900, seed: int = 0) -> list[LinkLoadSample]:
    """8 flat links; at step SHIFT_AT every level doubles and starts rising by TREND a step,
    so persistence errs by TREND and a bias of +TREND would be exact."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_steps):
        for k in range(N_LINKS):
            level = 100.0 * (k + 1)
            if t >= SHIFT_AT:
                level = 2 * level + TREND * (t - SHIFT_AT)
            out.append(LinkLoadSample(event_id=f"{k}-{t}", link_id=f"l{k}", timestamp=float(t),
                                      load=level + rng.normal(0, 0.2)))
    return out


def _run(model: Adapter, monitor: DriftMonitor, events) -> list:
    p = Pipeline("forecast", {"m": model}, monitor=monitor)
    preds = []
    for i in range(0, len(events), 64):
        preds += p.step(events[i:i + 64]).predictions
    return preds


def _monitor(**kw) -> DriftMonitor:
    base = dict(signals=("input",), warmup=400, calibration_block=50, seasons=None,
                n_replay=4000, tta_events=400,
                judge_window=200, nhl_lr=0.5, nhl_max_step=1.0, nhl_max_drift=100.0,
                record_metrics=False)
    return DriftMonitor(**{**base, **kw})


def test_an_input_shift_triggers_tta_and_a_helpful_change_is_kept():
    model, mon = Offset(target=TREND), _monitor()
    preds = _run(model, mon, _level_shift_events())
    kinds = [e["type"] for e in mon.timeline]
    assert kinds[:2] == ["detection", "adaptation"] and "outcome" in kinds
    det = mon.timeline[0]
    assert det["signal"] == "input" and det["timestamp"] >= SHIFT_AT
    assert det["position"] - SHIFT_AT * N_LINKS < 200
    assert mon.timeline[1]["actions"] == ["tta"]
    out = next(e for e in mon.timeline if e["type"] == "outcome")
    assert out["outcome"] == "kept" and out["adapted_loss"] < out["shadow_loss"]
    # the rising trend keeps moving the inputs, so later detections start further trials
    assert mon.counts["kept"] >= 1 and mon.counts["rolled_back"] == 0
    assert float(model.mod.bias.detach()) > 1.0  # the adaptation stayed
    tagged = [r for r in preds if r.adaptations == ("tta",)]
    assert tagged and all(r.timestamp >= SHIFT_AT for r in tagged)


def test_a_harmful_adaptation_is_rolled_back():
    model, mon = Offset(target=-4 * TREND), _monitor(record_metrics=True)
    before = metrics.REGISTRY.get_sample_value(
        "streamadapt_adaptations_total", {"action": "tta", "outcome": "rolled_back"}) or 0.0
    _run(model, mon, _level_shift_events())
    out = [e for e in mon.timeline if e["type"] == "outcome"]
    assert out and out[0]["outcome"] == "rolled_back"
    assert out[0]["adapted_loss"] > out[0]["shadow_loss"]
    assert float(model.mod.bias.detach()) == 0.0  # the shadow's state is back
    after = metrics.REGISTRY.get_sample_value(
        "streamadapt_adaptations_total", {"action": "tta", "outcome": "rolled_back"})
    assert after == before + mon.counts["rolled_back"] and mon.counts["kept"] == 0


def test_a_collapsing_adaptation_is_reset_before_any_label():
    model, mon = Offset(target=None), _monitor(judge_window=10_000)
    _run(model, mon, _level_shift_events())
    out = [e for e in mon.timeline if e["type"] == "outcome"]
    assert out[0]["outcome"] == "reset" and out[0]["n_judged"] < 200
    assert float(model.mod.scale.detach()) == 1.0


def test_loss_detection_boosts_lr_and_refreshes_memory_then_restores():
    model = Offset(target=0.0)
    mon = _monitor(signals=("loss",), on_loss=("lr_boost", "memory_refresh"),
                   lr_boost=4.0, lr_boost_events=100)
    _run(model, mon, _level_shift_events())
    assert mon.timeline[0]["signal"] == "loss"
    assert model.refreshed == mon.counts["adaptations"] >= 1
    assert model.boosts[:2] == [4.0, 1.0] and model.boosts[-1] == 1.0


def test_unsupported_actions_are_skipped_and_recorded():
    mon = _monitor()
    _run(LastValue(), mon, _level_shift_events())
    assert not [e for e in mon.timeline if e["type"] == "adaptation"]  # nothing changed
    found = [e for e in mon.timeline if e["type"] == "detection"]
    assert found and found[0]["skipped"] == ["tta"] and found[0]["applied"] == []
    assert "no hook" in found[0]["note"]
    assert mon.counts["adaptations"] == 0 and mon.counts["skipped"] >= 1 and mon.trial is None


def test_detections_during_a_trial_trigger_nothing_new():
    mon = _monitor(signals=("input", "loss"), judge_window=10_000, max_wait=10_000)
    _run(Offset(target=0.0), mon, _level_shift_events())
    adaptations = [e for e in mon.timeline if e["type"] == "adaptation"]
    later = [e for e in mon.timeline if e["type"] == "detection"][1:]
    assert len(adaptations) == 1
    assert later and all(e["applied"] == [] and "under judgement" in e["note"]
                         for e in later)


def test_bad_parameters_name_the_choices():
    with pytest.raises(ValueError, match="unknown signal 'labels'"):
        DriftMonitor(signals=("labels",))
    with pytest.raises(ValueError, match="unknown action 'retrain' in on_input"):
        DriftMonitor(on_input=("retrain",))
    with pytest.raises(ValueError, match="unknown detector"):
        DriftMonitor(detector="cusum")


def test_click_pipeline_with_hebbian_model_runs_and_reports():
    rng = np.random.default_rng(0)
    events = []
    for i in range(3000):
        shift = 3.0 if i >= 1500 else 0.0
        v = rng.normal(0, 1)
        events.append(Impression(event_id=f"e{i}", user_id=f"u{i % 30}", item_id=f"i{i % 17}",
                                 timestamp=float(i), numeric={"x": v + shift},
                                 label=int(rng.random() < 1 / (1 + np.exp(-2 * v)))))
    model = HebbianClicks(seed=0)
    assert isinstance(model, HebbianHooks)
    mon = DriftMonitor(warmup=500, calibration_block=50, seasons=None, n_replay=4000,
                       judge_window=200, record_metrics=False)
    p = Pipeline("ctr", {"m": model}, monitor=mon)
    for i in range(0, 3000, 100):
        p.step(events[i:i + 100])
    inputs = [e for e in mon.timeline if e["type"] == "detection" and e["signal"] == "input"]
    assert inputs and inputs[0]["timestamp"] >= 1500
    assert any(e["type"] == "outcome" for e in mon.timeline)
    assert set(mon.calibration()) == {"loss", "input"}
    assert np.isfinite(model.predict_many(events[:10])).all()


def test_a_change_that_helps_then_hurts_is_rolled_back_on_a_later_block():
    t = Trial(LastValue(), ("tta",), judge_window=3, confirm_blocks=2)
    assert t.judge(np.ones(3), np.full(3, 2.0)) is None  # first block: better
    assert t.judge(np.full(3, 3.0), np.full(3, 2.0)) == "rolled_back"  # second: worse


def test_an_unverified_change_is_rolled_back_after_max_wait():
    t = Trial(LastValue(), ("tta",), judge_window=100, max_wait=10)
    xs = [LinkLoadSample(event_id=str(i), link_id="a", timestamp=float(i), load=1.0)
          for i in range(12)]
    store = WindowStore()
    t.before_predict([store.push("a", e.timestamp, e.load, event_id=e.event_id) for e in xs])
    assert t.judge() == "rolled_back"
