"""The check suite every adapter runs through (as river's ``utils.estimator_checks``).

:func:`yield_checks` gives the checks that apply to an adapter; each takes a factory
(``seed -> Adapter``) and raises ``AssertionError`` with a message on failure. The test
``tests/test_adapter_checks.py`` runs them over every registered model, so a new adapter
is tested simply by being registered.

>>> from streamadapt.adapters.naive import LastValue
>>> for check in yield_checks(LastValue()):
...     check(lambda seed: LastValue(seed=seed))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from streamadapt import state as state_io
from streamadapt.adapters.base import Adapter
from streamadapt.events import Impression
from streamadapt.features import ForecastInput, WindowStore

__all__ = ["yield_checks", "sample_data", "Factory"]

Factory = Callable[[int], Adapter]


def sample_data(task: str, n: int = 240, seed: int = 7) -> tuple[list[Any], np.ndarray]:
    """A small deterministic stream of inputs and labels for ``task``, in time order.

    Forecast: 4 links with daily sines and noise; consecutive inputs of a link are 5 minutes
    apart; the label is the link's next load. CTR: 24 users, 40 items, clicks driven by a
    user-item affinity.
    """
    rng = np.random.default_rng(seed)
    if task == "forecast":
        store = WindowStore(window=8)
        links = [f"l{i}" for i in range(4)]
        steps = n // len(links) + 1
        series = {
            k: 50 + 20 * i + 10 * np.sin(np.arange(steps + 1) * 2 * np.pi / 48 + i)
            + rng.normal(0, 1, steps + 1)
            for i, k in enumerate(links)
        }
        xs, ys = [], []
        for t in range(steps):
            for k in links:
                xs.append(store.push(k, 1.7e9 + 300.0 * t, float(series[k][t]),
                                     event_id=f"{k}-{t}"))
                ys.append(float(series[k][t + 1]))
        return xs[:n], np.asarray(ys[:n])
    if task == "ctr":
        affinity = rng.normal(0, 1, (24, 40))
        xs, ys = [], []
        for i in range(n):
            u, it = int(rng.integers(24)), int(rng.integers(40))
            p = 1 / (1 + math.exp(-2 * affinity[u, it]))
            xs.append(Impression(
                event_id=f"e{i}", user_id=f"u{u}", item_id=f"i{it}",
                timestamp=1.7e9 + 10.0 * i, categorical={"genre": f"g{it % 5}"},
                numeric={"price": float(it % 7)},
            ))
            ys.append(float(rng.random() < p))
        return xs, np.asarray(ys)
    raise ValueError(f"unknown task {task!r}; valid choices: forecast, ctr")


def _distinct_keys(xs: list[Any]) -> list[Any]:
    seen, out = set(), []
    for x in xs:
        key = getattr(x, "key", None) or getattr(x, "user_id", None)
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def _feed(model: Adapter, xs: list[Any], ys: np.ndarray, batch: int = 16) -> None:
    """Prequential feeding: predict each batch, then learn it."""
    for i in range(0, len(xs), batch):
        model.predict_many(xs[i : i + batch])
        model.learn_many(xs[i : i + batch], ys[i : i + batch])


def _snapshot(xs: list[Any]) -> list[Any]:
    return [x.model_dump() if isinstance(x, Impression) else copy.deepcopy(x) for x in xs]


def check_predictions_valid(factory: Factory) -> None:
    model = factory(0)
    xs, ys = sample_data(model.task)
    _feed(model, xs[:160], ys[:160])
    p = model.predict_many(xs[160:])
    assert p.shape == (len(xs) - 160,), f"prediction shape {p.shape}"
    assert np.isfinite(p).all(), "non-finite predictions"
    if model.task == "ctr":
        assert ((p >= 0) & (p <= 1)).all(), f"click probabilities outside [0, 1]: {p.min()}"


def check_seed_determinism(factory: Factory) -> None:
    a, b = factory(3), factory(3)
    xs, ys = sample_data(a.task)
    _feed(a, xs[:160], ys[:160])
    _feed(b, xs[:160], ys[:160])
    pa, pb = a.predict_many(xs[160:]), b.predict_many(xs[160:])
    assert np.allclose(pa, pb, rtol=1e-6, atol=1e-9), "same seed, same data, other predictions"


def check_state_round_trip(factory: Factory) -> None:
    a = factory(1)
    xs, ys = sample_data(a.task)
    _feed(a, xs[:160], ys[:160])
    blob = state_io.dumps(a.state_dict())
    b = factory(2)  # another seed: everything must come from the state
    b.load_state_dict(state_io.loads(blob))
    rest_x, rest_y = xs[160:], ys[160:]
    for i in range(0, len(rest_x), 16):
        pa = a.predict_many(rest_x[i : i + 16])
        pb = b.predict_many(rest_x[i : i + 16])
        assert np.allclose(pa, pb, rtol=1e-5, atol=1e-7), (
            f"restored model predicts differently at batch {i // 16}: {pa[:3]} vs {pb[:3]}"
        )
        a.learn_many(rest_x[i : i + 16], rest_y[i : i + 16])
        b.learn_many(rest_x[i : i + 16], rest_y[i : i + 16])


def check_batch_predict_agrees(factory: Factory) -> None:
    """``predict_many`` over distinct keys equals ``predict_one`` on each, from equal states."""
    a = factory(0)
    xs, ys = sample_data(a.task)
    _feed(a, xs[:160], ys[:160])
    blob = state_io.dumps(a.state_dict())
    b = factory(0)
    b.load_state_dict(state_io.loads(blob))
    probe = _distinct_keys(xs[160:])
    many = a.predict_many(probe)
    one = np.array([b.predict_one(x) for x in probe])
    assert np.allclose(many, one, rtol=1e-5, atol=1e-6), f"batch {many[:3]} vs one {one[:3]}"


def check_batch_learn_agrees(factory: Factory) -> None:
    """For adapters whose learning is per record: learn_many == repeated learn_one."""
    a, b = factory(0), factory(0)
    xs, ys = sample_data(a.task)
    a.learn_many(xs[:160], ys[:160])
    for x, y in zip(xs[:160], ys[:160], strict=True):
        b.learn_one(x, float(y))
    probe = _distinct_keys(xs[160:])
    assert np.allclose(a.predict_many(probe), b.predict_many(probe), rtol=1e-5, atol=1e-6)


def check_inputs_not_mutated(factory: Factory) -> None:
    model = factory(0)
    xs, ys = sample_data(model.task)
    before_x, before_y = _snapshot(xs), ys.copy()
    _feed(model, xs, ys)
    model.predict_many(xs[:10])
    assert _snapshot(xs) == before_x, "inputs were mutated"
    assert np.array_equal(ys, before_y), "labels were mutated"


def _poisoned(x: Any) -> Any:
    if isinstance(x, ForecastInput):
        loads = (*x.loads[:-1], float("nan"))
        return ForecastInput(x.key, x.timestamp, loads, x.dts, x.covariates, x.event_id)
    data = x.model_dump()
    data["numeric"] = {**data["numeric"], "price": float("inf")}
    return Impression.model_construct(**data)


def check_non_finite_rejected(factory: Factory) -> None:
    model = factory(0)
    xs, ys = sample_data(model.task)
    _feed(model, xs[:160], ys[:160])
    probe = _distinct_keys(xs[160:])
    blob = state_io.dumps(model.state_dict())
    before = model.predict_many(probe)
    model.load_state_dict(state_io.loads(blob))  # predicting may advance per-key state
    bad_y = ys[160:176].copy()
    bad_y[3] = np.nan
    for xs_bad, ys_bad in (
        (xs[160:176], bad_y),
        ([*xs[160:163], _poisoned(xs[163]), *xs[164:176]], ys[160:176]),
    ):
        try:
            model.learn_many(xs_bad, ys_bad)
        except ValueError:
            pass
        else:
            raise AssertionError("learn_many accepted a non-finite input or label")
    try:
        model.predict_many([_poisoned(xs[170])])
    except ValueError:
        pass
    else:
        raise AssertionError("predict_many accepted a non-finite input")
    after = model.predict_many(probe)
    assert np.allclose(before, after, rtol=1e-6, atol=1e-9), "a rejected batch changed weights"


def check_clone(factory: Factory) -> None:
    a = factory(5)
    c = a.clone()
    assert type(c) is type(a) and repr(c) == repr(a), f"clone {c!r} differs from {a!r}"


def yield_checks(model: Adapter) -> Iterator[Callable[[Factory], None]]:
    """The checks that apply to ``model`` (all of them, except per-record learning
    agreement for adapters with ``exact_batch_learning = False``)."""
    yield check_predictions_valid
    yield check_seed_determinism
    yield check_state_round_trip
    yield check_batch_predict_agrees
    if getattr(model, "exact_batch_learning", False):
        yield check_batch_learn_agrees
    yield check_inputs_not_mutated
    yield check_non_finite_rejected
    yield check_clone
