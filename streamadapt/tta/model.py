"""Online MLP adapters ready for neuro-modulated Hebbian test-time adaptation (NHL).

Both adapters run :class:`~streamadapt.tta.net.HebbianNet` (input layer -> neuro-modulator ->
frozen rest), learn one Adam step per labelled micro-batch, and implement the
:class:`~streamadapt.tta.hooks.HebbianHooks` (plus ``set_lr_scale``) so a
:class:`~streamadapt.monitor.DriftMonitor` can adapt them on unlabelled batches (Tang et al.,
CVPR 2023, arXiv 2303.00914).

* :class:`HebbianForecaster` (``hebbian-mlp``): the window of loads standardised with running
  load statistics (updated from labelled batches only), ``log1p`` of the last elapsed time
  and the time-of-day encodings; predicts ``mean + std * (z_last + net(x))``, a learned
  correction of persistence (``z_last`` is the standardised current load). Its unsupervised
  loss is
  *self-supervised next-input prediction*: the window shifted one step back (first value
  repeated) must predict the window's own last load, a target that needs no label.
* :class:`HebbianClicks` (``hebbian-mlp-ctr``): user, item and every categorical field hashed
  (CRC-32 of ``"field=value"``) into ``n_hash`` slots set to 1, numeric fields standardised
  online and added at their hashed slot; predicts ``sigmoid(net(x))``. Its unsupervised loss
  is the mean prediction entropy (TENT, Wang et al. ICLR 2021).

>>> from streamadapt.checks import sample_data
>>> xs, ys = sample_data("forecast")
>>> m = HebbianForecaster(window=8, seed=0)
>>> for i in range(0, 240, 16):
...     m.learn_many(xs[i:i + 16], ys[i:i + 16])
>>> err = abs(m.predict_many(xs[-16:]) - ys[-16:]).mean()   # loads of 30..130
>>> round(float(err), 2)
1.85
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.registry import register
from streamadapt.events import Impression
from streamadapt.features import ForecastInput, time_features
from streamadapt.state import load_optimizer_state, optimizer_state
from streamadapt.tta.net import HebbianNet

__all__ = ["HebbianForecaster", "HebbianClicks"]


class _HebbianAdapter(Adapter):
    """Shared network, optimiser, state and hooks."""

    has_hidden = True
    lr: float
    _net: HebbianNet

    def _init_net(self, in_features: int, hidden: int, momentum: float, seed: int) -> None:
        self._net = HebbianNet(in_features, hidden, momentum, seed)
        self._net.eval()
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.lr)
        self._lr_scale = 1.0

    # -- subclasses -----------------------------------------------------------------------
    def _encode(self, xs: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, out: torch.Tensor, xs: Sequence[Any], ys: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _update_stats(self, xs: Sequence[Any], ys: np.ndarray) -> None:
        raise NotImplementedError

    def _stats_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_stats(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- adapter --------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)

    def _predict_many(self, xs: Sequence[Any]) -> np.ndarray:
        with torch.no_grad():
            return self._output(self._forward(self._encode(xs))).double().numpy()

    def _hidden_many(self, xs: Sequence[Any]) -> np.ndarray:
        with torch.no_grad():
            return self._net.hidden(self._encode(xs)).numpy()

    def _learn_many(self, xs: Sequence[Any], ys: np.ndarray) -> None:
        self._update_stats(xs, ys)
        x = self._encode(xs)
        self._net.train()
        try:
            loss = self._loss(self._forward(x), xs, ys)
        finally:
            self._net.eval()
        if not torch.isfinite(loss):
            return
        self._opt.zero_grad()
        loss.backward()
        grads_ok = all(p.grad is None or torch.isfinite(p.grad).all()
                       for p in self._net.parameters())
        if grads_ok:
            torch.nn.utils.clip_grad_norm_(self._net.parameters(), 5.0)
            self._opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"net": dict(self._net.state_dict()), "opt": optimizer_state(self._opt),
                "lr_scale": self._lr_scale, "stats": self._stats_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._net.load_state_dict(state["net"])
        load_optimizer_state(self._opt, state["opt"])
        self.set_lr_scale(float(state["lr_scale"]))
        self._load_stats(state["stats"])

    # -- hooks ----------------------------------------------------------------------------
    def tta_encode(self, xs: Sequence[Any]) -> torch.Tensor:
        return self._encode(xs)

    def tta_input_layer(self) -> torch.nn.Linear:
        return self._net.input

    def tta_modulator(self) -> torch.nn.Module:
        return self._net.modulator

    def set_lr_scale(self, scale: float) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr scale must be a positive finite number, got {scale}")
        self._lr_scale = scale
        for g in self._opt.param_groups:
            g["lr"] = self.lr * scale


@register("hebbian-mlp", task="forecast",
          summary="online MLP on the load window with a Hebbian input layer and modulator (NHL)")
class HebbianForecaster(_HebbianAdapter):
    """Forecasting MLP for NHL test-time adaptation (see the module docstring).

    Parameters
    ----------
    window
        Loads per input; shorter windows are padded with their oldest load.
    hidden
        Hidden width.
    lr
        Adam learning rate.
    momentum
        Modulator running-statistics momentum.
    stats_decay
        Weight of a new batch in the running load mean and variance (at least ``1/n``).
    seed
        Seed of the initialisation.
    """

    task = "forecast"

    def __init__(self, window: int = 12, hidden: int = 32, lr: float = 3e-3,
                 momentum: float = 0.05, stats_decay: float = 0.01, seed: int = 0) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self.hidden = hidden
        self.lr = lr
        self.momentum = momentum
        self.stats_decay = stats_decay
        self.seed = seed
        self._mean, self._var, self._n = 0.0, 1.0, 0
        self._init_net(window + 5, hidden, momentum, seed)

    def _std(self) -> float:
        return math.sqrt(max(self._var, 1e-12))

    def _update_stats(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        self._n += len(ys)
        a = max(self.stats_decay, len(ys) / self._n)
        delta = float(ys.mean()) - self._mean
        self._mean += a * delta
        self._var = (1 - a) * (self._var + a * delta * delta) + a * float(ys.var())
        if self._n == len(ys):
            self._var = max(float(ys.var()), 0.01 * self._mean**2, 1e-6)

    def _encode(self, xs: Sequence[ForecastInput]) -> torch.Tensor:
        w, mean, std = self.window, self._mean, self._std()
        rows = np.empty((len(xs), w + 5), dtype=np.float32)
        for i, x in enumerate(xs):
            loads = x.loads[-w:]
            pad = (loads[0],) * (w - len(loads))
            rows[i, :w] = np.clip((np.array(pad + loads) - mean) / std, -50.0, 50.0)
            rows[i, w] = math.log1p(max(x.dts[-1], 0.0)) / 10.0
            rows[i, w + 1:] = list(time_features(x.timestamp).values())
        return torch.from_numpy(rows)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x) + x[:, self.window - 1]

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        return self._mean + self._std() * out.double()

    def _loss(self, out: torch.Tensor, xs: Sequence[Any], ys: np.ndarray) -> torch.Tensor:
        target = torch.from_numpy((ys - self._mean) / self._std()).float().clamp(-50, 50)
        return torch.nn.functional.mse_loss(out, target)

    def tta_loss(self, xs: Sequence[Any], encoded: torch.Tensor) -> torch.Tensor:
        w = self.window
        shifted = encoded.clone()
        shifted[:, 1:w] = encoded[:, : w - 1]
        return torch.nn.functional.mse_loss(self._forward(shifted), encoded[:, w - 1])

    def _stats_state(self) -> dict[str, Any]:
        return {"mean": self._mean, "var": self._var, "n": self._n}

    def _load_stats(self, state: dict[str, Any]) -> None:
        self._mean, self._var, self._n = float(state["mean"]), float(state["var"]), int(
            state["n"])


@register("hebbian-mlp-ctr", task="ctr",
          summary="online MLP on hashed click features with a Hebbian input layer (NHL)")
class HebbianClicks(_HebbianAdapter):
    """Click MLP for NHL test-time adaptation (see the module docstring).

    Parameters
    ----------
    n_hash
        Hashed input slots.
    hidden
        Hidden width.
    lr
        Adam learning rate.
    momentum
        Modulator running-statistics momentum.
    seed
        Seed of the initialisation.
    """

    task = "ctr"

    def __init__(self, n_hash: int = 512, hidden: int = 32, lr: float = 1e-2,
                 momentum: float = 0.05, seed: int = 0) -> None:
        if n_hash < 2:
            raise ValueError(f"n_hash must be >= 2, got {n_hash}")
        self.n_hash = n_hash
        self.hidden = hidden
        self.lr = lr
        self.momentum = momentum
        self.seed = seed
        self._num: dict[str, list[float]] = {}  # name -> [n, mean, M2]
        self._init_net(n_hash, hidden, momentum, seed)

    def _slot(self, token: str) -> int:
        return zlib.crc32(token.encode()) % self.n_hash

    def _update_stats(self, xs: Sequence[Impression], ys: np.ndarray) -> None:
        for x in xs:
            for k, v in x.numeric.items():
                s = self._num.setdefault(k, [0.0, 0.0, 0.0])
                s[0] += 1
                d = v - s[1]
                s[1] += d / s[0]
                s[2] += d * (v - s[1])

    def _encode(self, xs: Sequence[Impression]) -> torch.Tensor:
        rows = np.zeros((len(xs), self.n_hash), dtype=np.float32)
        slot = self._slot
        for i, x in enumerate(xs):
            rows[i, slot(f"user={x.user_id}")] = 1.0
            rows[i, slot(f"item={x.item_id}")] = 1.0
            for k, v in x.categorical.items():
                rows[i, slot(f"{k}={v}")] = 1.0
            for k, v in x.numeric.items():
                n, mean, m2 = self._num.get(k, (0.0, 0.0, 0.0))
                std = math.sqrt(m2 / n) if n > 1 and m2 > 0 else 1.0
                rows[i, slot(f"num:{k}")] += max(-5.0, min(5.0, (v - mean) / std))
        return torch.from_numpy(rows)

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.double())

    def _loss(self, out: torch.Tensor, xs: Sequence[Any], ys: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, torch.from_numpy((ys >= 0.5).astype(np.float32)))

    def tta_loss(self, xs: Sequence[Any], encoded: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self._net(encoded)).clamp(1e-6, 1 - 1e-6)
        return -(p * p.log() + (1 - p) * (1 - p).log()).mean()

    def _stats_state(self) -> dict[str, Any]:
        return {"names": list(self._num), "values": [list(v) for v in self._num.values()]}

    def _load_stats(self, state: dict[str, Any]) -> None:
        self._num = {k: [float(a) for a in v]
                     for k, v in zip(state["names"], state["values"], strict=True)}
