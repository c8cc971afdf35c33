"""Naive reference models every report should carry: the last value for load, the running
click rate for clicks. A learned model that cannot beat these has learned nothing.

>>> from streamadapt.features import WindowStore
>>> LastValue().predict_one(WindowStore().push("l", 0.0, 7.0))
7.0
>>> m = ClickRate()
>>> m.predict_one(None) if False else round(m._rate(), 2)
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.registry import register
from streamadapt.events import Impression
from streamadapt.features import ForecastInput

__all__ = ["LastValue", "ClickRate"]


@register("last-value", task="forecast", summary="persistence: the next load equals the last",
          baseline=True)
class LastValue(Adapter):
    """Predicts that a link's next load equals its current load. Learns nothing."""

    task = "forecast"
    exact_batch_learning = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        return np.fromiter((x.loads[-1] for x in xs), float, len(xs))

    def _learn_many(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@register("click-rate", task="ctr", summary="the running click rate (Beta(1,1) prior)",
          baseline=True)
class ClickRate(Adapter):
    """Predicts the click rate seen so far, with a Beta(1, 1) prior."""

    task = "ctr"
    exact_batch_learning = True

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._clicks = 0.0
        self._n = 0.0

    def _rate(self) -> float:
        return (self._clicks + 1.0) / (self._n + 2.0)

    def _predict_many(self, xs: Sequence[Impression]) -> np.ndarray:
        return np.full(len(xs), self._rate())

    def _learn_many(self, xs: Sequence[Impression], ys: np.ndarray) -> None:
        self._clicks += float((ys >= 0.5).sum())
        self._n += len(ys)

    def state_dict(self) -> dict[str, Any]:
        return {"clicks": self._clicks, "n": self._n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._clicks = float(state["clicks"])
        self._n = float(state["n"])
