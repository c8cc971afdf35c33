"""The picture of a service run: error of the adapted model against its shadow, drift
detections, adaptations and their outcomes, and throughput.

:class:`RunRecorder` takes one point per micro-batch (``streamadapt run`` calls
:meth:`RunRecorder.add` from its batch callback) and :func:`plot_run` draws:

* top: the rolling prequential error of the served (adapted) model and of its unadapted
  shadow over event time (outside a trial the shadow *is* the served model, so the lines
  part only while an adaptation is under judgement); known drift points as dashed lines;
  the monitor's records as markers along the top: detections, adaptations applied, and
  each adaptation's outcome (kept, rolled back, reset);
* bottom: events per second of wall time, per batch.

>>> import os, tempfile
>>> import numpy as np
>>> rec = RunRecorder("forecast")
>>> for i in range(5):
...     rec.add(timestamp=60.0 * i, events=100, seconds=0.01, y_true=np.ones(100),
...             y_pred=np.full(100, 1.5), shadow_error=0.5)
>>> rec.timestamps[-1], round(rec.adapted[-1], 3), rec.shadow[-1]
(240.0, 0.5, 0.5)
>>> timeline = [{"type": "detection", "timestamp": 120.0},
...             {"type": "outcome", "timestamp": 200.0, "outcome": "kept"}]
>>> path = plot_run(rec, timeline, os.path.join(tempfile.mkdtemp(), "run.png"))
>>> os.path.getsize(path) > 1000
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamadapt.drift.signals import event_loss
from streamadapt.summary import Rolling

__all__ = ["RunRecorder", "plot_run"]


class RunRecorder:
    """One point per micro-batch: event time, rolling adapted and shadow errors, rate.

    Parameters
    ----------
    task
        ``"forecast"`` (absolute error) or ``"ctr"`` (log loss).
    half_life_events
        Half-life of the rolling errors, in scored events (as the Prometheus gauges).
    """

    def __init__(self, task: str, half_life_events: float = 500.0) -> None:
        self.task = task
        self.half_life_events = half_life_events
        self._rolling = Rolling(half_life_events)
        self.timestamps: list[float] = []
        self.adapted: list[float] = []
        self.shadow: list[float] = []
        self.rate: list[float] = []

    def add(self, timestamp: float, events: int, seconds: float, y_true: np.ndarray,
            y_pred: np.ndarray, shadow_error: float) -> None:
        """Record one batch: its last event time, its size and wall time, the labels and
        predictions it scored, and the monitor's rolling shadow error (NaN without one)."""
        if len(y_true):
            self._rolling.update(event_loss(self.task, y_true, y_pred))
        self.timestamps.append(float(timestamp))
        self.adapted.append(self._rolling.value)
        self.shadow.append(float(shadow_error))
        self.rate.append(events / seconds if seconds > 0 else math.nan)


def plot_run(recorder: RunRecorder, timeline: Sequence[dict[str, Any]], path: str | Path,
             drift_points: Sequence[float] = (), title: str = "streamadapt run") -> Path:
    """Write the run's PNG at ``path`` (parent folders are created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from streamadapt.plot import _to_x, draw_timeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = recorder.timestamps
    as_dates = bool(ts) and min(ts) > 1e8
    x = _to_x(ts, as_dates)
    fig, (ax, ax_rate) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    metric = "absolute error" if recorder.task == "forecast" else "log loss"
    ax.plot(x, recorder.adapted, lw=1.3, color="tab:blue", label="served (adapted) model")
    if any(math.isfinite(v) for v in recorder.shadow):
        ax.plot(x, recorder.shadow, lw=1.0, ls="--", color="tab:gray",
                label="frozen shadow (unadapted)")
    drawn = False
    for t in drift_points:
        if ts and ts[0] <= t <= ts[-1]:
            for a in (ax, ax_rate):
                a.axvline(_to_x([t], as_dates)[0], color="black", ls=":", lw=1,
                          label="known drift point" if a is ax and not drawn else None)
            drawn = True
    draw_timeline(ax, list(timeline), as_dates)
    finite = [v for v in recorder.adapted + recorder.shadow if math.isfinite(v)]
    if finite:
        ax.set_ylim(0, max(finite) * 1.25)
    ax.set_ylabel(f"rolling {metric} (half-life {recorder.half_life_events:g} events)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax_rate.plot(x, recorder.rate, lw=0.8, color="tab:green")
    ax_rate.set_ylabel("events / s")
    ax_rate.set_xlabel("event time (UTC)" if as_dates else "event time (s)")
    ax_rate.grid(alpha=0.3)
    if as_dates:
        fig.autofmt_xdate()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
