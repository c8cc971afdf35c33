"""river-backed baselines: linear regression on lag features for load, logistic regression
and a factorisation machine for clicks.

River models learn one record at a time, so ``_learn_many`` and ``_predict_many`` loop over
the batch. Their state is stored as a pickle read back by
:func:`streamadapt.state.restricted_unpickle` (river classes and plain containers only).

>>> from streamadapt.features import WindowStore
>>> store, model = WindowStore(window=4), RiverLinearForecaster(n_lags=4)
>>> xs = [store.push("l", 60.0 * t, 10.0 + (t % 2)) for t in range(200)]
>>> model.learn_many(xs[:-1], [x.last for x in xs[1:]])
>>> round(model.predict_one(xs[-1]), 1)
10.0
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from river import facto, linear_model, optim, preprocessing

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.registry import register
from streamadapt.events import Impression
from streamadapt.features import ForecastInput, lag_features
from streamadapt.state import restricted_unpickle

__all__ = ["RiverLinearForecaster", "RiverLogReg", "RiverFM", "ctr_features"]


def ctr_features(x: Impression) -> dict[str, float]:
    """One-hot user, item and categorical fields, plus the numeric fields as they are."""
    out = {f"user={x.user_id}": 1.0, f"item={x.item_id}": 1.0}
    for k, v in x.categorical.items():
        out[f"{k}={v}"] = 1.0
    return out


class _RiverAdapter(Adapter):
    """Shared state handling for adapters that hold river objects in ``self._model``."""

    _model: Any

    def state_dict(self) -> dict[str, Any]:
        return {"format": "river-pickle", "model": pickle.dumps(self._model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "river-pickle":
            raise ValueError(f"expected a 'river-pickle' state, got {state.get('format')!r}")
        self._model = restricted_unpickle(state["model"])


@register("river-linear", task="forecast",
          summary="river linear regression on lag + time-of-day features (scaled target)")
class RiverLinearForecaster(_RiverAdapter):
    """Linear regression on the last ``n_lags`` loads, elapsed time and time of day.

    Parameters
    ----------
    n_lags
        How many recent loads become features.
    lr
        SGD learning rate.
    l2
        L2 penalty.
    clip_gradient
        Bound on each gradient component. Without it, a rare feature value far from what the
        online scaler has seen (a night's gap in a series sampled every five minutes) makes
        one SGD step so large that the model diverges (seen on fpp3/bank_calls).
    seed
        Unused (the model is deterministic); kept for a uniform signature.
    """

    task = "forecast"
    exact_batch_learning = True

    def __init__(
        self,
        n_lags: int = 12,
        lr: float = 0.01,
        l2: float = 0.0,
        clip_gradient: float = 1.0,
        seed: int = 0,
    ):
        self.n_lags = n_lags
        self.lr = lr
        self.l2 = l2
        self.clip_gradient = clip_gradient
        self.seed = seed
        # features computed at prediction, reused when the label comes (keyed by the input
        # object, which the pipeline keeps alive until then); derivable, so not state
        self._cache: OrderedDict[int, tuple[ForecastInput, dict[str, float]]] = OrderedDict()
        self._model = preprocessing.TargetStandardScaler(
            regressor=preprocessing.StandardScaler()
            | linear_model.LinearRegression(
                optimizer=optim.SGD(lr), l2=l2, clip_gradient=clip_gradient
            )
        )

    #: How many inputs' features are kept from prediction until their label comes.
    _CACHE_SIZE = 200_000

    def _features(self, x: ForecastInput) -> dict[str, float]:
        return lag_features(x, self.n_lags)

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        predict, cache, out = self._model.predict_one, self._cache, np.empty(len(xs))
        for i, x in enumerate(xs):
            feats = self._features(x)
            cache[id(x)] = (x, feats)
            out[i] = predict(feats)
        while len(cache) > self._CACHE_SIZE:
            cache.popitem(last=False)
        return out

    def _learn_many(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        learn, cache = self._model.learn_one, self._cache
        for x, y in zip(xs, ys.tolist(), strict=True):
            hit = cache.pop(id(x), None)
            learn(hit[1] if hit is not None and hit[0] is x else self._features(x), y)


class _RiverClassifier(_RiverAdapter):
    task = "ctr"
    exact_batch_learning = True

    def _numeric_scaled(self, x: Impression, learn: bool) -> dict[str, float]:
        if not x.numeric:
            return {}
        if learn:
            self._scaler.learn_one(x.numeric)
        return self._scaler.transform_one(x.numeric)

    def _features(self, x: Impression, learn: bool) -> dict[str, float]:
        feats = ctr_features(x)
        feats.update(self._numeric_scaled(x, learn))
        return feats

    def _predict_many(self, xs: Sequence[Impression]) -> np.ndarray:
        predict = self._model.predict_proba_one
        return np.fromiter(
            (predict(self._features(x, False)).get(True, 0.0) for x in xs), float, len(xs)
        )

    def _learn_many(self, xs: Sequence[Impression], ys: np.ndarray) -> None:
        learn = self._model.learn_one
        for x, y in zip(xs, ys.tolist(), strict=True):
            learn(self._features(x, True), y >= 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scaler": pickle.dumps(self._scaler)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._scaler = restricted_unpickle(state["scaler"])


@register("river-logreg", task="ctr",
          summary="river logistic regression on one-hot user/item/categorical fields")
class RiverLogReg(_RiverClassifier):
    """Logistic regression on one-hot fields and standardised numeric fields.

    Parameters
    ----------
    lr
        SGD learning rate.
    l2
        L2 penalty.
    seed
        Unused (deterministic); kept for a uniform signature.
    """

    def __init__(self, lr: float = 0.05, l2: float = 0.0, seed: int = 0):
        self.lr = lr
        self.l2 = l2
        self.seed = seed
        self._scaler = preprocessing.StandardScaler()
        self._model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2)


@register("river-fm", task="ctr",
          summary="river factorisation machine on one-hot user/item/categorical fields")
class RiverFM(_RiverClassifier):
    """Factorisation machine (river ``facto.FMClassifier``) on one-hot fields.

    Parameters
    ----------
    n_factors
        Latent dimension.
    lr
        SGD learning rate of weights and latents.
    seed
        Seed of the latent initialisation.
    """

    def __init__(self, n_factors: int = 10, lr: float = 0.05, seed: int = 0):
        self.n_factors = n_factors
        self.lr = lr
        self.seed = seed
        self._scaler = preprocessing.StandardScaler()
        self._model = facto.FMClassifier(
            n_factors=n_factors,
            weight_optimizer=optim.SGD(lr),
            latent_optimizer=optim.SGD(lr),
            sample_normalization=False,
            seed=seed,
        )
