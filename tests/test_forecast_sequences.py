"""Forecast micro-batches as sequences: one call per model and batch, several samples of a
link unrolled in order, against the wave-by-wave path.

Tolerance: the sequence path predicts a batch with the weights as they are at its start and
learns all its labels afterwards, where waves learn between waves. With learning off both
paths give the same predictions up to float rounding (rtol 1e-5); with learning on, the
prequential MAE over the Abilene failure scenario stays within 1 % of the wave path's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.adapters.base import Adapter
from streamadapt.adapters.liquid import LiquidForecaster
from streamadapt.adapters.naive import LastValue
from streamadapt.datasets.linkload import linkload_stream
from streamadapt.features import ForecastInput, WindowStore
from streamadapt.pipeline import Pipeline, Scores

BATCH = 256


def _events(n_steps: int = 300, seed: int = 0) -> list[Any]:
    return list(linkload_stream(seed=seed, n_steps=n_steps, severity="drastic").events)


def _run(pipe: Pipeline, events: Sequence[Any], batch: int = BATCH
         ) -> tuple[dict[str, float], float]:
    """Predictions by event id and the primary's prequential MAE."""
    preds: dict[str, float] = {}
    err, n = 0.0, 0
    for i in range(0, len(events), batch):
        out = pipe.step(events[i:i + batch])
        preds.update((r.event_id, r.prediction) for r in out.predictions)
        s = out.scores.get(pipe.primary)
        if s is not None:
            err += float(np.abs(s.y_pred - s.y_true).sum())
            n += len(s)
    return preds, err / max(n, 1)


def _pipe(sequences: bool, **params: Any) -> Pipeline:
    p = Pipeline("forecast", {"liquid": LiquidForecaster(seed=0, **params)})
    p.forecast_sequences = sequences
    return p


def test_with_learning_off_sequences_predict_what_waves_predict():
    events = _events(300)
    cut = 10 * BATCH
    trained = _pipe(True)
    _run(trained, events[:cut])  # trained weights, so that the hidden states matter
    state = state_io.dumps(trained.state_dict())
    out = {}
    for sequences in (True, False):
        pipe = _pipe(sequences)
        pipe.load_state_dict(state_io.loads(state))
        pipe.models["liquid"].update_every = 10**9  # learning off
        out[sequences], _ = _run(pipe, events[cut:])
    seq, wav = out[True], out[False]
    assert seq.keys() == wav.keys() and len(seq) == len(events) - cut
    ids = sorted(seq)
    a, b = np.array([seq[i] for i in ids]), np.array([wav[i] for i in ids])
    persistence = np.array([e.load for e in events[cut:]])
    assert np.abs(a - persistence).max() > 0.1  # not the untrained model's persistence
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sequences_stay_within_one_percent_of_waves_on_the_failure_scenario():
    events = _events(1000)
    _, mae_seq = _run(_pipe(True), events)
    _, mae_wav = _run(_pipe(False), events)
    assert abs(mae_seq - mae_wav) <= 0.01 * mae_wav, (mae_seq, mae_wav)


class _Sequential(Adapter):
    """Learns a map (link, input time) -> next load and predicts from it; records the order
    of its calls. If a label reached it before its prediction, it would score perfectly."""

    task = "forecast"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.seen: dict[tuple[str, float], float] = {}
        self.calls: list[tuple[int, int]] = []

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        return np.array([self.seen.get((x.key, x.timestamp), 0.0) for x in xs])

    def _learn_many(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        for x, y in zip(xs, ys, strict=True):
            self.seen[(x.key, x.timestamp)] = float(y)

    def predict_learn_sequences(self, xs: Sequence[ForecastInput],
                                lx: Sequence[ForecastInput], ly: Sequence[float]
                                ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((len(xs), len(lx)))
        pred = self.predict_many(xs)
        self.learn_many(lx, np.asarray(ly))
        return pred, pred

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Hooks:
    def __init__(self) -> None:
        self.inputs: list[int] = []
        self.scored: list[int] = []

    def before_predict(self, pipeline: Pipeline, xs: Sequence[Any]) -> None:
        self.inputs.append(len(xs))

    def after_learn(self, pipeline: Pipeline, scores: Mapping[str, Scores]) -> None:
        self.scored.append(len(scores["m"]))


def test_sequences_keep_prequential_order_labels_and_hooks():
    events = _events(30)
    hooks = _Hooks()
    model = _Sequential()
    pipe = Pipeline("forecast", {"m": model}, monitor=hooks)
    links = {e.link_id for e in events}
    scored, ys = 0, []
    for i in range(0, len(events), 100):
        out = pipe.step(events[i:i + 100])
        s = out.scores["m"]
        scored += len(s)
        assert np.all(s.y_pred == 0.0), "a label reached the model before its prediction"
        ys.append(s.y_true)
        assert [x.key for x in s.xs] == s.keys
    # one call per batch, every event predicted, every sample but a link's first labels one
    assert model.calls and all(n == min(100, len(events) - 100 * k)
                               for k, (n, _) in enumerate(model.calls))
    assert hooks.inputs == [n for n, _ in model.calls]
    assert sum(hooks.scored) == scored == len(events) - len(links)
    assert pipe.pending == len(links) and pipe.labels_learned == scored
    # the labels are the links' next loads, in the order they came
    by_link: dict[str, list[float]] = {}
    for e in events:
        by_link.setdefault(e.link_id, []).append(e.load)
    got = np.concatenate(ys)
    assert sorted(got.tolist()) == sorted(v for loads in by_link.values() for v in loads[1:])


def test_a_model_without_sequences_sends_the_pipeline_back_to_waves():
    events = _events(40)
    mixed = Pipeline("forecast", {"liquid": LiquidForecaster(seed=0), "naive": LastValue()})
    waves = Pipeline("forecast", {"liquid": LiquidForecaster(seed=0), "naive": LastValue()})
    waves.forecast_sequences = False
    assert _run(mixed, events) == _run(waves, events)


def test_keys_moved_mid_stream_continue_as_if_they_had_stayed():
    events = _events(60)
    a = _pipe(True)
    half = (len(events) // 2 // BATCH) * BATCH
    _run(a, events[:half])
    b = _pipe(True)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict(include_keys=False))))
    b.import_keys(state_io.loads(state_io.dumps(a.export_keys(a.keys()))))
    assert _run(a, events[half:]) == _run(b, events[half:])


def test_asking_again_for_a_batch_steps_from_the_state_before_it():
    # the drift monitor's collapse check predicts a batch before the pipeline does
    store, model = WindowStore(window=12), LiquidForecaster(seed=0)
    batches = [[store.push(k, 300.0 * (3 * t + j), 50.0 + 10 * i + (t + j) % 3)
                for j in range(3) for i, k in enumerate("abc")] for t in range(8)]
    for xs in batches[:-1]:
        model.predict_many(xs)
    first = model.predict_many(batches[-1])
    h = model._links.h_out.clone()
    again = model.predict_many(batches[-1])
    np.testing.assert_array_equal(first, again)
    assert torch.equal(model._links.h_out, h)


def test_learning_a_batch_through_the_public_methods_equals_the_sequence_call():
    # the monitor's shadow predicts a batch, then learns its labels, with the plain methods
    events = _events(20)
    store_a, store_b = WindowStore(12), WindowStore(12)
    a, b = LiquidForecaster(seed=0, update_every=4), LiquidForecaster(seed=0, update_every=4)
    prev: dict[str, ForecastInput] = {}
    for i in range(0, len(events), 64):
        batch = events[i:i + 64]
        xa = [store_a.push(e.link_id, e.timestamp, e.load) for e in batch]
        xb = store_b.push_many([e.link_id for e in batch], [e.timestamp for e in batch],
                               [e.load for e in batch])
        assert xa == xb
        lx, ly = [], []
        for x in xa:
            if x.key in prev:
                lx.append(prev[x.key])
                ly.append(x.last)
            prev[x.key] = x
        pa, _ = a.predict_learn_sequences(xa, lx, ly)
        pb = b.predict_many(xb)
        b.learn_many(lx, ly)
        np.testing.assert_array_equal(pa, pb)
    assert a._rsize == b._rsize > 0
    torch.testing.assert_close(a._rh, b._rh, rtol=0, atol=0)
    torch.testing.assert_close(a._flat, b._flat, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(40))
def test_push_many_equals_pushing_one_by_one(seed):
    rng = random.Random(seed)
    w, cap = rng.randint(1, 5), rng.randint(1, 6)
    one, many = WindowStore(w, cap), WindowStore(w, cap)
    t = 0.0
    for _ in range(rng.randint(1, 6)):
        n = rng.randint(0, 40)
        keys = [rng.choice("abcdefg"[: rng.randint(1, 7)]) for _ in range(n)]
        stamps = []
        for _ in range(n):
            t += rng.choice([0.0, 1.0, 60.0, -5.0])
            stamps.append(t)
        loads = [rng.uniform(0, 10) for _ in range(n)]
        ids = [f"e{i}" for i in range(n)]
        want = [one.push(k, s, v, None, e) for k, s, v, e in zip(keys, stamps, loads, ids,
                                                                 strict=True)]
        assert many.push_many(keys, stamps, loads, None, ids) == want
        assert many.state_dict() == one.state_dict()
        if rng.random() < 0.3:
            gone = rng.sample("abcdefg", 2)
            one.drop_keys(gone)
            many.drop_keys(gone)
