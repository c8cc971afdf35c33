"""Liquid neural network forecaster of link loads that keeps adapting online.

The adaptive-learning side of "Liquid Neural Network-based Adaptive Learning vs.
Incremental Learning for Link Load Prediction amid Concept Drift due to Network Failures"
(arXiv 2404.05304, 2024), built on the closed-form continuous-time cell (Hasani et al.,
Nature Machine Intelligence 2022; :mod:`streamadapt.adapters.cells`), or the LTC cell
(Hasani et al., AAAI 2021) with ``cell="ltc"``.

How one input of a link is handled (choices the paper leaves open, all parameters):

* **Inputs**: the relative encoding of
  :func:`~streamadapt.adapters.link_state.encode_windows` (level-free window, elapsed
  time, time of day), so a jump after a failure leaves the window within
  ``window`` steps and the learned dynamics keep their meaning.
* **State**: each link's CfC hidden state is owned here, advanced once per new window
  (a repeated call for the same sample reuses the state before it), bounded to
  ``max_links`` links by an LRU. The elapsed time drives the cell's time gate.
* **Output**: ``load + scale * head(h)``, the head initialised at zero (the untrained
  model is persistence), clamped at 0.
* **Online adaptation**: each ``learn_many`` pushes its inputs (features, state before
  them, target ``(y - load) / scale``) into a replay ring of ``replay_size``; once
  ``update_every`` fresh inputs have come, it takes ``updates_per_batch`` Adam steps on
  the fresh inputs (at most ``max_fresh``) plus ``replay_batch`` replayed ones, Huber
  loss, gradient norm clipped: the cost of one call is bounded whatever the batch.
  Gradients flow one step back (the stored state is detached); a non-finite loss skips
  the step.
* **Test-time adaptation** (NHL; Tang et al., CVPR 2023, arXiv 2303.00914): the encoded
  features pass through an input projection (``nn.Linear``, the identity at
  initialisation) and a per-feature affine neuro-modulator
  (:class:`~streamadapt.tta.net.AffineModulator`, the identity too) before the cell, so
  the untrained model is unchanged; both are trained by the supervised steps as well. NHL
  updates the projection with the soft Hebbian rule and the modulator by the gradient of
  a self-supervised loss (the cell and the head stay frozen): *one-step
  self-consistency*. Each input's previous window (its loads but the current one) and the
  link's hidden state before the previous sample must predict the current load's change,
  ``(last - prev_last) / scale``, a target the inputs alone give. The monitor adapts a
  batch before the model predicts it, so the previous sample is then the last one the
  link took in and its state before it is ``h_in``; when the previous sample is not taken
  in yet (a link repeated within a batch) the state is ``h_out``; a row with neither (a
  new link, a gap, an input already taken in) is left out of the loss. The previous window
  is one load shorter than a window and is padded like one. Adaptation reads the links'
  states and never writes them.

>>> from streamadapt.features import WindowStore
>>> store, model = WindowStore(window=12), LiquidForecaster(seed=0)
>>> for t in range(300):
...     xs = [store.push(k, 300.0 * t, 50.0 + 10 * i + (t % 2)) for i, k in enumerate("ab")]
...     if t:
...         model.learn_many(prev, [x.last for x in xs])
...     p, prev = model.predict_many(xs), xs
>>> [round(v) for v in p.tolist()], model.hidden_many(xs).shape
([50, 60], (2, 32))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.cells import CELLS, LTCCell, make_cell
from streamadapt.adapters.link_state import (
    LinkScales,
    encode_windows,
    load_net_state,
    n_features,
    net_state,
    waves,
    window_features,
)
from streamadapt.adapters.registry import register
from streamadapt.features import ForecastInput
from streamadapt.tta.net import AffineModulator

__all__ = ["LiquidForecaster", "liquid_ltc"]

#: State format tag (v2: the input projection and the neuro-modulator).
_FORMAT = "liquid-v2"
#: Timestamps closer than this (seconds) are the same sample.
_SAME_TS = 1e-3


class _Net(nn.Module):
    """``proj`` (identity at init) -> ``mod`` (identity at init) -> ``cell`` -> ``head``."""

    def __init__(self, cell: nn.Module, n_in: int, hidden: int) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.proj = nn.Linear(n_in, n_in)
        self.mod = AffineModulator(n_in)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(n_in))
            self.proj.bias.zero_()

    def step(self, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The new hidden state from encoded features ``x`` and the state ``h`` before."""
        return self.cell(self.mod(self.proj(x)), h, ts)


@register("liquid", task="forecast",
          summary="CfC liquid network, per-link hidden state, online replay adaptation")
class LiquidForecaster(Adapter):
    """Liquid (CfC or LTC) link-load forecaster with per-link state and online adaptation.

    Parameters
    ----------
    hidden
        Hidden state size per link.
    backbone_units
        Width of the CfC backbone.
    window
        Loads per input (shorter windows are padded with their oldest load).
    cell
        ``"cfc"`` or ``"ltc"``.
    lr
        Adam learning rate of the online updates.
    replay_size
        Recent inputs kept for replay.
    replay_batch
        Replayed inputs per update.
    update_every
        Fresh labelled inputs to collect before an update (so one link or a thousand get
        the same number of updates per sample).
    updates_per_batch
        Gradient steps per update (at most one update per ``learn_many`` call).
    max_fresh
        At most this many of a call's inputs enter its update (all enter the replay).
    time_scale_s
        Seconds that count as one unit of elapsed time.
    norm_alpha
        Floor of the weight of a new load in the per-link running mean and variance.
    max_links
        Links whose state is kept (LRU).
    clip
        Bound on normalised features and targets.
    refresh_keep
        Newest replay rows kept by :meth:`refresh_memory`.
    seed
        Seeds the weights and the replay sampling.
    """

    task = "forecast"
    has_hidden = True

    def __init__(self, hidden: int = 32, backbone_units: int = 64, window: int = 12,
                 cell: str = "cfc", lr: float = 1e-3, replay_size: int = 4096,
                 replay_batch: int = 256, update_every: int = 16, updates_per_batch: int = 1,
                 max_fresh: int = 512,
                 time_scale_s: float = 300.0, norm_alpha: float = 0.01,
                 max_links: int = 100_000, clip: float = 10.0, refresh_keep: int = 256,
                 seed: int = 0) -> None:
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid choices: {', '.join(CELLS)}")
        if window < 2 or hidden < 1 or replay_size < 1 or max_links < 1:
            raise ValueError(f"need window >= 2, hidden, replay_size, max_links >= 1; got "
                             f"{window}, {hidden}, {replay_size}, {max_links}")
        if time_scale_s <= 0 or not 0 < norm_alpha <= 1:
            raise ValueError(f"need time_scale_s > 0 and 0 < norm_alpha <= 1, got "
                             f"{time_scale_s}, {norm_alpha}")
        self.hidden, self.backbone_units, self.window, self.cell = hidden, backbone_units, \
            window, cell
        self.lr, self.replay_size, self.replay_batch = lr, replay_size, replay_batch
        self.update_every, self.updates_per_batch = update_every, updates_per_batch
        self.max_fresh = max_fresh
        self.time_scale_s, self.norm_alpha, self.max_links = time_scale_s, norm_alpha, max_links
        self.clip, self.seed = clip, seed
        if refresh_keep < 0:
            raise ValueError(f"refresh_keep must be >= 0, got {refresh_keep}")
        self.refresh_keep = refresh_keep
        n_in = n_features(window)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._net = _Net(make_cell(cell, n_in, hidden, backbone_units, seed), n_in, hidden)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=lr)
        self._lr_scale = 1.0
        self._gen = torch.Generator().manual_seed(seed)
        self._links = LinkScales(max_links, hidden)
        self._rx = torch.zeros(replay_size, n_in)
        self._rh = torch.zeros(replay_size, hidden)
        self._rt = torch.zeros(replay_size, 1)
        self._ry = torch.zeros(replay_size)
        self._rpos = self._rsize = self._pending = 0

    # -- the per-link step ------------------------------------------------------------------
    def _advance_wave(self, xs: Sequence[ForecastInput]) -> tuple[torch.Tensor, ...]:
        """Encode one wave (distinct keys), step each link's state, store it."""
        links = self._links
        slots = links.slots([x.key for x in xs])
        stamp = np.array([x.timestamp for x in xs])
        last_ts = links.ts[slots]
        new, same = stamp > last_ts, stamp == last_ts
        feats, dt, last, scale = encode_windows(xs, links, slots, self.window,
                                                self.time_scale_s, self.clip, new,
                                                self.norm_alpha)
        st = torch.from_numpy(slots)
        h_in = torch.where(torch.from_numpy(same)[:, None], links.h_in[st], links.h_out[st])
        x = torch.from_numpy(feats).float()
        ts = torch.from_numpy(dt).float()[:, None]
        with torch.no_grad():
            h_new = torch.nan_to_num(self._net.step(x, h_in, ts), 0.0, 0.0, 0.0)
            out = torch.nan_to_num(self._net.head(h_new)[:, 0], 0.0, 0.0, 0.0)
        keep = torch.from_numpy(new | same)
        if keep.any():
            ks = st[keep]
            links.h_in[ks] = h_in[keep]
            links.h_out[ks] = h_new[keep]
            links.ts[slots[new | same]] = stamp[new | same]
        return x, h_in, ts, h_new, out, torch.from_numpy(last), torch.from_numpy(scale)

    def _advance(self, xs: Sequence[ForecastInput]) -> list[tuple[list[int], tuple]]:
        return [(idx, self._advance_wave([xs[i] for i in idx]))
                for idx in waves([x.key for x in xs])]

    # -- Adapter ------------------------------------------------------------------------------
    def _predict_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        pred = np.empty(len(xs))
        for idx, (_, _, _, _, out, last, scale) in self._advance(xs):
            pred[idx] = (last + scale * out.double()).clamp_min(0.0).numpy()
        return pred

    def _hidden_many(self, xs: Sequence[ForecastInput]) -> np.ndarray:
        h = np.empty((len(xs), self.hidden), dtype=np.float32)
        for idx, enc in self._advance(xs):
            h[idx] = enc[3].numpy()
        return h

    def _learn_many(self, xs: Sequence[ForecastInput], ys: np.ndarray) -> None:
        fx, fh, ft, fy = [], [], [], []
        for idx, (x, h_in, ts, _, _, last, scale) in self._advance(xs):
            y = torch.from_numpy(ys[idx])
            target = ((y - last) / scale).clamp(-self.clip, self.clip).float()
            fx.append(x)
            fh.append(h_in)
            ft.append(ts)
            fy.append(target)
        self._push(torch.cat(fx), torch.cat(fh), torch.cat(ft), torch.cat(fy))
        self._pending += sum(len(y) for y in fy)
        if self._pending < self.update_every:
            return
        k = min(self._pending, self.max_fresh, self._rsize)
        self._pending = 0
        fresh = (self._rpos - 1 - torch.arange(k)) % self.replay_size
        x, h, ts, y = self._rx[fresh], self._rh[fresh], self._rt[fresh], self._ry[fresh]
        net, opt = self._net, self._opt
        for _ in range(self.updates_per_batch):
            bx, bh, bt, by = x, h, ts, y
            if self.replay_batch > 0 and self._rsize > 0:
                r = torch.randint(self._rsize, (self.replay_batch,), generator=self._gen)
                bx, bh = torch.cat([x, self._rx[r]]), torch.cat([h, self._rh[r]])
                bt, by = torch.cat([ts, self._rt[r]]), torch.cat([y, self._ry[r]])
            pred = net.head(net.step(bx, bh, bt))[:, 0]
            loss = nn.functional.huber_loss(pred, by)
            if not torch.isfinite(loss):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if isinstance(net.cell, LTCCell):
                net.cell.apply_weight_constraints()

    def _push(self, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor, y: torch.Tensor
              ) -> None:
        n = len(y)
        if n >= self.replay_size:
            x, h, ts, y, n = (x[-self.replay_size:], h[-self.replay_size:],
                              ts[-self.replay_size:], y[-self.replay_size:], self.replay_size)
        pos = (self._rpos + torch.arange(n)) % self.replay_size
        self._rx[pos], self._rh[pos], self._rt[pos], self._ry[pos] = x, h, ts, y
        self._rpos = int((self._rpos + n) % self.replay_size)
        self._rsize = min(self._rsize + n, self.replay_size)

    # -- drift adaptation hooks -----------------------------------------------------------------
    def refresh_memory(self) -> None:
        """Forget the replay ring but its newest ``refresh_keep`` rows (the ``memory_refresh``
        action): after a concept change, replayed samples of the old regime keep pulling
        the weights back towards it, so the ring restarts from the newest samples."""
        keep = min(self._rsize, self.refresh_keep)
        idx = (self._rpos - keep + torch.arange(keep)) % self.replay_size
        for buf in (self._rx, self._rh, self._rt, self._ry):
            newest = buf[idx].clone()
            buf.zero_()
            buf[:keep] = newest
        self._rpos, self._rsize = keep % self.replay_size, keep

    def set_lr_scale(self, scale: float) -> None:
        """Set the learning rate to ``lr * scale`` (absolute: 1.0 restores ``lr``)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr scale must be a positive finite number, got {scale}")
        self._lr_scale = float(scale)
        for g in self._opt.param_groups:
            g["lr"] = self.lr * self._lr_scale

    def _tta_rows(self, xs: Sequence[ForecastInput]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]:
        """Per input: the previous window's features, the link's state before the previous
        sample, its elapsed time, the target ``(last - prev_last) / scale`` and whether the
        row is usable. Reads the links' states, never writes them (no slot is created)."""
        links, n = self._links, len(xs)
        h = torch.zeros(n, self.hidden)
        var = np.full(n, LinkScales.PRIOR_VAR)
        valid = np.zeros(n, dtype=bool)
        prev: list[ForecastInput] = []
        for i, x in enumerate(xs):
            if len(x.loads) < 2:
                prev.append(x)  # no previous window: a placeholder row, left out of the loss
                continue
            t_prev = x.timestamp - x.dts[-1]
            prev.append(ForecastInput(x.key, t_prev, x.loads[:-1], x.dts[:-1]))
            s = links.slot_of.get(x.key)  # get: the LRU order is left alone
            if s is None:
                continue
            var[i], seen = links.var[s], links.ts[s]
            if abs(seen - t_prev) <= _SAME_TS:  # the previous sample was the last taken in
                h[i], valid[i] = links.h_in[s], True
            elif len(x.loads) >= 3 and abs(seen - (t_prev - x.dts[-2])) <= _SAME_TS:
                h[i], valid[i] = links.h_out[s], True  # it is not taken in yet
        feats, dt, last, scale = window_features(prev, var, self.window, self.time_scale_s,
                                                 self.clip)
        cur = np.array([x.last for x in xs])
        target = np.clip((cur - last) / scale, -self.clip, self.clip)
        return (torch.from_numpy(feats).float(), h, torch.from_numpy(dt).float()[:, None],
                torch.from_numpy(target).float(), torch.from_numpy(valid))

    def tta_encode(self, xs: Sequence[ForecastInput]) -> torch.Tensor:
        """What the input projection sees for the unsupervised loss: each input's previous
        window (its loads but the current one), encoded as the model encodes a window."""
        return self._tta_rows(xs)[0]

    def tta_input_layer(self) -> nn.Linear:
        return self._net.proj

    def tta_modulator(self) -> nn.Module:
        return self._net.mod

    def tta_loss(self, xs: Sequence[ForecastInput], encoded: torch.Tensor) -> torch.Tensor:
        """One-step self-consistency: from the previous window and the link's state before
        the previous sample, predict the current load's change, known from the inputs alone.
        Huber loss, as in supervised learning; rows without a usable state are left out."""
        _, h, ts, target, valid = self._tta_rows(xs)
        net = self._net
        if not bool(valid.any()):
            return (net.mod(net.proj(encoded)) * 0.0).sum()
        out = net.head(net.step(encoded[valid], h[valid], ts[valid]))[:, 0]
        return nn.functional.huber_loss(out, target[valid])

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        m = self._rsize
        return {
            **net_state(_FORMAT, self),
            "lr_scale": self._lr_scale,
            "replay": {"x": self._rx[:m].clone(), "h": self._rh[:m].clone(),
                       "t": self._rt[:m].clone(), "y": self._ry[:m].clone(),
                       "pos": self._rpos, "size": m, "pending": self._pending},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_net_state(_FORMAT, self, state)
        self.set_lr_scale(float(state["lr_scale"]))  # the optimizer state carried the old lr
        rep, m = state["replay"], int(state["replay"]["size"])
        if m > self.replay_size:
            raise ValueError(f"state holds {m} replay rows, replay_size is {self.replay_size}")
        for buf, name in ((self._rx, "x"), (self._rh, "h"), (self._rt, "t"), (self._ry, "y")):
            buf.zero_()
            buf[:m] = rep[name]
        self._rpos, self._rsize, self._pending = int(rep["pos"]), m, int(rep["pending"])


@register("liquid-ltc", task="forecast",
          summary="the liquid forecaster with LTC cells (slower; 6 ODE unfolds per step)")
def liquid_ltc(**params: Any) -> LiquidForecaster:
    """:class:`LiquidForecaster` with ``cell="ltc"`` and a 16-unit state by default."""
    return LiquidForecaster(**{"cell": "ltc", "hidden": 16, **params})
