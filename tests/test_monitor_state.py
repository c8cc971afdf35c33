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
