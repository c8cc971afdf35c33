"""Prequential scores of the stages of ``benchmarks/kafka_e2e.py``, and the click records of
stage (e).

A service stage keeps, batch by batch, the scores of the served model that the pipeline
returns (``StepResult.scores``): each scored prediction's event id, label and prediction.
The forecast error of two stages is then compared over exactly the events both scored
(:func:`matched_mae`), whatever share of the stream each read; the click stage gives the
AUC of its scored impressions.

>>> matched_mae({"a": 1.0, "b": 3.0, "c": 5.0}, {"b": 2.0, "c": 2.0, "d": 9.0})
{'events': 2, 'mae': 4.0, 'mae_ref': 2.0, 'only_stage': 1, 'only_ref': 1}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamadapt.datasets import load_dataset
from streamadapt.events import Impression, Label, encode
from streamadapt.pipeline import StepResult
from streamadapt.report import auc

#: Stage (e): mean delay of a click label after its impression (seconds of event time;
#: impressions come ~1 s apart), and the attribution window that sees every click label.
CLICK_DELAY_S = 30.0
ATTRIBUTION_WINDOW_S = 1.5 * CLICK_DELAY_S


class ScoreLog:
    """The prequential scores of one model over a run: give :meth:`add` as (part of) the
    service's ``on_batch``. It keeps references and event ids only, so it costs little
    inside a timed stage."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ids: list[str] = []
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def add(self, result: StepResult) -> None:
        s = result.scores.get(self.model)
        if s is None or not len(s):
            return
        self.ids.extend([x.event_id for x in s.xs])
        self._y.append(s.y_true)
        self._p.append(s.y_pred)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predictions) of every scored prediction, in scoring order."""
        if not self._y:
            return np.empty(0), np.empty(0)
        return np.concatenate(self._y), np.concatenate(self._p)

    def abs_errors(self) -> dict[str, float]:
        """Event id of each scored prediction -> its absolute error."""
        y, p = self.arrays()
        return dict(zip(self.ids, np.abs(y - p).tolist(), strict=True))

    def summary(self, task: str) -> dict[str, Any]:
        """``scored`` and the MAE (forecast) or AUC and click rate (ctr) of the scores."""
        y, p = self.arrays()
        if task == "forecast":
            return {"scored": len(y), "mae": float(np.abs(y - p).mean()) if len(y) else None}
        return {"scored": len(y), "auc": auc(y, p) if len(y) else None,
                "scored_click_rate": float(y.mean()) if len(y) else None}


def matched_mae(stage: dict[str, float], ref: dict[str, float]) -> dict[str, Any]:
    """MAE of ``stage`` and of ``ref`` (event id -> absolute error) over the events both
    scored, and how many each scored that the other did not."""
    common = sorted(stage.keys() & ref.keys())
    a = np.fromiter((stage[k] for k in common), dtype=float, count=len(common))
    b = np.fromiter((ref[k] for k in common), dtype=float, count=len(common))
    return {"events": len(common),
            "mae": float(a.mean()) if len(a) else None,
            "mae_ref": float(b.mean()) if len(b) else None,
            "only_stage": len(stage) - len(common), "only_ref": len(ref) - len(common)}


def click_records(n: int, seed: int = 0, delay_s: float = CLICK_DELAY_S
                  ) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    """The first ``n`` records, in event-time order, of the built-in ``clicks`` stream with
    delayed labels: impressions (label unknown) and a :class:`~streamadapt.events.Label`
    per click ``delay_s * U(0.5, 1.5)`` seconds later, non-clicks left to the attribution
    window (the usual convention). Every record is keyed by its user, labels included
    (their ``key`` field too: docs/kafka.md, keying contract). Returns ``(key, value)``
    records and what they hold."""
    if n <= 0:
        raise ValueError(f"click records: n must be > 0, got {n!r}")
    stream = load_dataset("clicks", seed=seed, n_events=n, delay_s=delay_s)
    user: dict[str, str] = {}
    records: list[tuple[bytes, bytes]] = []
    impressions = labels = clicks = 0
    for e in stream.events:
        if isinstance(e, Impression):
            user[e.event_id] = e.user_id
            impressions += 1
        else:
            assert isinstance(e, Label)
            e = e.model_copy(update={"key": user[e.event_id]})
            labels += 1
            clicks += int(e.label > 0)
        records.append((user[e.event_id].encode(), encode(e)))
        if len(records) >= n:
            break
    return records, {"dataset": "clicks", "seed": seed, "delay_s": delay_s,
                     "attribution_window_s": 1.5 * delay_s, "records": len(records),
                     "impressions": impressions, "labels": labels, "clicks": clicks,
                     "oracle_auc": stream.info.get("oracle_auc")}
