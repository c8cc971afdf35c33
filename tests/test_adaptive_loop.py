"""The adaptive loop through the Service with the registered default models and the default
settings: drift injected -> detection -> adaptation applied on ``liquid`` and on
``ctr-net+reloop2`` -> judged against the shadow -> kept or rolled back; and an adaptation
made to hurt is rolled back."""

from __future__ import annotations

import numpy as np

from connectors.commands.run import build_pipeline, monitors
from streamadapt import metrics
from streamadapt.datasets import load_dataset
from streamadapt.events import Impression, encode
from streamadapt.io import IterableSource, ListSink
from streamadapt.monitor import DriftMonitor
from streamadapt.service import Service
from streamadapt.settings import load_settings


def _serve(settings, events) -> tuple[Service, ListSink]:
    pipe = build_pipeline(settings)
    sink = ListSink()
    svc = Service(pipe, IterableSource([encode(e) for e in events], name="mem"), sink,
                  ListSink(), batch_size=settings.pipeline.batch_size)
    svc.run()
    return svc, sink


def _applied(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("streamadapt_adaptations_applied_total",
                                             {"action": name}) or 0.0


def test_default_forecast_service_detects_the_failure_and_adapts_liquid():
    settings = load_settings()
    assert settings.model == "liquid" and settings.drift.enabled
    stream = load_dataset("linkload", seed=1, n_steps=1100)
    before = _applied("tta")
    svc, sink = _serve(settings, list(stream.events))
    (mon,) = monitors(svc)
    assert isinstance(mon, DriftMonitor)
    failure = stream.drift_points[0]
    found = [e for e in mon.timeline if e["type"] == "detection"
             and failure <= e["timestamp"] <= failure + 300 * 40]
    assert found, "the link failure was not detected"
    adapted = [e for e in mon.timeline if e["type"] == "adaptation"]
    assert any("tta" in e["actions"] for e in adapted)
    assert mon.counts["kept"] + mon.counts["rolled_back"] + mon.counts["reset"] >= 1
    assert _applied("tta") - before == mon.counts["applied_tta"] >= 1
    tagged = [r for r in sink.records if "tta" in r.adaptations]
    assert tagged and len(tagged) < len(sink.records)


def _click_events(n: int, change: int, seed: int = 0) -> list[Impression]:
    """Clicks whose rate jumps at ``change`` (a concept change the log loss shows)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u, it = int(rng.integers(40)), int(rng.integers(60))
        base = -2.0 if i < change else 1.0
        p = 1 / (1 + np.exp(-(base + 0.8 * ((u + it) % 3 - 1))))
        out.append(Impression(event_id=f"c{i}", user_id=f"u{u}", item_id=f"i{it}",
                              timestamp=1.7e9 + i, categorical={"topic": f"t{it % 5}"},
                              label=int(rng.random() < p)))
    return out


def test_default_click_service_adapts_ctr_net_reloop2():
    settings = load_settings(task="ctr")
    assert settings.model == "ctr-net+reloop2"
    # after the default burn-in (500) and warm-up (5000) of the loss signal
    svc, _ = _serve(settings, _click_events(12_000, change=8000))
    (mon,) = monitors(svc)
    adapted = [e for e in mon.timeline if e["type"] == "adaptation"]
    assert adapted and adapted[0]["timestamp"] >= 1.7e9 + 8000
    assert set(adapted[0]["actions"]) == {"tta", "lr_boost", "memory_refresh"}
    outcomes = [e for e in mon.timeline if e["type"] == "outcome"]
    assert outcomes and outcomes[0]["n_judged"] > 0


def test_an_adaptation_made_to_hurt_is_rolled_back_on_liquid():
    # Hebbian steps far beyond the safe bounds: the judged loss must undo them
    settings = load_settings(drift={"on_loss": ["tta"], "on_input": ["tta"], "nhl_eta": 5.0,
                                    "nhl_lr": 50.0, "nhl_max_step": 5.0,
                                    "nhl_max_drift": 50.0})
    stream = load_dataset("linkload", seed=1, n_steps=1100)
    svc, _ = _serve(settings, list(stream.events))
    (mon,) = monitors(svc)
    outcomes = [e["outcome"] for e in mon.timeline if e["type"] == "outcome"]
    assert outcomes and all(o in ("rolled_back", "reset") for o in outcomes)
    assert mon.counts["kept"] == 0
