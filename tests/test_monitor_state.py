"""The drift monitor's state in checkpoints: an open trial, its shadow and the countdowns
survive a restart, and a restore never leaves a boosted learning rate on for ever."""

from test_monitor import Offset, _level_shift_events

from streamadapt import state as state_io
from streamadapt.monitor import DriftMonitor
from streamadapt.pipeline import Pipeline

BATCH = 64


def _monitor() -> DriftMonitor:
    return DriftMonitor(signals=("loss",), on_loss=("lr_boost",), warmup=400, n_replay=4000,
                        lr_boost=4.0, lr_boost_events=600, judge_window=10_000,
                        max_wait=10_000, seasons=None, record_metrics=False)


def _until_boosted(pipe: Pipeline, mon: DriftMonitor, events: list) -> int:
    for i in range(0, len(events), BATCH):
        pipe.step(events[i:i + BATCH])
        if mon.trial is not None:
            return i + BATCH
    raise AssertionError("no adaptation was triggered")


def test_restore_mid_boost_keeps_the_trial_and_ends_the_boost_on_time():
    events = _level_shift_events()
    model, mon = Offset(target=0.0), _monitor()
    pipe = Pipeline("forecast", {"m": model}, monitor=mon)
    done = _until_boosted(pipe, mon, events)
    assert model.boosts[-1] == 4.0 and mon._boost_left > 0
    saved = state_io.loads(state_io.dumps(pipe.state_dict()))

    model2, mon2 = Offset(target=0.0), _monitor()
    pipe2 = Pipeline("forecast", {"m": model2}, monitor=mon2)
    pipe2.load_state_dict(saved)
    assert model2.boosts == [4.0]  # the boost is still in force after the restart ...
    assert mon2.trial is not None and mon2.trial.actions == ("lr_boost",)
    assert mon2._boost_left == mon._boost_left and mon2.position == mon.position
    assert mon2.counts == mon.counts and mon2.timeline == mon.timeline
    assert pipe2.active_adaptations == ("lr_boost",)
    assert mon2.trial.shadow.state_dict() == mon.trial.shadow.state_dict()
    assert mon2.trial.state_dict()["pending_ids"] == mon.trial.state_dict()["pending_ids"]
    left = mon2._boost_left
    fed = 0
    while fed < left:  # ... and ends after the inputs it had left
        pipe2.step(events[done + fed:done + fed + BATCH])
        fed += BATCH
    assert model2.boosts[-1] == 1.0 and mon2._boost_left <= 0


def test_restore_without_monitor_state_resets_a_boosted_rate():
    events = _level_shift_events()
    model, mon = Offset(target=0.0), _monitor()
    pipe = Pipeline("forecast", {"m": model}, monitor=mon)
    _until_boosted(pipe, mon, events)
    saved = state_io.loads(state_io.dumps(pipe.state_dict()))
    saved["monitor"] = None  # e.g. the monitor was switched off for the restart
    model2 = Offset(target=0.0)
    Pipeline("forecast", {"m": model2}).load_state_dict(saved)
    assert model2.boosts == [1.0]


def test_restore_after_the_trial_leaves_the_base_rate():
    events = _level_shift_events()
    model, mon = Offset(target=0.0), _monitor()
    pipe = Pipeline("forecast", {"m": model}, monitor=mon)
    done = _until_boosted(pipe, mon, events)
    mon._finish(pipe, "kept", 0.0)
    saved = state_io.loads(state_io.dumps(pipe.state_dict()))
    model2, mon2 = Offset(target=0.0), _monitor()
    pipe2 = Pipeline("forecast", {"m": model2}, monitor=mon2)
    pipe2.load_state_dict(saved)
    assert model2.boosts == [1.0] and mon2.trial is None and mon2.counts["kept"] == 1
    pipe2.step(events[done:done + BATCH])
    assert pipe2.active_adaptations == ()


def test_a_restored_default_pipeline_goes_on_exactly_as_an_uninterrupted_one():
    """Checkpoint the service's default forecast pipeline (liquid + default monitor) in the
    middle of the failure scenario, restore it into a fresh one, and run both on: the same
    detections, adaptations, outcomes and predictions."""
    from connectors.commands.run import build_pipeline
    from streamadapt.datasets import load_dataset
    from streamadapt.settings import load_settings

    events = list(load_dataset("linkload", seed=2, n_steps=1000).events)
    cut = 7680  # after the first day and the warm-up, before the failure
    settings = load_settings()
    a = build_pipeline(settings)
    for i in range(0, cut, 256):
        a.step(events[i:i + 256])
    b = build_pipeline(settings)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    pa, pb = [], []
    for i in range(cut, len(events), 256):
        pa += [r.prediction for r in a.step(events[i:i + 256]).predictions]
        pb += [r.prediction for r in b.step(events[i:i + 256]).predictions]
    assert a.monitor.timeline == b.monitor.timeline
    assert any(e["type"] == "detection" and e["position"] > cut for e in a.monitor.timeline)
    assert pa == pb
