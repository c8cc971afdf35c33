"""MLP baselines of the liquid-network paper: incremental (batch re-fit) and static.

The incremental-learning side of "Liquid Neural Network-based Adaptive Learning vs.
Incremental Learning for Link Load Prediction amid Concept Drift due to Network Failures"
(arXiv 2404.05304, 2024): an MLP that is re-fitted each time ``retrain_every`` (the
paper's batch size B) fresh labelled samples have been collected, and frozen in between.
The paper does not say whether a re-fit starts from scratch; here it continues from the
current weights (warm start) for ``epochs`` passes over the B fresh samples.

The static baseline is the same MLP fitted once, on the first ``retrain_every`` samples,
with ``epochs`` passes, and never updated again (``static=True``).

Both see exactly the inputs of :class:`~streamadapt.adapters.liquid.LiquidForecaster`
(:func:`~streamadapt.adapters.link_state.encode_windows`: level-free window, elapsed time,
time of day) and predict the same target, the next load minus the current one in
units of the link's scale, through a zero-initialised output layer (persistence until the
first fit). The per-link running scales keep updating in every model, static included:
they are preprocessing, not learned weights.

>>> from streamadapt.features import WindowStore
>>> store, model = WindowStore(window=12), IncrementalMLP(retrain_every=64, seed=0)
>>> for t in range(200):
...     xs = [store.push(k, 300.0 * t, 50.0 + 10 * i + (t % 2)) for i, k in enumerate("ab")]
...     if t:
...         model.learn_many(prev, [x.last for x in xs])
...     p, prev = model.predict_many(xs), xs
>>> [round(v) for v in p.tolist()], model.n_fits
([50, 60], 6)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.link_state import (
    LinkScales,
    encode_windows,
    load_net_state,
    n_features,
    net_state,
    waves,
)
from streamadapt.adapters.registry import register
from streamadapt.features import ForecastInput

__all__ = ["IncrementalMLP"]


class IncrementalMLP(Adapter):
    """MLP re-fitted on every ``retrain_every`` fresh samples (or once, if ``static``).

    Parameters
    ----------
    retrain_every
        B: fresh labelled samples that trigger a re-fit (the static model's training set).
    epochs
        Passes over the B samples per fit.
    hidden
        Width of the two hidden layers.
    lr
        Adam learning rate.
    minibatch
        Samples per gradient step within a fit.
    static
        Fit once, on the first B samples, then never again.
    window
        Loads per input (shorter windows are padded with their oldest load).
    time_scale_s
        Seconds that count as one unit of elapsed time.
    norm_alpha
        Floor of the weight of a new load in the per-link running mean and variance.
    max_links
        Links whose scales are kept (LRU).
    clip
        Bound on normalised features and targets.
    seed
        Seeds the weights and the shuffling.
    """

    task = "forecast"

    def __init__(self, retrain_every: int = 256, epochs: int = 10, hidden: int = 64,
                 lr: float = 1e-3, minibatch: int = 32, static: bool = False,
                 window: int = 12, time_scale_s: float = 300.0, norm_alpha: float = 0.01,
                 max_links: int = 100_000, clip: float = 10.0, seed: int = 0) -> None:
        if retrain_every < 1 or epochs < 1 or minibatch < 1 or window < 2:
            raise ValueError(f"need retrain_every, epochs, minibatch >= 1 and window >= 2; got "
                             f"{retrain_every}, {epochs}, {minibatch}, {window}")
        self.retrain_every, self.epochs, self.hidden, self.lr = retrain_every, epochs, hidden, lr
        self.minibatch, self.static, self.window = minibatch, static, window
        self.time_scale_s, self.norm_alpha, self.max_links = time_scale_s, norm_alpha, max_links
        self.clip, self.seed = clip, seed
        n_in = n_features(window)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self._net[-1].weight)
        nn.init.zeros_(self._net[-1].bias)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=lr)
        self._gen = torch.Generator().manual_seed(seed)
        self._links = LinkScales(max_links)
        self._bx = torch.zeros(retrain_every, n_in)
        self._by = torch.zeros(retrain_every)
        self._fill = 0
        self.n_fits = 0

    def _encode(self, xs: Sequence[ForecastInput]) -> tuple[list[list[int]], list[tuple]]:
        groups, encs = waves([x.key for x in xs]), []
        links = self._links
        for idx in groups:
            wave = [xs[i] for i in idx]
            slots = links.slots([x.key for x in wave])
            stamp = np.array([x.timestamp for x in wave])
            new = stamp > links.ts[slots]
            encs.append(encode_windows(wave, links, slots, self.window, self.time_scale_s,
                                       self.clip, new, self.norm_alpha))
            links.ts[slots[new]] = stamp[new]
        return groups, encs

    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        pred = np.empty(len(xs))
        groups, encs = self._encode(xs)
        with torch.no_grad():
            for idx, (feats, _, last, scale) in zip(groups, encs, strict=True):
                out = self._net(torch.from_numpy(feats).float())[:, 0].double().numpy()
                out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
                pred[idx] = np.maximum(last + scale * out, 0.0)
        return pred

    def _learn_many(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        if self.static and self.n_fits:
            return
        groups, encs = self._encode(xs)
        for idx, (feats, _, last, scale) in zip(groups, encs, strict=True):
            fx = torch.from_numpy(feats).float()
            fy = torch.from_numpy(np.clip((ys[idx] - last) / scale, -self.clip, self.clip))
            i = 0
            while i < len(fy):
                take = min(self.retrain_every - self._fill, len(fy) - i)
                self._bx[self._fill : self._fill + take] = fx[i : i + take]
                self._by[self._fill : self._fill + take] = fy[i : i + take]
                self._fill += take
                i += take
                if self._fill == self.retrain_every:
                    self._fit()
                    self._fill = 0
                    if self.static:
                        return

    def _fit(self) -> None:
        net, opt, n = self._net, self._opt, self.retrain_every
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=self._gen)
            for i in range(0, n, self.minibatch):
                j = order[i : i + self.minibatch]
                loss = nn.functional.huber_loss(net(self._bx[j])[:, 0], self._by[j])
                if not torch.isfinite(loss):
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
        self.n_fits += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **net_state("mlp-v1", self),
            "buffer_x": self._bx[: self._fill].clone(),
            "buffer_y": self._by[: self._fill].clone(),
            "n_fits": self.n_fits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_net_state("mlp-v1", self, state)
        m = len(state["buffer_y"])
        if m >= self.retrain_every:
            raise ValueError(f"state buffers {m} samples, retrain_every is {self.retrain_every}")
        self._bx.zero_()
        self._by.zero_()
        self._bx[:m], self._by[:m] = state["buffer_x"], state["buffer_y"]
        self._fill, self.n_fits = m, int(state["n_fits"])


def _factory(b: int, static: bool = False) -> Any:
    def make(**params: Any) -> IncrementalMLP:
        return IncrementalMLP(**{"retrain_every": b, "static": static, **params})

    make.__doc__ = (f"MLP fitted once on the first {b} samples" if static
                    else f"MLP re-fitted on every {b} fresh samples")
    return make


for _b in (256, 1024, 4096):
    register(f"mlp-incremental-b{_b}", task="forecast",
             summary=f"the paper's incremental MLP, re-fitted on every {_b} fresh samples"
             )(_factory(_b))
register("mlp-static", task="forecast",
         summary="MLP fitted once on the first 4096 samples, never updated")(
    _factory(4096, static=True))
