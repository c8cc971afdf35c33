"""evaluate(): one pass, several models, the report schema, dead letters, monitor timeline."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from streamadapt.adapters.naive import ClickRate, LastValue
from streamadapt.adapters.river_models import RiverLinearForecaster, RiverLogReg
from streamadapt.datasets import Stream
from streamadapt.evaluate import ModelTimer, evaluate
from streamadapt.events import DeadLetter, Impression, Label, LinkLoadSample, Position
from streamadapt.features import WindowStore
from streamadapt.pipeline import Pipeline, Scores
from streamadapt.plot import plot_report

MODEL_KEYS = {"n", "slots", "rolling", "events_per_second", "predict_seconds", "learn_seconds",
              "non_finite_predictions", "adapter"}


def link_stream(n_per_link: int = 60, links: Sequence[str] = ("a", "b"), seed: int = 0):
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n_per_link):
        for link in links:
            load = float(10 + 5 * np.sin(i / 5) + rng.normal())
            events.append(LinkLoadSample(event_id=f"{link}-{i}", link_id=link,
                                         timestamp=60.0 * i, load=max(load, 0.0)))
    return events


def click_stream(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user = f"u{i % 7}"
        item = f"i{rng.integers(0, 5)}"
        label = int(rng.random() < (0.8 if item in ("i0", "i1") else 0.2))
        out.append(Impression(event_id=f"e{i}", user_id=user, item_id=item,
                              timestamp=float(i), label=label))
    return out


def test_forecast_report_schema_and_values():
    events = link_stream()
    stream = Stream("toy", "forecast", events, drift_points=[1200.0], n_events=len(events),
                    info={"links": 2})
    models = {"naive": LastValue(), "linear": RiverLinearForecaster(n_lags=4)}
    report = evaluate(stream, models, batch_size=16, progress=False)
    json.dumps(report, allow_nan=False)  # strict JSON
    for key in ("dataset", "task", "n_events", "dead_letters", "drift_points", "models",
                "slot_edges", "time_span", "config", "events_per_second"):
        assert key in report
    assert report["dataset"] == "toy" and report["task"] == "forecast"
    assert report["n_events"] == 120 and report["dead_letters"] == 0
    assert report["drift_points"] == [1200.0] and report["info"] == {"links": 2}
    assert "drift" not in report
    assert len(report["slot_edges"]) == 11
    for m in report["models"].values():
        assert MODEL_KEYS | {"mae", "rmse", "mape"} <= set(m)
        assert m["n"] == 118  # every sample but each link's last is scored
        assert len(m["slots"]) == 10 and sum(s["n"] for s in m["slots"]) == 118
        assert m["events_per_second"] > 0
    # LastValue's MAE by hand: per link, |load[i+1] - load[i]|
    loads = {}
    for e in events:
        loads.setdefault(e.link_id, []).append(e.load)
    diffs = np.concatenate([np.abs(np.diff(v)) for v in loads.values()])
    assert report["models"]["naive"]["mae"] == pytest.approx(diffs.mean())
    # the timing hooks are gone afterwards
    assert "predict_many" not in vars(models["naive"])
    assert "learn_many" not in vars(models["linear"])


def test_one_pass_equals_separate_runs():
    """Models side by side in one pass score exactly as each would alone."""
    events = link_stream(40)
    both = evaluate(Stream("t", "forecast", events),
                    {"naive": LastValue(), "linear": RiverLinearForecaster(n_lags=3)},
                    progress=False)
    alone = evaluate(Stream("t", "forecast", events), {"linear": RiverLinearForecaster(n_lags=3)},
                     progress=False)
    assert both["models"]["linear"]["mae"] == alone["models"]["linear"]["mae"]
    assert both["models"]["linear"]["slots"] == alone["models"]["linear"]["slots"]


def test_ctr_report_counts_dead_letters_and_orphans():
    events: list[Any] = click_stream(200)
    events.insert(50, DeadLetter(b"{bad", "malformed json: x", Position("f", 0, 51)))
    events.insert(60, Label(event_id="never-seen", label=1.0, timestamp=59.0))
    report = evaluate(Stream("clicks", "ctr", events),
                      {"rate": ClickRate(), "logreg": RiverLogReg()}, progress=False,
                      batch_size=32)
    assert report["n_records"] == 202 and report["n_events"] == 201
    assert report["dead_letters"] == 2
    assert report["dead_letter_reasons"] == {"malformed json": 1, "orphan label": 1}
    assert report["dead_letter_samples"][0]["offset"] == 51
    for m in report["models"].values():
        assert {"auc", "gauc", "logloss", "gauc_users"} <= set(m)
        assert m["n"] == 200
    # items i0/i1 click far more: the learned model must rank better than the constant rate
    assert report["models"]["logreg"]["auc"] > report["models"]["rate"]["auc"] + 0.1


def test_limit_and_slot_seconds():
    events = link_stream(50, links=("a",))
    report = evaluate(Stream("t", "forecast", iter(events), n_events=50), {"n": LastValue()},
                      limit=20, slot_seconds=300.0, progress=False)
    assert report["n_events"] == 20
    assert report["time_span"] == {"start": 0.0, "end": 19 * 60.0}
    assert len(report["models"]["n"]["slots"]) == 4  # 0-300-600-900-1200 s


class TimelineMonitor:
    """A stand-in drift monitor: flags a detection once the error jumps."""

    def __init__(self) -> None:
        self.timeline: list[dict[str, Any]] = []
        self.seen_before_predict = 0

    def before_predict(self, pipeline: Pipeline, xs: Sequence[Any]) -> None:
        self.seen_before_predict += len(xs)

    def after_learn(self, pipeline: Pipeline, scores: Mapping[str, Scores]) -> None:
        s = scores["naive"]
        err = np.abs(s.y_true - s.y_pred)
        if len(err) and err.max() > 50 and not self.timeline:
            t = float(s.timestamps[int(err.argmax())])
            self.timeline.append({"timestamp": t, "type": "detection", "detector": "fake",
                                  "signal": np.float64(err.max())})
            self.timeline.append({"timestamp": t, "type": "adaptation", "action": "none"})


def test_monitor_timeline_is_copied_and_plotted(tmp_path):
    events = [LinkLoadSample(event_id=str(i), link_id="a", timestamp=float(i),
                             load=10.0 if i < 40 else 100.0) for i in range(80)]
    monitor = TimelineMonitor()
    report = evaluate(Stream("jump", "forecast", events, drift_points=[40.0]),
                      {"naive": LastValue()}, monitor=monitor, progress=False, batch_size=8)
    json.dumps(report, allow_nan=False)
    drift = report["drift"]
    assert drift["detections"] == 1 and drift["adaptations"] == 1
    assert drift["timeline"][0]["timestamp"] == 40.0
    assert drift["timeline"][0]["signal"] == 90.0  # numpy scalar made plain
    assert monitor.seen_before_predict == 80
    png = plot_report(report, tmp_path / "sub" / "jump.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_fail_with_the_value():
    stream = Stream("t", "forecast", link_stream(3))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate(stream, {"n": LastValue()}, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="model 'r' is a 'ctr' model, not 'forecast'"):
        evaluate(stream, {"r": ClickRate()}, progress=False)
    with pytest.raises(ValueError, match="unknown missing_label 'maybe'; valid choices"):
        evaluate(Stream("c", "ctr", []), {"r": ClickRate()}, missing_label="maybe",
                 progress=False)


def test_empty_stream_gives_an_empty_report():
    report = evaluate(Stream("e", "ctr", []), {"r": ClickRate()}, progress=False)
    assert report["n_events"] == 0 and report["models"]["r"]["n"] == 0
    assert report["models"]["r"]["auc"] is None and report["models"]["r"]["slots"] == []
    json.dumps(report, allow_nan=False)


def test_model_timer_counts_nested_calls_once():
    model = LastValue()
    timer = ModelTimer(model).install()
    xs = [WindowStore(window=3).push("a", 0.0, 1.0)]
    model.predict_with_base_many(xs)  # calls predict_many inside
    model.learn_many(xs, [1.0])
    assert timer.counts == {"predict": 1, "learn": 1}
    timer.remove()
    assert "predict_many" not in vars(model)
