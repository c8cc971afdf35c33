"""The adapter protocol: an online model the pipeline predicts with and teaches.

Every model in streamadapt, from a river baseline to the liquid forecaster, is an
:class:`Adapter`. The pipeline calls, per micro-batch,

* ``predict_many(xs)`` -> ``numpy.ndarray`` of float predictions (a load for ``forecast``,
  a click probability for ``ctr``);
* ``learn_many(xs, ys)`` once the labels of earlier inputs arrive.

``xs`` are :class:`~streamadapt.features.ForecastInput` for forecasting and
:class:`~streamadapt.events.Impression` for click prediction. Both methods reject
non-finite inputs or labels with a :class:`ValueError` *before* touching any weight.

Adapters store their constructor arguments under the same names (``clone()`` and ``repr``
work off the signature, as in river), take a ``seed`` where they draw random numbers, and
return their whole state from ``state_dict()`` in the safe format of
:mod:`streamadapt.state`. An adapter that exposes a hidden representation (for the error
memory) sets ``has_hidden = True`` and implements ``hidden_many``.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import numpy as np

from streamadapt.events import Impression
from streamadapt.features import ForecastInput

__all__ = ["Adapter", "check_finite_inputs", "check_finite_labels"]


def _input_values(x: Any) -> Sequence[float]:
    if isinstance(x, ForecastInput):
        return (*x.loads, *x.dts, *x.covariates.values(), x.timestamp)
    if isinstance(x, Impression):
        return (*x.numeric.values(), x.timestamp)
    raise TypeError(
        f"unsupported input type {type(x).__name__}; expected ForecastInput or Impression"
    )


def _sum_values(x: Any) -> float:
    if type(x) is ForecastInput:
        return sum(x.loads) + sum(x.dts) + sum(x.covariates.values()) + x.timestamp
    if type(x) is Impression:
        return sum(x.numeric.values()) + x.timestamp
    return math.fsum(_input_values(x))


def check_finite_inputs(xs: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming the first input that holds a NaN or an infinity.

    Fast path: the sum of an input's numbers is finite exactly when none of them is NaN or
    infinite, unless finite values overflow the sum, which the slow path then clears.
    """
    isfinite = math.isfinite
    for i, x in enumerate(xs):
        if isfinite(_sum_values(x)):
            continue
        for v in _input_values(x):
            if not isfinite(v):
                raise ValueError(f"input {i} holds a non-finite value {v!r}; refusing it")


def check_finite_labels(ys: np.ndarray, n: int) -> np.ndarray:
    """Return ``ys`` as a float64 vector of length ``n``, or raise ``ValueError``."""
    arr = np.asarray(ys, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} labels for {n} inputs")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"label {bad} is non-finite ({arr[bad]!r}); refusing the batch")
    return arr


class Adapter(abc.ABC):
    """Base class of every online model. Subclasses implement the underscored methods."""

    #: "forecast" or "ctr".
    task: ClassVar[str] = "forecast"
    #: True when ``hidden_many`` returns a representation usable as an error-memory key.
    has_hidden: ClassVar[bool] = False
    #: True when ``learn_many`` equals ``learn_one`` over the batch in order. Adapters that
    #: take one gradient step per micro-batch set False: their batch size is a parameter.
    exact_batch_learning: ClassVar[bool] = False

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def _predict_many(self, xs: Sequence[Any]) -> np.ndarray: ...

    @abc.abstractmethod
    def _learn_many(self, xs: Sequence[Any], ys: np.ndarray) -> None: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def _hidden_many(self, xs: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} exposes no hidden representation")

    # -- public API -----------------------------------------------------------------------
    def predict_many(self, xs: Sequence[Any]) -> np.ndarray:
        """Predict for a batch of inputs; returns a float64 vector, one value per input."""
        if not xs:
            return np.empty(0)
        check_finite_inputs(xs)
        out = np.asarray(self._predict_many(xs), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(xs):
            raise RuntimeError(
                f"{type(self).__name__} returned {out.shape[0]} predictions for {len(xs)} inputs"
            )
        return out

    def predict_with_base_many(self, xs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Final and base predictions. They differ only for wrappers that correct a base
        model (the error memory); a plain adapter returns the same vector twice."""
        p = self.predict_many(xs)
        return p, p

    def learn_many(self, xs: Sequence[Any], ys: Sequence[float] | np.ndarray) -> None:
        """Learn from a batch of inputs and their labels; rejects the whole batch if any
        input or label is not finite, leaving the weights untouched."""
        if not xs:
            return
        arr = check_finite_labels(np.asarray(ys), len(xs))
        check_finite_inputs(xs)
        self._learn_many(xs, arr)

    def predict_one(self, x: Any) -> float:
        return float(self.predict_many([x])[0])

    def learn_one(self, x: Any, y: float) -> None:
        self.learn_many([x], np.array([y], dtype=np.float64))

    def hidden_many(self, xs: Sequence[Any]) -> np.ndarray:
        """The hidden representation of each input, shape ``(len(xs), dim)``."""
        check_finite_inputs(xs)
        return np.asarray(self._hidden_many(xs), dtype=np.float32)

    # -- state that belongs to a key, moved with its partition ------------------------------
    def export_keys(self, keys: Collection[str]) -> dict[str, Any] | None:
        """What the model keeps for each of ``keys`` (a link's hidden state and running
        scale), or None for a model that keeps nothing per key. The default reads the
        per-link state of the neural forecasters (a ``_links`` attribute)."""
        links = getattr(self, "_links", None)
        return None if links is None else links.export_keys(keys)

    def import_keys(self, state: dict[str, Any] | None) -> None:
        """Take in what :meth:`export_keys` gave, overwriting those keys."""
        links = getattr(self, "_links", None)
        if links is not None and state is not None:
            links.import_keys(state)

    def drop_keys(self, keys: Collection[str] | None = None) -> None:
        """Forget the state of ``keys`` (of every key when None)."""
        links = getattr(self, "_links", None)
        if links is not None:
            links.drop_keys(keys)

    def shared_weights(self) -> dict[str, Any]:
        """The parameters that replicas of one consumer group average (name -> tensor,
        changed in place); the default is every parameter of a torch network held in
        ``_net``, and nothing for other models (river models are not averaged)."""
        import torch

        net = getattr(self, "_net", None)
        if isinstance(net, torch.nn.Module):
            return dict(net.named_parameters())
        return {}

    # -- river-style conveniences -----------------------------------------------------------
    def _get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def clone(self, **overrides: Any) -> Adapter:
        """A fresh, untrained adapter with the same parameters (and any overrides)."""
        params = {**self._get_params(), **overrides}
        return type(self)(**params)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"
