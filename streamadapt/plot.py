"""PNG plots of an evaluation report (matplotlib, Agg backend, no display needed).

:func:`plot_report` draws from the report dict alone, so a saved ``report.json`` can be
plotted again later. Top panel: each model's rolling error over event time (MAE for
forecasts, logloss for clicks), known drift points as dashed vertical lines and the
monitor's timeline (detections, adaptations, outcomes) as markers along the top. Bottom
panel: one metric per chronological slot (MAE or AUC) for every model.

>>> import os, tempfile
>>> report = {"dataset": "toy", "task": "forecast", "drift_points": [5.0],
...           "models": {"m": {"rolling": {"metric": "mae", "window": 2,
...                                        "timestamps": [1.0, 9.0], "values": [1.0, 2.0]},
...                            "slots": [{"start": 0.0, "end": 10.0, "mae": 1.5}]}}}
>>> path = plot_report(report, os.path.join(tempfile.mkdtemp(), "r.png"))
>>> os.path.getsize(path) > 1000
True
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_report", "draw_timeline", "SLOT_METRIC"]

#: The per-slot metric drawn in the lower panel, per task.
SLOT_METRIC = {"forecast": "mae", "ctr": "auc"}
_LABELS = {"mae": "MAE", "logloss": "logloss", "auc": "AUC", "rmse": "RMSE"}
#: Marker style of each monitor timeline record: ``(type, outcome)`` -> marker, colour,
#: legend label, height. Adaptations are records of a change actually applied (skipped
#: actions are part of the detection record and draw nothing of their own); outcomes are
#: drawn by kind.
_MARKERS = {
    ("detection", None): ("v", "tab:red", "drift detected", 0.97),
    ("adaptation", None): ("^", "tab:blue", "adaptation applied", 0.93),
    ("outcome", "kept"): ("o", "tab:green", "adaptation kept", 0.89),
    ("outcome", "rolled_back"): ("X", "tab:orange", "adaptation rolled back", 0.89),
    ("outcome", "reset"): ("X", "tab:purple", "adaptation reset (collapse)", 0.89),
}
#: Timestamps above this are treated as unix seconds and shown as dates.
_UNIX_FROM = 1e8


def _to_x(ts: Sequence[float], as_dates: bool) -> list[Any]:
    if not as_dates:
        return list(ts)
    utc = dt.UTC
    return [dt.datetime.fromtimestamp(t, tz=utc) for t in ts]


def _maybe_log(ax: Any, series: Sequence[Sequence[float]]) -> None:
    """Log scale when one series dwarfs another (a diverging model would flatten the rest)."""
    tops = [max(v) for v in series if v]
    lows = [sorted(v)[len(v) // 2] for v in series if v]
    if tops and min(lows) > 0 and max(tops) > 100 * min(lows):
        ax.set_yscale("log")


def draw_timeline(ax: Any, timeline: Sequence[dict[str, Any]], as_dates: bool = False,
                  x: str = "timestamp") -> None:
    """Markers along the top of ``ax`` for the monitor's records (see :data:`_MARKERS`);
    ``x`` names the record field used as the horizontal position."""
    for (kind, outcome), (marker, color, label, height) in _MARKERS.items():
        xs = [e[x] for e in timeline if e.get("type") == kind
              and (outcome is None or e.get("outcome") == outcome)
              and isinstance(e.get(x), int | float)]
        if xs:
            ax.scatter(_to_x(xs, as_dates), [height] * len(xs), marker=marker, color=color,
                       s=40, transform=ax.get_xaxis_transform(), label=label, zorder=5,
                       clip_on=False)


def plot_report(report: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Write the report's plot as a PNG at ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    task = report.get("task", "forecast")
    models = report.get("models", {})
    stamps = [t for m in models.values() for t in m.get("rolling", {}).get("timestamps", [])]
    as_dates = bool(stamps) and min(stamps) > _UNIX_FROM
    fig, (ax, ax_slots) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    metric = "error"
    for name, m in models.items():
        roll = m.get("rolling") or {}
        if roll.get("timestamps"):
            metric = roll.get("metric", metric)
            ax.plot(_to_x(roll["timestamps"], as_dates), roll["values"], lw=1.2,
                    label=f"{name}")
    _maybe_log(ax, [m.get("rolling", {}).get("values", []) for m in models.values()])
    window = next((m["rolling"].get("window") for m in models.values() if m.get("rolling")), "")
    ax.set_ylabel(f"rolling {_LABELS.get(metric, metric)} (last {window} scores)")
    lo = min(stamps) if stamps else None
    hi = max(stamps) if stamps else None
    drawn = False
    for t in report.get("drift_points", []):
        if lo is not None and not lo <= t <= hi:
            continue
        for a in (ax, ax_slots):
            a.axvline(_to_x([t], as_dates)[0], color="black", ls="--", lw=1, alpha=0.7,
                      label="known drift point" if (a is ax and not drawn) else None)
        drawn = True
    timeline = (report.get("drift") or {}).get("timeline") or []
    draw_timeline(ax, timeline, as_dates)
    ax.grid(alpha=0.3)
    if models or drawn or timeline:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    slot_metric = SLOT_METRIC.get(task, "mae")
    for name, m in models.items():
        slots = [s for s in m.get("slots", []) if s.get(slot_metric) is not None]
        if slots:
            mids = [(s["start"] + s["end"]) / 2 for s in slots]
            ax_slots.plot(_to_x(mids, as_dates), [s[slot_metric] for s in slots],
                          marker="o", ms=4, lw=1, label=name)
    if timeline:  # room above the lines for the marker rows
        ax.set_ylim(top=ax.get_ylim()[1] * (1.6 if ax.get_yscale() == "log" else 1.15))
    _maybe_log(ax_slots, [[s[slot_metric] for s in m.get("slots", [])
                           if s.get(slot_metric) is not None] for m in models.values()])
    ax_slots.set_ylabel(f"{_LABELS.get(slot_metric, slot_metric)} per time slot")
    ax_slots.set_xlabel("event time (UTC)" if as_dates else "event time (s)")
    ax_slots.grid(alpha=0.3)
    if as_dates:
        fig.autofmt_xdate()
    fig.suptitle(title or f"{report.get('dataset', '')}: prequential {task} evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
