"""The drift monitor: detection -> adaptation policy -> judged against a shadow -> outcome.

:class:`DriftMonitor` implements the pipeline's :class:`~streamadapt.pipeline.Monitor`
protocol. It watches, with calibrated river detectors
(:class:`~streamadapt.drift.watch.SignalWatcher`),

* the ``loss`` signal: the primary model's per-event prequential loss (concept drift), fed
  in ``after_learn``;
* the ``input`` signal: one input statistic per event (covariate drift), fed in
  ``before_predict`` before any label exists.

A detection triggers the actions of the :class:`~streamadapt.drift.policy.AdaptationPolicy`
for its signal (unless a trial is already running) under a
:class:`~streamadapt.drift.safeguard.Trial`: Hebbian test-time adaptation
(:class:`~streamadapt.tta.nhl.NHL`) on the next unlabelled batches, a learning-rate boost,
an error-memory refresh. The trial keeps, rolls back or resets them. Every detection,
adaptation and outcome is appended to :attr:`DriftMonitor.timeline`, counted in
:attr:`DriftMonitor.counts` and in the Prometheus counters
``streamadapt_drift_detections_total`` and ``streamadapt_adaptations_total``; the actions in
force are written to ``pipeline.active_adaptations``.

The monitor needs from the pipeline only ``task``, ``models``, ``primary`` and a writable
``active_adaptations``, so a custom loop can drive it too.

>>> import numpy as np
>>> from streamadapt.adapters.naive import LastValue
>>> from streamadapt.events import LinkLoadSample
>>> from streamadapt.pipeline import Pipeline
>>> mon = DriftMonitor(warmup=300, calibration_block=50, n_replay=4000, signals=("loss",),
...                    seasons=None)     # no cycles in this stream
>>> p = Pipeline("forecast", {"naive": LastValue()}, monitor=mon)
>>> rng = np.random.default_rng(1)
>>> noise = np.r_[rng.normal(0, 1, 1000), rng.normal(0, 5, 400)]   # noisier from 1000 on
>>> for i in range(0, 1400, 50):
...     _ = p.step([LinkLoadSample(event_id=str(j), link_id="a", timestamp=float(j),
...                                load=100 + noise[j]) for j in range(i, i + 50)])
>>> [(e["type"], e["signal"]) for e in mon.timeline][:1], 1000 < mon.timeline[0]["position"]
([('detection', 'loss')], True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from streamadapt import metrics
from streamadapt.drift.policy import ACTIONS, DEFAULT_ACTIONS, SIGNALS, AdaptationPolicy
from streamadapt.drift.safeguard import OUTCOMES, Trial
from streamadapt.drift.seasonal import InputSignal, LossSignal
from streamadapt.drift.signals import INPUT_STATS, drift_loss, event_loss, input_stat
from streamadapt.drift.watch import SignalWatcher
from streamadapt.summary import Rolling
from streamadapt.tta.hooks import refresh_memory, supports
from streamadapt.tta.nhl import NHL

__all__ = ["DriftMonitor", "monitor_from_settings"]

_DEFAULT_STAT = {"forecast": "log_load", "ctr": "numeric_mean"}


class DriftMonitor:
    """Drift detection and guarded adaptation for a :class:`~streamadapt.pipeline.Pipeline`.

    Parameters
    ----------
    detector
        River detector for every signal (see :data:`~streamadapt.drift.DETECTORS`).
    signals
        Which of ``"loss"`` and ``"input"`` are watched.
    input_stat
        Input statistic (see :data:`~streamadapt.drift.signals.INPUT_STATS`); None picks
        ``log_load`` (forecast) or ``numeric_mean`` (ctr).
    warmup
        Events per signal used to normalise and calibrate before detecting.
    burn_in
        Events per signal ignored before the warm-up (the model's first learning).
    target_false_alarms
        Target false alarms per 10k events, calibrated on a replay of the warm-up.
    n_replay
        Length of the calibration replay.
    calibration_block
        Block length of the calibration bootstrap; make warm-up and block span the stream's
        longest cycle (a day of link loads) so the replay holds it.
    refractory
        Events after a detection on a signal during which it reports no other.
    detector_params
        Fixed detector arguments (setting its knob skips calibration).
    on_loss, on_input, tta_events, lr_boost, lr_boost_events
        The :class:`~streamadapt.drift.policy.AdaptationPolicy`.
    judge_window, confirm_blocks, tolerance, collapse_ratio, max_wait, shadow_learns
        The :class:`~streamadapt.drift.safeguard.Trial` safeguard.
    nhl_eta, nhl_temperature, nhl_lr, nhl_max_step, nhl_max_drift
        The :class:`~streamadapt.tta.nhl.NHL` step.
    seasons
        Cycle lengths in seconds that the signals are compared against (a daily load cycle
        is not drift); None or empty: none. The signals named in ``season_signals`` become
        residuals against the same key at the same phase of earlier cycles
        (:mod:`~streamadapt.drift.seasonal`); they are not watched during a key's first
        cycle.
    season_signals
        ``"input"`` (the input statistic, both tasks) and/or ``"loss"`` (the forecast
        loss; the click loss is never seasonal). The default, input only, is what the
        drift benchmark supports: the bounded forecast loss barely follows the daily cycle.
    season_bin, season_alpha
        Phase bin width in seconds and weight of the newest cycle of the seasonal profiles.
    max_timeline
        Most recent timeline records kept.
    record_metrics
        Increment the Prometheus counters.
    seed
        Seed of calibration (and of KSWIN).
    """

    def __init__(
        self,
        detector: str = "adwin",
        signals: Sequence[Literal["loss", "input"]] = ("loss", "input"),
        input_stat: str | None = None,
        warmup: int = 5000,
        burn_in: int = 500,
        target_false_alarms: float = 1.0,
        n_replay: int = 20_000,
        calibration_block: int = 1000,
        refractory: int = 1000,
        detector_params: dict[str, Any] | None = None,
        on_loss: Sequence[str] = ("lr_boost", "memory_refresh"),
        on_input: Sequence[str] = ("tta",),
        tta_events: int = 2000,
        lr_boost: float = 3.0,
        lr_boost_events: int = 2000,
        judge_window: int = 500,
        confirm_blocks: int = 2,
        tolerance: float = 0.0,
        collapse_ratio: float = 0.2,
        max_wait: int = 20_000,
        shadow_learns: bool = True,
        nhl_eta: float = 1e-3,
        nhl_temperature: float = 1.0,
        nhl_lr: float = 1e-2,
        nhl_max_step: float = 0.01,
        nhl_max_drift: float = 0.1,
        seasons: Sequence[float] | None = (86_400.0,),
        season_signals: Sequence[str] = ("input",),
        season_bin: float = 3600.0,
        season_alpha: float = 0.3,
        max_timeline: int = 10_000,
        record_metrics: bool = True,
        seed: int = 0,
    ) -> None:
        for s in signals:
            if s not in SIGNALS:
                raise ValueError(f"unknown signal {s!r}; valid choices: {', '.join(SIGNALS)}")
        self.detector = detector
        self.signals = tuple(signals)
        self.input_stat = input_stat
        self.warmup = warmup
        self.burn_in = burn_in
        self.target_false_alarms = target_false_alarms
        self.n_replay = n_replay
        self.calibration_block = calibration_block
        self.refractory = refractory
        self.detector_params = detector_params
        self.on_loss = tuple(on_loss)
        self.on_input = tuple(on_input)
        self.tta_events = tta_events
        self.lr_boost = lr_boost
        self.lr_boost_events = lr_boost_events
        self.judge_window = judge_window
        self.confirm_blocks = confirm_blocks
        self.tolerance = tolerance
        self.collapse_ratio = collapse_ratio
        self.max_wait = max_wait
        self.shadow_learns = shadow_learns
        self.nhl_eta = nhl_eta
        self.nhl_temperature = nhl_temperature
        self.nhl_lr = nhl_lr
        self.nhl_max_step = nhl_max_step
        self.nhl_max_drift = nhl_max_drift
        self.seasons = None if seasons is None else tuple(float(p) for p in seasons)
        for s in season_signals:
            if s not in SIGNALS:
                raise ValueError(f"unknown signal {s!r} in season_signals; valid choices: "
                                 f"{', '.join(SIGNALS)}")
        self.season_signals = tuple(season_signals)
        self.season_bin = season_bin
        self.season_alpha = season_alpha
        self._input_signal: InputSignal | None = None
        self._loss_signal: LossSignal | None = None
        self.max_timeline = max_timeline
        self.record_metrics = record_metrics
        # rolling error of the shadow, same half-life as the served model's gauge
        self._shadow_error = Rolling()
        self.seed = seed
        self.policy = AdaptationPolicy(self.on_loss, self.on_input, tta_events, lr_boost,
                                       lr_boost_events)
        self.nhl = NHL(nhl_eta, nhl_temperature, nhl_lr, nhl_max_step, nhl_max_drift)
        self.watchers = {
            s: SignalWatcher(detector, warmup, target_false_alarms, burn_in,
                             "up" if s == "loss" else "both", detector_params, n_replay,
                             block=calibration_block, refractory=refractory, seed=seed)
            for s in self.signals
        }
        #: Every detection, adaptation and outcome, in order (dicts, see docs/drift.md).
        self.timeline: list[dict[str, Any]] = []
        #: Totals: detections, adaptations, and each outcome.
        self.counts: dict[str, int] = {"detections": 0, "adaptations": 0, "skipped": 0,
                                       **{f"applied_{a}": 0 for a in ACTIONS},
                                       **{o: 0 for o in OUTCOMES}}
        #: Judged events of finished trials and their summed adapted and shadow losses.
        self.judged: dict[str, float] = {"n": 0, "adapted": 0.0, "shadow": 0.0}
        self.trial: Trial | None = None
        self.position = 0  # inputs seen
        self._stat: Any = None
        self._tta_left = 0
        self._boost_left = 0

    # -- pipeline protocol --------------------------------------------------------------
    def before_predict(self, pipeline: Any, xs: Sequence[Any]) -> None:
        if not xs:
            return
        task = pipeline.task
        model = pipeline.models[pipeline.primary]
        self.position += len(xs)
        now = float(xs[-1].timestamp)
        if "input" in self.watchers:
            if self._stat is None:
                name = self.input_stat or _DEFAULT_STAT[task]
                if name not in INPUT_STATS[task]:
                    raise ValueError(f"unknown {task} input statistic {name!r}; valid "
                                     f"choices: {', '.join(INPUT_STATS[task])}")
                self._stat = input_stat(task, name)
                if self.seasons and "input" in self.season_signals \
                        and self._input_signal is None:
                    self._input_signal = InputSignal(task, name, self.seasons,
                                                     self.season_bin, self.season_alpha)
            values = self._stat(xs) if self._input_signal is None else self._input_signal(xs)
            for i, stat in self.watchers["input"].update_many(values):
                self._detected(pipeline, "input", float(xs[i].timestamp), stat)
        trial = self.trial
        if trial is not None:
            trial.before_predict(xs)
            if self._tta_left > 0:
                self.nhl.adapt(model, xs)
                self._tta_left -= len(xs)
                if trial.collapsed(xs, model.predict_many(xs)):
                    self._finish(pipeline, "reset", now)
            if self.trial is not None and self._boost_left > 0:
                self._boost_left -= len(xs)
                if self._boost_left <= 0:
                    model.set_lr_scale(1.0)
            if self.trial is not None and (outcome := self.trial.judge()) is not None:
                self._finish(pipeline, outcome, now)

    def after_learn(self, pipeline: Any, scores: Mapping[str, Any]) -> None:
        s = scores.get(pipeline.primary)
        if s is None or len(s) == 0:
            return
        task = pipeline.task
        loss = event_loss(task, s.y_true, s.y_pred)
        shadow_loss = loss  # outside a trial the served model is the unadapted one
        if self.trial is not None:
            shadow_loss = self.trial.after_learn(
                s.xs, s.y_true, loss, lambda y, p: event_loss(task, y, p))
            if (outcome := self.trial.judge()) is not None:
                self._finish(pipeline, outcome, float(s.timestamps[-1]))
        if self.record_metrics and len(shadow_loss):
            metrics.PREQUENTIAL_ERROR.labels(
                model="shadow", metric="mae" if task == "forecast" else "logloss"
            ).set(self._shadow_error.update(shadow_loss))
        if "loss" in self.watchers:
            if (self.seasons and "loss" in self.season_signals and task == "forecast"
                    and self._loss_signal is None):
                self._loss_signal = LossSignal(task, self.seasons, self.season_bin,
                                               self.season_alpha)
            signal = (drift_loss(task, s.y_true, s.y_pred) if self._loss_signal is None
                      else self._loss_signal(s.xs, s.y_true, s.y_pred, s.timestamps))
            for i, stat in self.watchers["loss"].update_many(signal):
                self._detected(pipeline, "loss", float(s.timestamps[i]), stat)

    # -- internals ----------------------------------------------------------------------
    def _detected(self, pipeline: Any, signal: str, timestamp: float, stat: float) -> None:
        self.counts["detections"] += 1
        if self.record_metrics:
            metrics.DRIFT_DETECTIONS.labels(detector=self.detector, signal=signal).inc()
        wanted = self.policy.actions_for(signal)
        record: dict[str, Any] = {
            "type": "detection", "timestamp": timestamp, "position": self.position,
            "detector": self.detector, "signal": signal, "statistic": stat,
            "applied": [], "skipped": [], "note": "",
        }
        self._append(record)
        if not wanted:
            record["note"] = "no action configured for this signal"
            return
        if self.trial is not None:
            record["note"] = "an adaptation is under judgement"
            return
        model = pipeline.models[pipeline.primary]
        applied = tuple(a for a in wanted if supports(model, a))
        skipped = tuple(a for a in wanted if a not in applied)
        record["applied"], record["skipped"] = list(applied), list(skipped)
        self.counts["skipped"] += len(skipped)
        if self.record_metrics:
            for a in skipped:
                metrics.ADAPTATIONS_SKIPPED.labels(action=a).inc()
        if not applied:
            record["note"] = "the served model has no hook for any configured action"
            return
        self._trigger(pipeline, signal, applied, timestamp)

    def _trigger(self, pipeline: Any, signal: str, actions: tuple[str, ...],
                 timestamp: float) -> None:
        model = pipeline.models[pipeline.primary]
        self.counts["adaptations"] += 1
        for a in actions:
            self.counts[f"applied_{a}"] += 1
        if self.record_metrics:
            for a in actions:
                metrics.ADAPTATIONS_APPLIED.labels(action=a).inc()
        self._append({"type": "adaptation", "timestamp": timestamp, "position": self.position,
                      "signal": signal, "action": "+".join(actions), "actions": list(actions)})
        self.trial = Trial(model, actions, self.judge_window, self.tolerance,
                           self.collapse_ratio, self.max_wait, self.shadow_learns,
                           self.confirm_blocks)
        if "tta" in actions:
            self.nhl.begin(model)
            self._tta_left = self.policy.tta_events
        if "lr_boost" in actions:
            model.set_lr_scale(self.policy.lr_boost)
            self._boost_left = self.policy.lr_boost_events
        if "memory_refresh" in actions:
            refresh_memory(model)
        pipeline.active_adaptations = actions

    def _finish(self, pipeline: Any, outcome: str, timestamp: float) -> None:
        trial = self.trial
        assert trial is not None
        model = pipeline.models[pipeline.primary]
        if outcome in ("rolled_back", "reset"):
            trial.restore(model)
        if "lr_boost" in trial.actions:
            model.set_lr_scale(1.0)
        self.counts[outcome] += 1
        summary = trial.summary()
        judged = self.judged
        judged["n"] += int(summary["n_judged"])
        judged["adapted"] += float(summary["adapted_loss"]) * int(summary["n_judged"])
        judged["shadow"] += float(summary["shadow_loss"]) * int(summary["n_judged"])
        if self.record_metrics:
            for a in trial.actions:
                metrics.ADAPTATIONS.labels(action=a, outcome=outcome).inc()
        self._append({"type": "outcome", "timestamp": timestamp, "position": self.position,
                      "action": "+".join(trial.actions), "outcome": outcome, **summary})
        self.trial = None
        self._tta_left = self._boost_left = 0
        pipeline.active_adaptations = ()

    def _append(self, record: dict[str, Any]) -> None:
        self.timeline.append(record)
        if len(self.timeline) > self.max_timeline:
            del self.timeline[: len(self.timeline) - self.max_timeline]

    # -- reporting ----------------------------------------------------------------------
    @property
    def shadow_error(self) -> float:
        """Rolling error of the unadapted shadow (the served model's outside a trial)."""
        return self._shadow_error.value

    def judged_losses(self) -> dict[str, float]:
        """Mean loss of the adapted model and of its shadow over every judged event of the
        finished trials, and how many events were judged."""
        n = self.judged["n"]
        nan = float("nan")
        return {"n": n, "adapted": self.judged["adapted"] / n if n else nan,
                "shadow": self.judged["shadow"] / n if n else nan}

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs: signals (detector windows, calibration), counters,
        the recent timeline, an open trial with its shadow, and the countdowns of the
        adaptation window and the learning-rate boost."""
        signals = self.signals_state() if hasattr(self, "signals_state") else None
        trial = None if self.trial is None else self.trial.state_dict()
        return {
            "format": "monitor-v1",
            "position": self.position,
            "counts": dict(self.counts),
            "judged": dict(self.judged),
            "timeline": [dict(e) for e in self.timeline],
            "shadow_error": self._shadow_error.value,
            "trial": trial,
            "tta_left": self._tta_left,
            "boost_left": self._boost_left,
            "nhl_anchor": {k: v.clone() for k, v in self.nhl._anchor.items()},
            "signals": signals,
        }

    def load_state_dict(self, state: dict[str, Any], pipeline: Any) -> None:
        """Restore :meth:`state_dict` after the pipeline's models were restored.

        The served model's learning rate follows the restored boost countdown: boosted if a
        boost was running, else reset to its base rate (a model saved mid-boost carries the
        boosted rate in its optimizer state).
        """
        if state.get("format") != "monitor-v1":
            raise ValueError(f"expected a 'monitor-v1' state, got {state.get('format')!r}")
        model = pipeline.models[pipeline.primary]
        self.position = int(state["position"])
        self.counts.update({k: int(v) for k, v in state["counts"].items()})
        self.judged.update({"n": int(state["judged"]["n"]),
                            "adapted": float(state["judged"]["adapted"]),
                            "shadow": float(state["judged"]["shadow"])})
        self.timeline = [dict(e) for e in state["timeline"]]
        self._shadow_error.value = float(state["shadow_error"])
        self.trial = None
        if state["trial"] is not None:
            self.trial = Trial.from_state_dict(model, state["trial"])
        self._tta_left = int(state["tta_left"]) if self.trial is not None else 0
        self._boost_left = int(state["boost_left"]) if self.trial is not None else 0
        self.nhl._anchor = {k: torch.as_tensor(v).clone()
                            for k, v in state["nhl_anchor"].items()}
        if state["signals"] is not None and hasattr(self, "load_signals_state"):
            self.load_signals_state(state["signals"])
        if supports(model, "lr_boost"):
            boosted = self._boost_left > 0 and "lr_boost" in self.trial.actions  # type: ignore[union-attr]
            model.set_lr_scale(self.policy.lr_boost if boosted else 1.0)
        pipeline.active_adaptations = () if self.trial is None else self.trial.actions

    def signals_state(self) -> dict[str, Any]:
        """The watchers' and the seasonal signals' state, in the safe state format."""
        return {
            "watchers": {s: w.state_dict() for s, w in self.watchers.items()},
            "input_signal": None if self._input_signal is None
            else self._input_signal.state_dict(),
            "loss_signal": None if self._loss_signal is None
            else self._loss_signal.state_dict(),
        }

    def load_signals_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`signals_state` output into a monitor built with the same
        arguments (the seasonal signals are rebuilt for the state's task)."""
        if set(state["watchers"]) != set(self.watchers):
            raise ValueError(f"state watches {sorted(state['watchers'])}, this monitor "
                             f"watches {sorted(self.watchers)}")
        for s, w in self.watchers.items():
            w.load_state_dict(state["watchers"][s])
        self._input_signal = self._loss_signal = None
        if (st := state["input_signal"]) is not None:
            self._input_signal = InputSignal(st["task"], self.input_stat, self.seasons or (),
                                             self.season_bin, self.season_alpha)
            self._input_signal.load_state_dict(st)
        if (st := state["loss_signal"]) is not None:
            self._loss_signal = LossSignal(st["task"], self.seasons or (), self.season_bin,
                                           self.season_alpha)
            self._loss_signal.load_state_dict(st)

    def calibration(self) -> dict[str, Any]:
        """Per signal: the chosen detector knob and its replay false-alarm rate."""
        return {s: (w.calibration.to_dict() if w.calibration else None)
                for s, w in self.watchers.items()}


def monitor_from_settings(drift: Any, task: str, seed: int = 0,
                          record_metrics: bool = True) -> DriftMonitor | None:
    """The service's monitor from a :class:`~streamadapt.settings.DriftSettings`; None when
    ``drift.enabled`` is false. Unset ``on_loss``/``on_input`` take the task's default
    policy (:data:`~streamadapt.drift.policy.DEFAULT_ACTIONS`)."""
    if not drift.enabled:
        return None
    params = drift.monitor_params()
    for signal in SIGNALS:
        if params.get(f"on_{signal}") is None:
            params[f"on_{signal}"] = DEFAULT_ACTIONS[task][signal]
    return DriftMonitor(**params, record_metrics=record_metrics, seed=seed)
