"""The signals a drift monitor watches: the per-event loss and input statistics.

* ``loss``: concept drift shows as a rise of the primary model's prequential loss.
  :func:`event_loss` is the loss that judges adaptations (forecast: absolute error; click:
  log loss, probabilities clipped to ``[1e-6, 1 - 1e-6]``). :func:`drift_loss` is the one
  detectors watch: the same log loss for clicks, but for forecasts the symmetric relative
  error ``|y - p| / (|y| + |p|)``, bounded in ``[0, 1]``, so that a link's load level and
  the daily load cycle do not show up as drift.
* input statistics: covariate drift shows in the inputs before any label comes. Each
  statistic maps one input to one float; :data:`INPUT_STATS` lists them per task.

>>> import numpy as np
>>> event_loss("forecast", np.array([1.0, 2.0]), np.array([1.5, 2.0])).tolist()
[0.5, 0.0]
>>> round(float(event_loss("ctr", np.array([1.0]), np.array([0.5]))[0]), 4)
0.6931
>>> from streamadapt.features import WindowStore
>>> x = WindowStore(window=3).push("a", 0.0, 3.0)
>>> input_stat("forecast", "log_load")([x]).round(4).tolist()
[1.3863]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamadapt.events import Impression
from streamadapt.features import ForecastInput

__all__ = ["event_loss", "drift_loss", "input_stat", "INPUT_STATS"]

_EPS = 1e-6


def event_loss(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-event loss: absolute error (forecast) or log loss (ctr)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if task == "forecast":
        return np.abs(y - p)
    if task == "ctr":
        p = np.clip(p, _EPS, 1 - _EPS)
        return -(y * np.log(p) + (1 - y) * np.log1p(-p))
    raise ValueError(f"unknown task {task!r}; valid choices: forecast, ctr")


def drift_loss(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-event loss watched by detectors (see the module docstring).

    >>> drift_loss("forecast", np.array([100.0, 0.0]), np.array([50.0, 0.0])).round(3).tolist()
    [0.333, 0.0]
    """
    if task == "forecast":
        y = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(y_pred, dtype=np.float64)
        den = np.abs(y) + np.abs(p)
        return np.divide(np.abs(y - p), den, out=np.zeros_like(den), where=den > 1e-12)
    return event_loss(task, y_true, y_pred)


def _log_load(x: ForecastInput) -> float:
    return math.log1p(max(x.loads[-1], 0.0))


def _relative_change(x: ForecastInput) -> float:
    m = sum(x.loads) / len(x.loads)
    return (x.loads[-1] - m) / (abs(m) + 1e-9)


def _numeric_mean(x: Impression) -> float:
    return sum(x.numeric.values()) / len(x.numeric) if x.numeric else 0.0


def _numeric_abs_mean(x: Impression) -> float:
    return sum(abs(v) for v in x.numeric.values()) / len(x.numeric) if x.numeric else 0.0


#: Input statistics by task and name.
INPUT_STATS: dict[str, dict[str, Callable[[Any], float]]] = {
    "forecast": {
        "log_load": _log_load,
        "load": lambda x: float(x.loads[-1]),
        "relative_change": _relative_change,
    },
    "ctr": {
        "numeric_mean": _numeric_mean,
        "numeric_abs_mean": _numeric_abs_mean,
    },
}


def input_stat(task: str, name: str) -> Callable[[Sequence[Any]], np.ndarray]:
    """A batch function computing input statistic ``name`` of ``task``."""
    if task not in INPUT_STATS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(INPUT_STATS)}")
    stats = INPUT_STATS[task]
    if name not in stats:
        raise ValueError(
            f"unknown {task} input statistic {name!r}; valid choices: {', '.join(stats)}"
        )
    fn = stats[name]
    return lambda xs: np.fromiter((fn(x) for x in xs), float, len(xs))
