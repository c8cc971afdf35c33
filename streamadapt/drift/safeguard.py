"""The safeguard of an adaptation: a shadow model, a judged window, keep or roll back.

When a detection triggers actions, a :class:`Trial` starts: it copies the primary model into
a *shadow* that receives none of the actions (a copy of its state dict in the safe format,
so nothing is shared). While the trial runs

* the shadow predicts every input the primary predicts, at the same moment, so both are
  scored on the same events with predictions made before their labels (prequential);
* the shadow learns from the same labels as the primary (``shadow_learns``; the shadow is
  frozen with respect to the adaptation, not to supervised learning, so rolling back does
  not throw away the labels seen meanwhile);
* a *collapse check* compares the spread of the adapted and shadow predictions
  (standard deviation for forecasts, mean binary entropy for clicks), pooled over every
  ``collapse_min`` adapted inputs; an adapted spread below ``collapse_ratio`` times the
  shadow's resets the primary at once (outcome ``reset``).

The judged events are taken in blocks of ``judge_window``. After each block the mean loss
of the adapted model over that block is compared with the shadow's: above ``(1 + tolerance)``
times the shadow's, the change is ``rolled_back`` at once (the primary takes the shadow's
state); after ``1 + confirm_blocks`` good blocks in a row it is ``kept`` and the shadow is
dropped. Confirming on later blocks matters because an adaptation can help at first and hurt
once supervised learning resumes on top of it (measured on the load-scale benchmark). A trial
whose judged events do not complete its blocks within ``max_wait`` inputs is rolled back: an
unverified change is not kept.

>>> from streamadapt.adapters.naive import LastValue
>>> t = Trial(LastValue(), ("tta",), judge_window=2, confirm_blocks=1)
>>> t.judge(np.array([1.0, 1.0]), np.array([2.0, 2.0])) is None   # one good block: wait
True
>>> t.judge(np.array([1.0, 1.0]), np.array([2.0, 2.0]))
'kept'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamadapt import state as state_io
from streamadapt.adapters.base import Adapter

__all__ = ["Trial", "spread", "OUTCOMES"]

OUTCOMES = ("kept", "rolled_back", "reset")


def _eid(x: Any) -> str:
    return x.event_id or f"{getattr(x, 'key', '')}@{x.timestamp!r}"


def copy_model(model: Adapter) -> Adapter:
    """An independent copy of ``model`` through its safe state dict (copied in memory:
    :func:`~streamadapt.state.copy_state`)."""
    twin = model.clone()
    twin.load_state_dict(state_io.copy_state(model.state_dict()))
    return twin


def spread(task: str, preds: np.ndarray) -> float:
    """Prediction spread: standard deviation (forecast) or mean binary entropy (ctr)."""
    p = np.asarray(preds, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    if task == "ctr":
        q = np.clip(p, 1e-6, 1 - 1e-6)
        return float(-(q * np.log(q) + (1 - q) * np.log1p(-q)).mean())
    return float(p.std())


class Trial:
    """One adaptation under judgement. See the module docstring.

    Parameters
    ----------
    model
        The primary model, copied into the shadow *before* any action is applied.
    actions
        The actions under judgement.
    judge_window
        Labelled events scored on both models before the decision.
    tolerance
        Relative loss excess of the adapted model still accepted.
    collapse_ratio
        Adapted spread below this fraction of the shadow's is a collapse.
    confirm_blocks
        Good blocks needed after the first before the change is kept.
    max_wait
        Inputs after which an undecided trial is rolled back.
    collapse_min
        Adapted inputs pooled per collapse check.
    shadow_learns
        Whether the shadow learns from the labels that arrive during the trial.
    """

    def __init__(self, model: Adapter, actions: Sequence[str], judge_window: int = 500,
                 tolerance: float = 0.0, collapse_ratio: float = 0.2, max_wait: int = 20_000,
                 shadow_learns: bool = True, confirm_blocks: int = 2,
                 collapse_min: int = 64) -> None:
        if judge_window < 1 or confirm_blocks < 0:
            raise ValueError(f"need judge_window >= 1 and confirm_blocks >= 0, got "
                             f"{judge_window}, {confirm_blocks}")
        self.actions = tuple(actions)
        self.judge_window = judge_window
        self.tolerance = tolerance
        self.collapse_ratio = collapse_ratio
        self.max_wait = max_wait
        self.shadow_learns = shadow_learns
        self.confirm_blocks = confirm_blocks
        self.collapse_min = collapse_min
        self._pool_adapted: list[float] = []
        self._pool_shadow: list[float] = []
        self.shadow = copy_model(model)
        self.task = model.task
        self.seen = 0  # inputs predicted during the trial
        self._shadow_preds: dict[str, float] = {}
        self.adapted_loss = 0.0
        self.shadow_loss = 0.0
        self.n_judged = 0
        # per-event losses of the block being filled: (adapted, shadow)
        self._block: list[tuple[float, float]] = []
        self.good_blocks = 0

    def before_predict(self, xs: Sequence[Any]) -> None:
        """Remember the shadow's predictions for ``xs`` (same moment as the primary's)."""
        self.seen += len(xs)
        preds = self.shadow.predict_many(xs)
        for x, p in zip(xs, preds.tolist(), strict=True):
            self._shadow_preds[_eid(x)] = p

    def collapsed(self, xs: Sequence[Any], adapted: np.ndarray) -> bool:
        """True when the adapted predictions lost their spread. Predictions are pooled
        until ``collapse_min`` inputs have come (a micro-batch of a few links, or one
        wave of them, has too few values for a spread to mean anything), then compared
        with the shadow's on the same inputs."""
        self._pool_adapted.extend(np.asarray(adapted, dtype=np.float64).tolist())
        self._pool_shadow.extend(self._shadow_preds.get(_eid(x), np.nan) for x in xs)
        if len(self._pool_adapted) < self.collapse_min:
            return False
        ref = spread(self.task, np.array(self._pool_shadow))
        got = spread(self.task, np.array(self._pool_adapted))
        self._pool_adapted, self._pool_shadow = [], []
        return bool(np.isfinite(ref) and ref > 1e-12 and got < self.collapse_ratio * ref)

    def after_learn(self, xs: Sequence[Any], y: np.ndarray, adapted_loss: np.ndarray,
                    loss_fn: Any) -> np.ndarray:
        """Score the judged events among ``xs`` and teach the shadow their labels; returns
        the shadow's per-event losses on the judged events (empty when none)."""
        idx = [i for i, x in enumerate(xs) if _eid(x) in self._shadow_preds]
        shadow_loss = np.empty(0)
        if idx:
            sp = np.array([self._shadow_preds.pop(_eid(xs[i])) for i in idx])
            shadow_loss = loss_fn(y[idx], sp)
            self._add(adapted_loss[idx], shadow_loss)
        if self.shadow_learns:
            self.shadow.learn_many(xs, y)
        return shadow_loss

    def _add(self, adapted: np.ndarray, shadow: np.ndarray) -> None:
        a, b = np.asarray(adapted, dtype=np.float64), np.asarray(shadow, dtype=np.float64)
        self.adapted_loss += float(a.sum())
        self.shadow_loss += float(b.sum())
        self.n_judged += len(a)
        self._block.extend(zip(a.tolist(), b.tolist(), strict=True))

    def judge(self, adapted: np.ndarray | None = None, shadow: np.ndarray | None = None
              ) -> str | None:
        """``"kept"``/``"rolled_back"`` once decided, else None. Arrays, when given, are
        per-event losses of judged events to add first (for tests and direct use)."""
        if adapted is not None and shadow is not None:
            self._add(adapted, shadow)
        w = self.judge_window
        while len(self._block) >= w:
            block, self._block = self._block[:w], self._block[w:]
            a = sum(v[0] for v in block) / w
            s = sum(v[1] for v in block) / w
            if a > s * (1 + self.tolerance) + 1e-12:
                return "rolled_back"
            self.good_blocks += 1
            if self.good_blocks > self.confirm_blocks:
                return "kept"
        if self.seen >= self.max_wait:
            return "rolled_back"
        return None

    def restore(self, model: Adapter) -> None:
        """Give ``model`` the shadow's state (roll back or reset)."""
        model.load_state_dict(state_io.copy_state(self.shadow.state_dict()))

    def state_dict(self) -> dict[str, Any]:
        """The trial in the safe state format: settings, counters, the open block, the
        shadow's predictions waiting for labels and the shadow model itself."""
        block = np.array(self._block, dtype=np.float64).reshape(-1, 2)
        return {
            "actions": list(self.actions), "judge_window": self.judge_window,
            "tolerance": self.tolerance, "collapse_ratio": self.collapse_ratio,
            "max_wait": self.max_wait, "shadow_learns": self.shadow_learns,
            "confirm_blocks": self.confirm_blocks, "seen": self.seen,
            "adapted_loss": self.adapted_loss, "shadow_loss": self.shadow_loss,
            "n_judged": self.n_judged, "good_blocks": self.good_blocks, "block": block,
            "collapse_min": self.collapse_min,
            "pool": np.array([self._pool_adapted, self._pool_shadow],
                             dtype=np.float64).reshape(2, -1),
            "pending_ids": list(self._shadow_preds),
            "pending_preds": np.array(list(self._shadow_preds.values()), dtype=np.float64),
            "shadow": self.shadow.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, model: Adapter, state: dict[str, Any]) -> Trial:
        """A trial restored from :meth:`state_dict`; ``model`` is the (restored) primary,
        only used to build the shadow, whose state then comes from ``state``."""
        t = cls(model, state["actions"], int(state["judge_window"]), float(state["tolerance"]),
                float(state["collapse_ratio"]), int(state["max_wait"]),
                bool(state["shadow_learns"]), int(state["confirm_blocks"]),
                int(state["collapse_min"]))
        t.shadow.load_state_dict(state["shadow"])
        t.seen, t.n_judged = int(state["seen"]), int(state["n_judged"])
        t.adapted_loss, t.shadow_loss = float(state["adapted_loss"]), float(state["shadow_loss"])
        t.good_blocks = int(state["good_blocks"])
        pool = np.asarray(state["pool"], dtype=np.float64).reshape(2, -1)
        t._pool_adapted, t._pool_shadow = pool[0].tolist(), pool[1].tolist()
        block = np.asarray(state["block"], dtype=np.float64).reshape(-1, 2)
        t._block = [(float(a), float(b)) for a, b in block.tolist()]
        preds = np.asarray(state["pending_preds"], dtype=np.float64).reshape(-1)
        t._shadow_preds = dict(zip(state["pending_ids"], preds.tolist(), strict=True))
        return t

    def summary(self) -> dict[str, float | int]:
        n = max(self.n_judged, 1)
        return {"adapted_loss": self.adapted_loss / n, "shadow_loss": self.shadow_loss / n,
                "n_judged": self.n_judged}
