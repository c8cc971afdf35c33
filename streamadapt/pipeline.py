"""The pure pipeline step: predict, emit, join labels, score prequentially, learn.

:class:`Pipeline` holds no I/O. It takes a micro-batch of validated events and returns the
prediction records to emit and the prequential scores of earlier predictions whose labels
arrived in the batch. Several models run side by side on the same events; the ``primary``
one's predictions are emitted.

Label joins
-----------
* ``forecast``: a link's next sample labels the prediction made at its previous sample. When
  every model has ``predict_learn_sequences`` (the liquid forecaster), a micro-batch goes to
  each model in one call: it predicts every sample, in order per link, with its weights as
  they are at the start of the batch, then learns all the labels the batch brings. Otherwise
  a micro-batch holding several samples of one link is processed in *waves* (the i-th
  sample of every link forms wave i; per wave, learn the labels that came, then predict),
  so the result equals one-by-one processing for each link.
* ``ctr``: an :class:`~streamadapt.events.Impression` is predicted first; its label is the
  ``label`` field when present (an inline label, scored right after the prediction) or a
  later :class:`~streamadapt.events.Label` with the same ``event_id``. A prediction whose
  label has not come within ``attribution_window_s`` is resolved by ``missing_label``
  (the window runs on the time of the labels read so far, or of the impressions while no
  label was read, per clock group: a label stream read behind its impressions, as after
  a restore, does not expire them): ``"negative"`` (no click seen means no click, the
  usual convention) or ``"drop"`` (never scored, never learned). A label with no pending
  prediction waits up to ``label_grace_s`` of impression time for its impression (labels
  and impressions come on separate topics and partitions, so a label may be read before
  its impression); then (a duplicate, an expired or unknown id) it becomes a dead letter.

Key state
---------
What belongs to one key (a link's window, its pending prediction and the model's state for
it; a user's pending impressions and waiting labels) can be exported, imported and dropped
(:meth:`Pipeline.export_keys`), so that it moves with the key's Kafka partition while the
models' weights stay with the replica (:mod:`streamadapt.partitions`).

Every prediction is made before its label enters any model: the score is prequential and
there is no label leakage. Scores come back per model as :class:`Scores`.

>>> from streamadapt.adapters.naive import LastValue
>>> from streamadapt.events import LinkLoadSample
>>> p = Pipeline("forecast", {"naive": LastValue()})
>>> out = p.step([LinkLoadSample(event_id=str(i), link_id="a", timestamp=i, load=float(i))
...               for i in range(3)])
>>> [r.prediction for r in out.predictions], out.scores["naive"].y_true.tolist()
([0.0, 1.0, 2.0], [1.0, 2.0])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from streamadapt.adapters.base import Adapter
from streamadapt.events import DeadLetter, Event, Impression, Label, LinkLoadSample, Prediction
from streamadapt.features import ForecastInput, WindowStore

__all__ = ["Pipeline", "Scores", "StepResult", "Monitor", "MISSING_LABEL_POLICIES"]

MISSING_LABEL_POLICIES = ("negative", "drop")


@dataclass(slots=True)
class Scores:
    """Prequential scores of one model: predictions made earlier, labels that just came."""

    xs: list[Any]
    y_true: np.ndarray
    y_pred: np.ndarray
    #: Event time at which each label became known.
    timestamps: np.ndarray
    #: The link (forecast) or user (ctr) of each scored prediction, for grouped metrics.
    keys: list[str]

    def __len__(self) -> int:
        return len(self.xs)


@dataclass(slots=True)
class StepResult:
    predictions: list[Prediction] = field(default_factory=list)
    scores: dict[str, Scores] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Predictions whose label never came within the attribution window.
    expired: int = 0
    #: Predictions replaced by a fallback because a model's output was not finite.
    fallbacks: int = 0


class Monitor(Protocol):
    """Watches the pipeline and may adapt its models (drift detection, test-time adaptation).

    ``before_predict`` sees each unlabelled batch of inputs before the models predict it;
    ``after_learn`` sees the scores after the models learned from them.
    """

    def before_predict(self, pipeline: Pipeline, xs: Sequence[Any]) -> None: ...

    def after_learn(self, pipeline: Pipeline, scores: Mapping[str, Scores]) -> None: ...


def _empty_scores() -> Scores:
    return Scores([], np.empty(0), np.empty(0), np.empty(0), [])


class Pipeline:
    """Runs one or more adapters over micro-batches of events.

    Parameters
    ----------
    task
        ``"forecast"`` or ``"ctr"``.
    models
        Name -> adapter, all for ``task``.
    primary
        Whose predictions are emitted; the first model by default.
    window
        Forecast only: how many recent loads each input carries.
    max_keys
        Bound on remembered links (forecast windows, pending predictions), LRU.
    attribution_window_s
        CTR only: how long (event time) a prediction waits for its label.
    missing_label
        CTR only: ``"negative"`` or ``"drop"``, see the module docstring.
    monitor
        Optional :class:`Monitor` (drift detection and adaptation).
    model_version
        Written into every prediction record.
    """

    def __init__(
        self,
        task: Literal["forecast", "ctr"],
        models: Mapping[str, Adapter],
        primary: str | None = None,
        window: int = 12,
        max_keys: int = 100_000,
        attribution_window_s: float = 3600.0,
        missing_label: Literal["negative", "drop"] = "negative",
        monitor: Monitor | None = None,
        model_version: str = "1",
        label_grace_s: float = 0.0,
    ) -> None:
        if task not in ("forecast", "ctr"):
            raise ValueError(f"unknown task {task!r}; valid choices: forecast, ctr")
        if not models:
            raise ValueError("at least one model is needed")
        for name, model in models.items():
            if model.task != task:
                raise ValueError(f"model {name!r} is a {model.task!r} model, not {task!r}")
        if missing_label not in MISSING_LABEL_POLICIES:
            raise ValueError(
                f"unknown missing_label {missing_label!r}; valid choices: "
                f"{', '.join(MISSING_LABEL_POLICIES)}"
            )
        if attribution_window_s <= 0:
            raise ValueError(f"attribution_window_s must be > 0, got {attribution_window_s}")
        if not label_grace_s >= 0:
            raise ValueError(f"label_grace_s must be >= 0, got {label_grace_s}")
        self.task = task
        self.models: dict[str, Adapter] = dict(models)
        self.primary = primary if primary is not None else next(iter(self.models))
        if self.primary not in self.models:
            raise ValueError(
                f"primary {self.primary!r} is not among the models: {', '.join(self.models)}"
            )
        self.window = window
        self.max_keys = max_keys
        self.attribution_window_s = attribution_window_s
        self.missing_label = missing_label
        self.monitor = monitor
        self.model_version = model_version
        self.label_grace_s = label_grace_s
        #: Labels learned so far (each label once: a replay after a restore does not count
        #: twice, since the state it starts from did not hold them).
        self.labels_learned = 0
        #: Names of the adaptations now in force, written into prediction records.
        self.active_adaptations: tuple[str, ...] = ()
        self.windows = WindowStore(window, max_keys)
        # forecast: link -> (input, predictions per model); ctr: event id -> (input, preds)
        self._pending: OrderedDict[str, tuple[Any, np.ndarray]] = OrderedDict()
        self._clock = -np.inf
        # ctr, per clock group: newest label time (pending impressions expire by it: a
        # label stream read behind its impressions must not see them expire), newest
        # impression time (waiting labels expire by it), pending impressions in order
        self._clocks: dict[int, float] = {}
        self._imp_clocks: dict[int, float] = {}
        self._order: dict[int, OrderedDict[str, None]] = {}
        self._group: dict[str, int] = {}  # pending impression -> its group
        # ctr: labels read before their impression, event id -> (label, time, key, group)
        self._early: OrderedDict[str, tuple[float, float, str | None, int]] = OrderedDict()
        self._parts: dict[str, list[Scores]] = {}  # scores of the step in progress, per wave

    # -- public -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many predictions wait for their label."""
        return len(self._pending)

    def step(self, events: Sequence[Event], groups: Sequence[int] | None = None) -> StepResult:
        """Process one micro-batch of validated events, in order.

        ``groups`` (ctr) gives each event's clock group, its Kafka partition number: the
        attribution window and the label grace run on the event time of each group apart,
        since partitions are read at different paces (a replayed or lagging partition is
        not expired by the time of another). None: one group."""
        result = StepResult()
        if not events:
            return result
        self._parts = {}
        if self.task == "forecast":
            self._step_forecast(events, result)
        else:
            self._step_ctr(events, result, groups)
        for name, parts in self._parts.items():  # several waves in one batch: concatenate
            result.scores[name] = parts[0] if len(parts) == 1 else Scores(
                [x for s in parts for x in s.xs],
                np.concatenate([s.y_true for s in parts]),
                np.concatenate([s.y_pred for s in parts]),
                np.concatenate([s.timestamps for s in parts]),
                [k for s in parts for k in s.keys],
            )
        return result

    # -- shared -----------------------------------------------------------------------------
    def _predict(self, xs: list[Any], result: StepResult) -> np.ndarray:
        if self.monitor is not None:
            self.monitor.before_predict(self, xs)
        names = list(self.models)
        preds = np.empty((len(xs), len(names)))
        base = None
        for j, name in enumerate(names):
            model = self.models[name]
            if name == self.primary:
                preds[:, j], base = model.predict_with_base_many(xs)
            else:
                preds[:, j] = model.predict_many(xs)
        prim = names.index(self.primary)
        if not (np.isfinite(preds).all() and np.isfinite(base).all()):
            base = self._fallback(xs, preds, base, result)
        version = f"{self.primary}:{self.model_version}"
        active = self.active_adaptations
        key_of = _key_of
        result.predictions.extend(
            Prediction(x.event_id, key_of(x), x.timestamp, b, p, version, active)
            for x, p, b in zip(xs, preds[:, prim].tolist(), base.tolist(), strict=True)
        )
        return preds

    def _fallback(
        self, xs: list[Any], preds: np.ndarray, base: np.ndarray, result: StepResult
    ) -> np.ndarray:
        """Replace non-finite model outputs (in place) by a safe value: the current load
        for forecasting, 0.5 for clicks. They are counted in ``StepResult.fallbacks``."""
        if self.task == "forecast":
            safe = np.array([x.loads[-1] for x in xs])
        else:
            safe = np.full(len(xs), 0.5)
        bad = ~np.isfinite(preds)
        result.fallbacks += int(bad.any(axis=1).sum())
        preds[bad] = np.broadcast_to(safe[:, None], preds.shape)[bad]
        base = np.where(np.isfinite(base), base, safe)
        return base

    def _score_and_learn(
        self,
        xs: list[Any],
        preds: list[np.ndarray],
        ys: list[float],
        times: list[float],
    ) -> None:
        if not xs:
            return
        y = np.asarray(ys, dtype=np.float64)
        p = np.vstack(preds)
        t = np.asarray(times, dtype=np.float64)
        keys = [_key_of(x) for x in xs]
        scores = {}
        for j, (name, model) in enumerate(self.models.items()):
            scores[name] = s = Scores(xs, y, p[:, j].copy(), t, keys)
            model.learn_many(xs, y)
            self._parts.setdefault(name, []).append(s)
        self.labels_learned += len(xs)
        if self.monitor is not None:
            self.monitor.after_learn(self, scores)

    # -- forecast -----------------------------------------------------------------------------
    #: Forecast batches go through the models' ``predict_learn_sequences`` when every model
    #: has one (see :meth:`_forecast_sequences`); set False to process waves always.
    forecast_sequences: bool = True

    def _step_forecast(self, events: Sequence[Event], result: StepResult) -> None:
        for e in events:
            if not isinstance(e, LinkLoadSample):
                raise TypeError(f"a forecast pipeline takes LinkLoadSample, got {type(e).__name__}")
        xs = self.windows.push_many(
            [e.link_id for e in events], [e.timestamp for e in events],  # type: ignore[union-attr]
            [e.load for e in events], [e.covariates for e in events],  # type: ignore[union-attr]
            [e.event_id for e in events])
        if self.forecast_sequences and all(
                callable(getattr(m, "predict_learn_sequences", None))
                for m in self.models.values()):
            self._forecast_sequences(xs, result)
        else:
            self._forecast_waves(xs, result)

    def _forecast_waves(self, xs: list[ForecastInput], result: StepResult) -> None:
        """The i-th sample of every link forms wave i; per wave, learn the labels that came
        (each link's previous prediction), then predict: one-by-one processing per link."""
        waves: list[list[ForecastInput]] = []
        seen: dict[str, int] = {}
        for x in xs:
            i = seen.get(x.key, 0)
            seen[x.key] = i + 1
            if i == len(waves):
                waves.append([])
            waves[i].append(x)
        pending = self._pending
        for wave in waves:
            lx, lp, ly, lt = [], [], [], []
            for x in wave:
                hit = pending.pop(x.key, None)
                if hit is not None:
                    lx.append(hit[0])
                    lp.append(hit[1])
                    ly.append(x.last)
                    lt.append(x.timestamp)
            self._score_and_learn(lx, lp, ly, lt)
            preds = self._predict(wave, result)
            for x, row in zip(wave, preds, strict=True):
                pending[x.key] = (x, row)
            while len(pending) > self.max_keys:
                pending.popitem(last=False)

    def _forecast_sequences(self, xs: list[ForecastInput], result: StepResult) -> None:
        """The whole batch at once, for models with ``predict_learn_sequences(xs, lx, ly)``.

        Each model predicts every sample of the batch, in order per link, with its weights
        as they are at the start of the batch (a link's state steps through its samples),
        then learns from all the labels the batch brings: each link's previous prediction
        and every sample of the batch but the link's last. A prediction is still made before
        its label is learned; the result differs from waves only in that the weights move
        once per batch instead of once per wave. The monitor sees the batch's inputs before
        the prediction and its scores after the learning.
        """
        pending = self._pending
        lx: list[ForecastInput] = []
        ly: list[float] = []
        lt: list[float] = []
        held: list[np.ndarray] = []  # predictions made before the batch, per label
        src: list[int] = []  # where each label's prediction is: -1 held, else an index of xs
        last: dict[str, int] = {}
        for i, x in enumerate(xs):
            k = x.key
            j = last.get(k)
            if j is None:
                hit = pending.pop(k, None)
                if hit is not None:
                    lx.append(hit[0])
                    held.append(hit[1])
                    src.append(-1)
                    ly.append(x.last)
                    lt.append(x.timestamp)
            else:
                lx.append(xs[j])
                src.append(j)
                ly.append(x.last)
                lt.append(x.timestamp)
            last[k] = i
        if self.monitor is not None:
            self.monitor.before_predict(self, xs)
        names = list(self.models)
        preds = np.empty((len(xs), len(names)))
        base = None
        for j, name in enumerate(names):
            pred, b = self.models[name].predict_learn_sequences(xs, lx, ly)  # type: ignore[attr-defined]
            preds[:, j] = pred
            if name == self.primary:
                base = b
        if not (np.isfinite(preds).all() and np.isfinite(base).all()):
            base = self._fallback(xs, preds, base, result)
        self._emit(xs, preds[:, names.index(self.primary)], base, result)
        if lx:
            where = np.asarray(src, dtype=np.int64)
            p = np.empty((len(lx), len(names)))
            if held:
                p[where < 0] = np.vstack(held)
            p[where >= 0] = preds[where[where >= 0]]
            y = np.asarray(ly, dtype=np.float64)
            t = np.asarray(lt, dtype=np.float64)
            keys = [x.key for x in lx]
            scores = {}
            for j, name in enumerate(names):
                scores[name] = s = Scores(lx, y, p[:, j].copy(), t, keys)
                self._parts.setdefault(name, []).append(s)
            self.labels_learned += len(lx)
            if self.monitor is not None:
                self.monitor.after_learn(self, scores)
        for k, i in last.items():
            pending[k] = (xs[i], preds[i])
        while len(pending) > self.max_keys:
            pending.popitem(last=False)

    def _emit(self, xs: list[ForecastInput], pred: np.ndarray, base: np.ndarray,
              result: StepResult) -> None:
        """The prediction records of ``xs`` (the primary's final and base predictions)."""
        version = f"{self.primary}:{self.model_version}"
        active = self.active_adaptations
        result.predictions.extend(
            Prediction(x.event_id, x.key, x.timestamp, b, p, version, active)
            for x, p, b in zip(xs, pred.tolist(), base.tolist(), strict=True)
        )

    # -- ctr ----------------------------------------------------------------------------------
    def _step_ctr(self, events: Sequence[Event], result: StepResult,
                  groups: Sequence[int] | None) -> None:
        impressions, imp_groups = [], []
        labels: list[tuple[str, float, float, str | None, int]] = []
        clocks, imp_clocks = self._clocks, self._imp_clocks
        touched: set[int] = set()
        for i, e in enumerate(events):
            g = 0 if groups is None else groups[i]
            touched.add(g)
            if isinstance(e, Impression):
                impressions.append(e)
                imp_groups.append(g)
                if e.label is not None:
                    labels.append((e.event_id, float(e.label), e.timestamp, e.user_id, g))
                    if e.timestamp > clocks.get(g, -np.inf):
                        clocks[g] = e.timestamp
                if e.timestamp > imp_clocks.get(g, -np.inf):
                    imp_clocks[g] = e.timestamp
            elif isinstance(e, Label):
                labels.append((e.event_id, e.label, e.timestamp, e.key, g))
                if e.timestamp > clocks.get(g, -np.inf):
                    clocks[g] = e.timestamp
            else:
                raise TypeError(f"a ctr pipeline takes Impression or Label, got {type(e).__name__}")
            if e.timestamp > self._clock:
                self._clock = e.timestamp
        pending, early, group_of = self._pending, self._early, self._group
        if impressions:
            preds = self._predict(impressions, result)
            for x, row, g in zip(impressions, preds, imp_groups, strict=True):
                eid = x.event_id
                if eid in pending:  # a duplicate impression replaces the first
                    self._order[group_of[eid]].pop(eid, None)
                pending[eid] = (x, row)
                pending.move_to_end(eid)
                group_of[eid] = g
                self._order.setdefault(g, OrderedDict())[eid] = None
                if early and eid in early:  # its label came first
                    y, ts, key, lg = early.pop(eid)
                    labels.append((eid, y, ts, key, lg))
        lx, lp, ly, lt = [], [], [], []
        grace = self.label_grace_s
        for event_id, y, ts, key, g in labels:
            hit = pending.pop(event_id, None)
            if hit is not None and groups is not None and group_of[event_id] != g:
                pending[event_id] = hit  # still waits for a well-keyed label
                result.dead_letters.append(_keyed_wrongly(
                    event_id, y, _key_of(hit[0]), group_of[event_id], g))
                continue
            if hit is None:
                if grace > 0 and ts + grace >= imp_clocks.get(g, -np.inf):
                    early[event_id] = (y, ts, key, g)
                    early.move_to_end(event_id)
                else:
                    result.dead_letters.append(_orphan(event_id, y))
                continue
            self._order[group_of.pop(event_id)].pop(event_id, None)
            lx.append(hit[0])
            lp.append(hit[1])
            ly.append(y)
            lt.append(ts)
        if early:
            late = [eid for eid, (_, ts, _, g) in early.items()
                    if g in touched and ts + grace < imp_clocks.get(g, -np.inf)]
            while len(early) - len(late) > self.max_keys:
                late.append(next(eid for eid in early if eid not in set(late)))
            for eid in late:
                y = early.pop(eid)[0]
                result.dead_letters.append(_orphan(eid, y))
        window = self.attribution_window_s
        for g in sorted(touched):
            order = self._order.get(g)
            horizon = clocks.get(g, imp_clocks.get(g, -np.inf)) - window
            while order:
                eid = next(iter(order))
                x, row = pending[eid]
                if x.timestamp >= horizon:
                    break
                self._expire(eid, result, lx, lp, ly, lt)
        while len(pending) > self.max_keys:
            self._expire(next(iter(pending)), result, lx, lp, ly, lt)
        self._score_and_learn(lx, lp, ly, lt)

    def _expire(self, eid: str, result: StepResult, lx: list, lp: list, ly: list,
                lt: list) -> None:
        """A pending impression whose label did not come: resolved by ``missing_label``."""
        x, row = self._pending.pop(eid)
        g = self._group.pop(eid)
        self._order[g].pop(eid, None)
        result.expired += 1
        if self.missing_label == "negative":
            lx.append(x)
            lp.append(row)
            ly.append(0.0)
            lt.append(self._clocks.get(g, self._clock))

    # -- key state ----------------------------------------------------------------------------
    def pending_key(self, event_id: str) -> str | None:
        """The key (user) of the impression ``event_id`` waiting for its label, if any."""
        hit = self._pending.get(event_id) if self.task == "ctr" else None
        return None if hit is None else _key_of(hit[0])

    def keys(self) -> set[str]:
        """Every key the pipeline holds state for (windows, pending, waiting labels)."""
        out = set(self.windows._loads)
        out.update(_key_of(x) for x, _ in self._pending.values())
        out.update(v[2] for v in self._early.values() if v[2] is not None)
        return out

    def _dump_pending(self, eids: Sequence[str]) -> dict[str, Any]:
        pend = [self._pending[e] for e in eids]
        return {
            "pending_keys": list(eids),
            "pending_inputs": [_dump_input(x) for x, _ in pend],
            "pending_preds": np.vstack([r for _, r in pend]) if pend else np.empty((0, 0)),
            "pending_groups": [self._group.get(e, 0) for e in eids],
        }

    def _load_pending(self, state: dict[str, Any]) -> None:
        """Add the pending predictions of ``state`` (kept in time order per group)."""
        preds = np.asarray(state["pending_preds"], dtype=np.float64)
        groups = state.get("pending_groups") or [0] * len(state["pending_keys"])
        touched = set()
        for i, (eid, x, g) in enumerate(zip(state["pending_keys"], state["pending_inputs"],
                                            groups, strict=True)):
            self._pending[eid] = (_load_input(x), preds[i])
            if self.task == "ctr":
                self._group[eid] = int(g)
                self._order.setdefault(int(g), OrderedDict())[eid] = None
                touched.add(int(g))
        for g in touched:  # expiry scans each group's impressions oldest first
            order = self._order[g]
            self._order[g] = OrderedDict.fromkeys(
                sorted(order, key=lambda e: self._pending[e][0].timestamp))

    def _drop_pending(self, eids: Collection[str]) -> None:
        for e in eids:
            self._pending.pop(e, None)
            g = self._group.pop(e, None)
            if g is not None:
                self._order[g].pop(e, None)

    def export_keys(self, keys: Collection[str], group: int | None = None) -> dict[str, Any]:
        """The state of ``keys``: windows, pending predictions, waiting labels and each
        model's per-key state (and the clocks of ``group``, their partition). Weights,
        detectors and error memories are not in it."""
        keys = set(keys)
        eids = [k for k, v in self._pending.items() if _key_of(v[0]) in keys]
        clocks = [] if group is None else [[group, self._clocks.get(group, -np.inf),
                                            self._imp_clocks.get(group, -np.inf)]]
        return {
            "keys": sorted(keys),
            "windows": self.windows.export_keys(keys),
            "model_names": list(self.models),
            "models": {name: m.export_keys(keys) for name, m in self.models.items()},
            **self._dump_pending(eids),
            "early": [[eid, y, ts, key, g] for eid, (y, ts, key, g) in self._early.items()
                      if key in keys or (key is None and g == group)],
            "clocks": clocks,
        }

    def import_keys(self, state: dict[str, Any]) -> None:
        """Take in :meth:`export_keys`' state (a partition's keys), overwriting those keys."""
        self.windows.import_keys(state["windows"])
        for name, m in self.models.items():
            part = state["models"].get(name)
            if part is not None:
                m.import_keys(part)
        if list(state["model_names"]) == list(self.models):  # else they cannot be matched
            self._drop_pending([e for e in state["pending_keys"] if e in self._pending])
            self._load_pending(state)
        for eid, y, ts, key, g in state["early"]:
            self._early[str(eid)] = (float(y), float(ts), key, int(g))
        for g, c, ic in state.get("clocks", []):
            self._clocks[int(g)], self._imp_clocks[int(g)] = float(c), float(ic)

    def drop_keys(self, keys: Collection[str] | None = None, group: int | None = None) -> None:
        """Forget the state of ``keys`` (of every key when None) and the clocks of
        ``group``; weights stay."""
        self.windows.drop_keys(keys)
        for m in self.models.values():
            m.drop_keys(keys)
        if keys is None:
            self._pending.clear()
            self._early.clear()
            self._group.clear()
            self._order.clear()
            self._clocks.clear()
            self._imp_clocks.clear()
            return
        keys = set(keys)
        self._drop_pending([k for k, v in self._pending.items() if _key_of(v[0]) in keys])
        for k in [k for k, v in self._early.items()
                  if v[2] in keys or (v[2] is None and v[3] == group)]:
            del self._early[k]
        if group is not None:
            self._clocks.pop(group, None)
            self._imp_clocks.pop(group, None)
            if not self._order.get(group):
                self._order.pop(group, None)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self, include_keys: bool = True) -> dict[str, Any]:
        """Models, windows, the clocks and the predictions still waiting for labels (so a
        label that arrives after a restart still finds its prediction). Without
        ``include_keys``, the windows, pending predictions, waiting labels and per-group
        clocks are left out (a replica's weights, whose keys' state is saved with their
        partitions)."""
        return {
            "labels_learned": self.labels_learned,
            "clocks": [[g, c, self._imp_clocks.get(g, -np.inf)]
                       for g, c in self._clocks.items()] if include_keys else [],
            "early": [[eid, y, ts, key, g] for eid, (y, ts, key, g) in self._early.items()]
            if include_keys else [],
            "models": {name: m.state_dict() for name, m in self.models.items()},
            "model_names": list(self.models),
            "windows": self.windows.state_dict() if include_keys
            else self.windows.export_keys(()),
            "clock": float(self._clock),
            "model_version": self.model_version,
            **self._dump_pending(list(self._pending) if include_keys else []),
            "monitor": self.monitor.state_dict() if hasattr(self.monitor, "state_dict")
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; models absent from the state keep their weights."""
        for name, m in self.models.items():
            if name in state["models"]:
                m.load_state_dict(state["models"][name])
        self._load_monitor(state.get("monitor"))
        self.windows.load_state_dict(state["windows"])
        self._clock = float(state["clock"])
        self.labels_learned = int(state.get("labels_learned", 0))
        self._early = OrderedDict(
            (str(e[0]), (float(e[1]), float(e[2]), e[3], int(e[4]) if len(e) > 4 else 0))
            for e in state.get("early", [])
        )
        clocks = state.get("clocks")
        if clocks is None:  # one clock (an older state)
            clocks = [[0, self._clock, self._clock]] if self.task == "ctr" else []
        self._clocks = {int(g): float(c) for g, c, _ in clocks}
        self._imp_clocks = {int(g): float(ic) for g, _, ic in clocks}
        self.model_version = str(state["model_version"])
        self._pending.clear()
        self._group.clear()
        self._order.clear()
        if list(state["model_names"]) != list(self.models):
            return  # other models: their pending predictions cannot be matched up
        self._load_pending(state)

    def _load_monitor(self, state: dict[str, Any] | None) -> None:
        """Restore the monitor's state; without one (no monitor then, or none now), no
        adaptation is in force, so a learning rate saved mid-boost goes back to its base."""
        monitor = self.monitor
        if state is not None and hasattr(monitor, "load_state_dict"):
            monitor.load_state_dict(state, self)  # type: ignore[union-attr]
            return
        self.active_adaptations = ()
        for m in self.models.values():
            if hasattr(m, "set_lr_scale"):
                m.set_lr_scale(1.0)


def _dump_input(x: Any) -> dict[str, Any]:
    if isinstance(x, Impression):
        return {"type": "impression", **x.model_dump()}
    return {
        "type": "window", "key": x.key, "timestamp": x.timestamp, "loads": list(x.loads),
        "dts": list(x.dts), "covariates": dict(x.covariates), "event_id": x.event_id,
    }


def _load_input(d: dict[str, Any]) -> Any:
    d = dict(d)
    if d.pop("type") == "impression":
        return Impression.model_validate(d)
    return ForecastInput(d["key"], float(d["timestamp"]), tuple(d["loads"]), tuple(d["dts"]),
                         d["covariates"], d["event_id"])


def _orphan(event_id: str, y: float) -> DeadLetter:
    return DeadLetter(
        f'{{"event_id": "{event_id}", "label": {y}}}'.encode(),
        "orphan label: no pending prediction for this event id (duplicate, expired or "
        "unknown)",
    )


def _keyed_wrongly(event_id: str, y: float, key: str, imp_group: int, group: int) -> DeadLetter:
    return DeadLetter(
        f'{{"event_id": "{event_id}", "label": {y}}}'.encode(),
        f"label keyed wrongly: key {key!r} has its impressions on partition {imp_group}, "
        f"the label came on partition {group}; produce labels with the impression's key on "
        "a topic with as many partitions",
    )


def _key_of(x: Any) -> str:
    return x.user_id if isinstance(x, Impression) else x.key


