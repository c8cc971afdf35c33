"""The running account of a service run: counts and prequential error, for the end-of-run
table and the rolling error gauges.

>>> import numpy as np

from streamadapt import metrics as m
from streamadapt.events import DeadLetter
from streamadapt.pipeline import StepResult
>>> s = RunSummary(task="forecast")
>>> s.add_scores(np.array([1.0, 2.0]), np.array([1.5, 2.0]))
>>> s.metrics()
{'mae': 0.25, 'rmse': 0.3535533905932738}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from streamadapt import metrics as m
from streamadapt.events import DeadLetter
from streamadapt.pipeline import StepResult

__all__ = ["Accountant", "RunSummary", "Rolling"]


@dataclass
class RunSummary:
    """Counts and prequential error of one run, for the end-of-run table."""

    task: str
    events: int = 0
    records: int = 0
    predictions: int = 0
    labelled: int = 0
    dead_letters: int = 0
    expired: int = 0
    batches: int = 0
    seconds: float = 0.0
    abs_error: float = 0.0
    sq_error: float = 0.0
    log_loss: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    def add_scores(self, y: np.ndarray, p: np.ndarray) -> None:
        self.labelled += len(y)
        if self.task == "forecast":
            e = y - p
            self.abs_error += float(np.abs(e).sum())
            self.sq_error += float((e * e).sum())
        else:
            q = np.clip(p, 1e-7, 1 - 1e-7)
            self.log_loss += float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.labelled, 1)
        if self.task == "forecast":
            return {"mae": self.abs_error / n, "rmse": math.sqrt(self.sq_error / n)}
        return {"logloss": self.log_loss / n}

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Rolling:
    """Exponentially weighted mean over events, updated once per batch."""

    def __init__(self, half_life_events: float = 500.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life_events)
        self.value = math.nan

    def update(self, values: np.ndarray) -> float:
        if len(values):
            w = self.decay ** len(values)
            mean = float(values.mean())
            self.value = mean if math.isnan(self.value) else w * self.value + (1 - w) * mean
        return self.value


class Accountant:
    """Adds each batch's outcome to a :class:`RunSummary` and to the Prometheus metrics."""

    def __init__(self, summary: RunSummary, primary: str) -> None:
        self.summary = summary
        self.primary = primary
        self._err = {"mae": Rolling(), "rmse": Rolling(), "logloss": Rolling()}

    def add(
        self, n_raw: int, n_events: int, result: StepResult, dead: list[DeadLetter]
    ) -> None:
        s = self.summary
        s.batches += 1
        s.records += n_raw
        s.events += n_events
        s.predictions += len(result.predictions)
        s.dead_letters += len(dead)
        s.expired += result.expired
        m.EVENTS.labels(outcome="predicted").inc(len(result.predictions))
        m.PREDICTIONS.inc(len(result.predictions))
        m.EVENTS.labels(outcome="expired").inc(result.expired)
        if dead:
            m.EVENTS.labels(outcome="dead_letter").inc(len(dead))
            for d in dead:
                reason = m.dead_letter_reason(d.reason)
                m.DEAD_LETTERS.labels(reason=reason).inc()
                s.dead_letter_reasons[reason] = s.dead_letter_reasons.get(reason, 0) + 1
        scores = result.scores.get(self.primary)
        if scores is not None and len(scores):
            m.EVENTS.labels(outcome="labelled").inc(len(scores))
            s.add_scores(scores.y_true, scores.y_pred)
            e = scores.y_true - scores.y_pred
            if s.task == "forecast":
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="mae").set(
                    self._err["mae"].update(np.abs(e)))
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="rmse").set(
                    math.sqrt(self._err["rmse"].update(e * e)))
            else:
                q = np.clip(scores.y_pred, 1e-7, 1 - 1e-7)
                ll = -(scores.y_true * np.log(q) + (1 - scores.y_true) * np.log(1 - q))
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="logloss").set(
                    self._err["logloss"].update(ll))
