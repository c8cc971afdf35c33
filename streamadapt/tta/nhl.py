"""Neuro-modulated Hebbian test-time adaptation (NHL) with bounded steps.

After Tang et al., "Neuro-Modulated Hebbian Learning for Fully Test-Time Adaptation"
(CVPR 2023, arXiv 2303.00914). On each unlabelled micro-batch :meth:`NHL.adapt`

1. updates the adapter's input layer with the soft Hebbian rule
   (:func:`~streamadapt.tta.hebbian.soft_hebb_delta`);
2. trains the neuro-modulator layer after it with one gradient step on an unsupervised loss
   back-propagated from the output (the adapter's ``tta_loss``); the rest stays frozen;

with two bounds (the paper's known failure mode is collapse when adaptation runs long):
each step moves a tensor by at most ``max_step`` times its norm, and the adapted tensors
stay within ``max_drift`` times their norm (at least 1) of the *anchor* taken by
:meth:`NHL.begin` (they are projected back onto that ball).

The object holds only the anchor; the adapted weights live in the adapter. Before taking
the anchor, :meth:`NHL.begin` calls the adapter's optional ``tta_begin()`` hook.

>>> from streamadapt.tta.model import HebbianForecaster
>>> from streamadapt.features import WindowStore
>>> store, m = WindowStore(window=4), HebbianForecaster(window=4, seed=0)
>>> xs = [store.push("l", 60.0 * t, 10.0 + t % 3) for t in range(64)]
>>> nhl = NHL(max_drift=0.05)
>>> nhl.begin(m)
>>> stats = nhl.adapt(m, xs)
>>> 0.0 < stats["drift"] <= 0.05 + 1e-9
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from streamadapt.tta.hebbian import soft_hebb_delta
from streamadapt.tta.hooks import HebbianHooks, supports

__all__ = ["NHL"]


def _bounded_add(p: torch.Tensor, delta: torch.Tensor, anchor: torch.Tensor, max_step: float,
                 max_drift: float) -> float:
    """``p += delta`` with the step and drift bounds; returns the relative drift."""
    ref = max(float(anchor.norm()), 1.0)
    dn = float(delta.norm())
    if dn > max_step * ref:
        delta = delta * (max_step * ref / dn)
    new = p.detach() + delta
    gap = new - anchor
    gn = float(gap.norm())
    if gn > max_drift * ref:
        new = anchor + gap * (max_drift * ref / gn)
    if torch.isfinite(new).all():
        p.data.copy_(new)
    return float((p.detach() - anchor).norm()) / ref


class NHL:
    """The NHL adaptation step.

    Parameters
    ----------
    eta
        Hebbian learning rate.
    temperature
        Softmax temperature of the soft winner-take-all.
    lr
        Learning rate of the neuro-modulator's gradient step.
    max_step
        Bound on one step, relative to the anchor norm of each tensor.
    max_drift
        Bound on the distance from the anchor, relative to its norm.
    hebbian
        Run step 1 (switch off to study the modulator alone).
    modulator
        Run step 2.
    """

    def __init__(
        self,
        eta: float = 1e-3,
        temperature: float = 1.0,
        lr: float = 1e-2,
        max_step: float = 0.01,
        max_drift: float = 0.1,
        hebbian: bool = True,
        modulator: bool = True,
    ) -> None:
        for name, v in (("eta", eta), ("lr", lr), ("max_step", max_step),
                        ("max_drift", max_drift), ("temperature", temperature)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.eta = eta
        self.temperature = temperature
        self.lr = lr
        self.max_step = max_step
        self.max_drift = max_drift
        self.hebbian = hebbian
        self.modulator = modulator
        self._anchor: dict[str, torch.Tensor] = {}

    def begin(self, model: HebbianHooks) -> None:
        """Take the anchor the drift bound refers to (call at trigger time); first call the
        model's optional ``tta_begin()`` (ReLoop2 empties its error memory there)."""
        if not isinstance(model, HebbianHooks) or not supports(model, "tta"):
            raise TypeError(f"{type(model).__name__} does not implement the HebbianHooks")
        tta_begin = getattr(model, "tta_begin", None)
        if tta_begin is not None:
            tta_begin()
        self._anchor = {"input": model.tta_input_layer().weight.detach().clone()}
        for name, p in model.tta_modulator().named_parameters():
            self._anchor[f"mod.{name}"] = p.detach().clone()

    def adapt(self, model: HebbianHooks, xs: Sequence[Any]) -> dict[str, float]:
        """One bounded NHL step on an unlabelled batch; returns the loss and the drift."""
        if not self._anchor:
            self.begin(model)
        out = {"loss": float("nan"), "drift": 0.0}
        if not xs:
            return out
        layer, mod = model.tta_input_layer(), model.tta_modulator()
        encoded = model.tta_encode(xs)
        drifts = []
        if self.hebbian:
            dw = soft_hebb_delta(layer.weight, encoded, self.temperature, self.eta)
            drifts.append(_bounded_add(layer.weight, dw, self._anchor["input"],
                                       self.max_step, self.max_drift))
        if self.modulator:
            params = dict(mod.named_parameters())
            mod.train()
            try:
                loss = model.tta_loss(xs, encoded)
            finally:
                mod.eval()
            out["loss"] = float(loss.detach())
            if torch.isfinite(loss) and params:
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                with torch.no_grad():
                    for (name, p), g in zip(params.items(), grads, strict=True):
                        if g is None or not torch.isfinite(g).all():
                            continue
                        drifts.append(_bounded_add(p, -self.lr * g, self._anchor[f"mod.{name}"],
                                                   self.max_step, self.max_drift))
        out["drift"] = max(drifts, default=0.0)
        return out
