"""Prequential evaluation: several models side by side over the same events, in one pass.

:func:`evaluate` feeds a :class:`~streamadapt.datasets.Stream` through one
:class:`~streamadapt.pipeline.Pipeline` holding every model, so each model predicts every
event before its label is known and learns from it afterwards (test-then-train; Gama et al.,
"On evaluating stream learning algorithms", Machine Learning 90, 2013). The scores go to a
:class:`~streamadapt.report.PrequentialAccumulator` per model. Each model's ``predict`` and
``learn`` calls are timed to report its throughput. The result is a JSON-serialisable report
whose schema is documented in ``docs/evaluate.md``.

Records in the stream that are :class:`~streamadapt.events.DeadLetter` (rows a file reader
could not validate) are counted and reported, never fed to a model.

>>> from streamadapt.adapters.naive import LastValue
>>> from streamadapt.datasets import Stream
>>> from streamadapt.events import LinkLoadSample
>>> events = [LinkLoadSample(event_id=str(i), link_id="a", timestamp=60.0 * i,
...                          load=float(i % 3)) for i in range(30)]
>>> report = evaluate(Stream("toy", "forecast", events), {"naive": LastValue()},
...                   progress=False)
>>> report["n_events"], report["models"]["naive"]["n"], round(report["models"]["naive"]["mae"], 3)
(30, 29, 1.31)
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from streamadapt.adapters.base import Adapter
from streamadapt.datasets import Stream
from streamadapt.events import DeadLetter
from streamadapt.pipeline import Monitor, Pipeline
from streamadapt.report import PrequentialAccumulator, slot_edges

__all__ = ["evaluate", "ModelTimer", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
#: How many dead letters the report quotes in full.
MAX_DEAD_LETTER_SAMPLES = 20

_TIMED = {"predict_many": "predict", "predict_with_base_many": "predict", "learn_many": "learn"}


class ModelTimer:
    """Times an adapter's public ``predict``/``learn`` calls without wrapping the object.

    :meth:`install` shadows the methods on the instance (so monitors still see the very
    same adapter); :meth:`remove` restores it. Nested calls (``predict_with_base_many``
    calling ``predict_many``) are counted once.
    """

    def __init__(self, model: Adapter) -> None:
        self.model = model
        self.seconds = {"predict": 0.0, "learn": 0.0}
        self.counts = {"predict": 0, "learn": 0}
        self._depth = 0
        self._saved: dict[str, Any] = {}

    def _wrap(self, fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        clock = time.perf_counter

        def timed(xs: Any, *args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(xs, *args, **kwargs)
            self._depth += 1
            t0 = clock()
            try:
                return fn(xs, *args, **kwargs)
            finally:
                self.seconds[kind] += clock() - t0
                self.counts[kind] += len(xs)
                self._depth -= 1

        return timed

    def install(self) -> ModelTimer:
        inst = vars(self.model)
        for name, kind in _TIMED.items():
            if name in inst:
                self._saved[name] = inst[name]
            setattr(self.model, name, self._wrap(getattr(self.model, name), kind))
        return self

    def remove(self) -> None:
        inst = vars(self.model)
        for name in _TIMED:
            inst.pop(name, None)
        inst.update(self._saved)
        self._saved = {}

    @property
    def events_per_second(self) -> float | None:
        total = self.seconds["predict"] + self.seconds["learn"]
        return self.counts["predict"] / total if total > 0 else None


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples and odd objects (as strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def _progress(enabled: bool, total: int | None, label: str) -> Any:
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                    transient=False)
    task_id = prog.add_task(label, total=total)
    return prog, task_id


def evaluate(
    stream: Stream,
    models: Mapping[str, Adapter],
    *,
    batch_size: int = 256,
    window: int = 12,
    attribution_window_s: float = 3600.0,
    missing_label: str = "negative",
    slots: int = 10,
    slot_seconds: float | None = None,
    monitor: Monitor | None = None,
    progress: bool = True,
    limit: int | None = None,
    primary: str | None = None,
) -> dict[str, Any]:
    """Run ``models`` side by side over ``stream`` and return the report dict.

    Parameters
    ----------
    stream
        The events, in time order; :class:`~streamadapt.events.DeadLetter` items are counted.
    models
        Name -> adapter, all for ``stream.task``.
    batch_size
        Micro-batch size handed to :meth:`Pipeline.step`.
    window, attribution_window_s, missing_label
        Passed to :class:`~streamadapt.pipeline.Pipeline`.
    slots, slot_seconds
        ``slots`` equal slots over the stream's event-time span, or fixed-width slots.
    monitor
        Optional drift monitor; its ``timeline`` (if any) is copied into ``report["drift"]``.
    progress
        Show a progress bar.
    limit
        Stop after this many records.
    primary
        The model whose predictions the pipeline emits (the first by default).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    pipe = Pipeline(stream.task, models, primary=primary, window=window,  # type: ignore[arg-type]
                    attribution_window_s=attribution_window_s,
                    missing_label=missing_label,  # type: ignore[arg-type]
                    monitor=monitor)
    accs = {name: PrequentialAccumulator(stream.task) for name in models}
    timers = {name: ModelTimer(m) for name, m in models.items()}
    records: Iterable[Any] = stream.events
    total = stream.n_events
    if limit is not None:
        records = islice(records, limit)
        total = limit if total is None else min(total, limit)
    n_events = n_records = expired = 0
    dead_reasons: Counter[str] = Counter()
    dead_samples: list[dict[str, Any]] = []
    t_first, t_last = math.inf, -math.inf
    prog, task_id = _progress(progress, total, f"evaluate {stream.name}")
    t0 = time.perf_counter()
    for timer in timers.values():
        timer.install()
    try:
        with prog:
            for batch in _batches(records, batch_size):
                events = []
                dead = []
                for rec in batch:
                    (dead if isinstance(rec, DeadLetter) else events).append(rec)
                if events:
                    t_first = min(t_first, events[0].timestamp)
                    t_last = max(t_last, max(e.timestamp for e in events))
                    res = pipe.step(events)
                    dead.extend(res.dead_letters)
                    expired += res.expired
                    for name, s in res.scores.items():
                        accs[name].update(s.y_true, s.y_pred, s.timestamps, s.keys)
                for d in dead:
                    dead_reasons[d.reason.split(":")[0]] += 1
                    if len(dead_samples) < MAX_DEAD_LETTER_SAMPLES:
                        dead_samples.append(d.to_dict())
                n_events += len(events)
                n_records += len(batch)
                prog.advance(task_id, len(batch))
    finally:
        for timer in timers.values():
            timer.remove()
    wall = time.perf_counter() - t0

    edges = slot_edges(t_first, t_last, slots, slot_seconds) if n_events else np.empty(0)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": stream.name,
        "task": stream.task,
        "primary": pipe.primary,
        "n_records": n_records,
        "n_events": n_events,
        "dead_letters": sum(dead_reasons.values()),
        "dead_letter_reasons": dict(dead_reasons),
        "dead_letter_samples": dead_samples,
        "expired": expired,
        "unlabelled_at_end": pipe.pending,
        "time_span": {"start": t_first if n_events else None,
                      "end": t_last if n_events else None},
        "slot_edges": edges.tolist(),
        "drift_points": list(stream.drift_points),
        "wall_seconds": wall,
        "events_per_second": n_events / wall if wall > 0 else None,
        "config": {"batch_size": batch_size, "window": window,
                   "attribution_window_s": attribution_window_s,
                   "missing_label": missing_label, "slots": slots,
                   "slot_seconds": slot_seconds, "limit": limit},
        "info": stream.info,
        "models": {},
    }
    for name, acc in accs.items():
        timer = timers[name]
        entry = acc.summary(edges=edges)
        entry.update({
            "adapter": repr(models[name]),
            "predict_seconds": timer.seconds["predict"],
            "learn_seconds": timer.seconds["learn"],
            "events_per_second": timer.events_per_second,
        })
        report["models"][name] = entry
    if monitor is not None:
        timeline = list(getattr(monitor, "timeline", []) or [])
        kinds = Counter(str(e.get("type", "")) for e in timeline)
        outcomes = Counter(str(e.get("outcome")) for e in timeline
                           if e.get("type") == "outcome")
        report["drift"] = {
            "monitor": type(monitor).__name__,
            "primary": pipe.primary,
            "detections": kinds.get("detection", 0),
            "adaptations": kinds.get("adaptation", 0),
            "skipped": sum(len(e.get("skipped", [])) for e in timeline
                           if e.get("type") == "detection"),
            "kept": outcomes.get("kept", 0),
            "rolled_back": outcomes.get("rolled_back", 0),
            "reset": outcomes.get("reset", 0),
            "timeline": timeline,
        }
    return _jsonable(report)
