"""An online gate on ReLoop2's lambda: keep the memory's correction only while it helps.

ReLoop2 (Zhu et al., KDD 2023, arXiv 2306.08808) adds ``lam * y_err`` to the base prediction
with a fixed ``lam``. This gate goes beyond the paper: it compares, on the same labelled
events, the loss of the base prediction with the loss of the full-strength correction
(``lam = lam_max``), both as the model would have predicted before learning those events,
and moves the effective lambda between 0 and ``lam_max``.

The rule (sign steps on exponentially weighted losses):

* Running losses over labelled events, each event's weight shrinking by ``1 - 1 / window``
  per later event: ``L = S / W`` with ``S <- beta^n S + sum(losses)``,
  ``W <- beta^n W + n`` for a batch of ``n`` events, ``beta = 1 - 1 / window``.
* After each batch, with ``d = L_corrected - L_base``: if ``d > margin * L_base`` (the
  correction hurts) the effective lambda drops by ``lam_max * n / swing``; if
  ``d < -margin * L_base`` (it helps) it rises by as much; otherwise it stays. It is clipped
  to ``[0, lam_max]``, so ``swing`` labelled events take it from one end to the other.

Because the corrected loss is taken at ``lam_max``, not at the effective lambda, the signal
does not vanish once the gate has closed: a memory that starts to help again reopens it.

Loss per event: log loss (probabilities clipped to ``[1e-7, 1 - 1e-7]``) for clicks,
absolute error for forecasts (:func:`event_loss`).

>>> import numpy as np
>>> gate = LambdaGate(lam_max=0.5, window=100, swing=200)
>>> y = np.ones(50)
>>> for _ in range(4):  # the correction always predicts worse than the base
...     lam = gate.update(event_loss("ctr", y, np.full(50, 0.7)),
...                       event_loss("ctr", y, np.full(50, 0.4)))
>>> lam, round(gate.loss_base, 4), round(gate.loss_corrected, 4)
(0.0, 0.3567, 0.9163)
>>> for _ in range(2):  # then it helps: the gate reopens, half way after 100 events
...     lam = gate.update(np.full(50, 1.0), np.full(50, 0.1))
>>> lam
0.25
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# the per-event loss that also judges drift adaptations (log loss, absolute error)
from streamadapt.drift.signals import event_loss

__all__ = ["LambdaGate", "event_loss", "LOSSES"]

#: The loss the gate compares, per task.
LOSSES = {"ctr": "log loss", "forecast": "absolute error"}


class LambdaGate:
    """Effective lambda in ``[0, lam_max]``, moved by the sign of the running loss gap.

    Parameters
    ----------
    lam_max
        Upper bound (and starting value) of the effective lambda, ``>= 0``.
    window
        Effective number of recent labelled events in the running losses (``>= 1``).
    swing
        Labelled events for the effective lambda to travel from ``lam_max`` to 0 or back
        (``>= 1``).
    margin
        Relative dead zone: no move while ``|L_corrected - L_base| <= margin * L_base``
        (in ``[0, 1)``).
    """

    def __init__(self, lam_max: float, window: int = 2000, swing: int = 2000,
                 margin: float = 0.0) -> None:
        self.check_params(lam_max, window, swing, margin)
        self.lam_max = float(lam_max)
        self.window = int(window)
        self.swing = int(swing)
        self.margin = float(margin)
        self.reset()

    @staticmethod
    def check_params(lam_max: float, window: int, swing: int, margin: float) -> None:
        """Raise ``ValueError`` naming the first bad value and its valid range."""
        if not (math.isfinite(lam_max) and lam_max >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam_max}")
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"gate_window must be an integer >= 1, got {window!r}")
        if not (isinstance(swing, int) and swing >= 1):
            raise ValueError(f"gate_swing must be an integer >= 1, got {swing!r}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"gate_margin must be in [0, 1), got {margin}")

    def reset(self) -> None:
        """Back to ``lam_max`` with no loss history."""
        self.lam = self.lam_max
        self._sum_base = 0.0
        self._sum_corrected = 0.0
        self._weight = 0.0

    @property
    def loss_base(self) -> float:
        """Running loss of the base prediction (NaN before any labelled event)."""
        return self._sum_base / self._weight if self._weight > 0 else math.nan

    @property
    def loss_corrected(self) -> float:
        """Running loss of the full-strength correction (NaN before any labelled event)."""
        return self._sum_corrected / self._weight if self._weight > 0 else math.nan

    def update(self, loss_base: np.ndarray, loss_corrected: np.ndarray) -> float:
        """Add a batch of per-event losses (same events, same order); return the new
        effective lambda. Non-finite pairs are ignored."""
        lb = np.asarray(loss_base, dtype=np.float64).reshape(-1)
        lc = np.asarray(loss_corrected, dtype=np.float64).reshape(-1)
        if lb.shape != lc.shape:
            raise ValueError(f"got {lb.size} base losses and {lc.size} corrected losses")
        ok = np.isfinite(lb) & np.isfinite(lc)
        n = int(ok.sum())
        if n == 0:
            return self.lam
        keep = (1.0 - 1.0 / self.window) ** n
        self._sum_base = keep * self._sum_base + float(lb[ok].sum())
        self._sum_corrected = keep * self._sum_corrected + float(lc[ok].sum())
        self._weight = keep * self._weight + n
        gap = self.loss_corrected - self.loss_base
        step = self.lam_max * n / self.swing
        if gap > self.margin * self.loss_base:
            self.lam = max(0.0, self.lam - step)
        elif gap < -self.margin * self.loss_base:
            self.lam = min(self.lam_max, self.lam + step)
        return self.lam

    def stats(self) -> dict[str, float]:
        """``lam_eff``, ``loss_base`` and ``loss_corrected`` (NaN before any label)."""
        return {"lam_eff": self.lam, "loss_base": self.loss_base,
                "loss_corrected": self.loss_corrected}

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "sum_base": self._sum_base,
                "sum_corrected": self._sum_corrected, "weight": self._weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = float(state["lam"])
        if not 0.0 <= lam <= self.lam_max:
            raise ValueError(f"gate lambda {lam} outside [0, {self.lam_max}]")
        self.lam = lam
        self._sum_base = float(state["sum_base"])
        self._sum_corrected = float(state["sum_corrected"])
        self._weight = float(state["weight"])
