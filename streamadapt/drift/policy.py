"""The adaptation policy: which actions a detection on each signal triggers.

Actions (each one switched on per signal, each with its own setting):

``tta``
    A window of neuro-modulated Hebbian test-time adaptation
    (:class:`~streamadapt.tta.nhl.NHL`) on the next ``tta_events`` unlabelled inputs. It
    targets covariate drift, so by default an *input* detection triggers it.
``lr_boost``
    The learning rate multiplied by ``lr_boost`` for the next ``lr_boost_events`` inputs,
    so supervised learning catches a new concept sooner (a *loss* detection).
``memory_refresh``
    The error memory reset or decayed (ReLoop2 refresh; Zhu et al., KDD 2023), so stale
    corrections stop being applied (a *loss* detection).

An action the primary model has no hook for (see :mod:`streamadapt.tta.hooks`) is skipped
and recorded as such.

>>> p = AdaptationPolicy(on_loss=("lr_boost",), on_input=("tta",))
>>> p.actions_for("loss"), p.actions_for("input")
(('lr_boost',), ('tta',))
>>> AdaptationPolicy(on_loss=("retrain",))
Traceback (most recent call last):
...
ValueError: unknown action 'retrain' in on_loss; valid choices: tta, memory_refresh, lr_boost
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AdaptationPolicy", "ACTIONS", "SIGNALS", "DEFAULT_ACTIONS"]

ACTIONS = ("tta", "memory_refresh", "lr_boost")
SIGNALS = ("loss", "input")

#: The service's default policy per task: what a detection on each signal triggers on the
#: task's default model (``liquid`` has no error memory, so no ``memory_refresh``).
DEFAULT_ACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "forecast": {"loss": ("tta", "lr_boost"), "input": ("tta",)},
    "ctr": {"loss": ("tta", "lr_boost", "memory_refresh"), "input": ("tta",)},
}


@dataclass(frozen=True)
class AdaptationPolicy:
    """Detection -> actions, and how long each lasting action lasts.

    Parameters
    ----------
    on_loss
        Actions a detection on the loss signal triggers.
    on_input
        Actions a detection on the input signal triggers.
    tta_events
        Unlabelled inputs adapted after a trigger.
    lr_boost
        Learning-rate multiplier of the boost.
    lr_boost_events
        Inputs the boost lasts.
    """

    on_loss: tuple[str, ...] = ("lr_boost", "memory_refresh")
    on_input: tuple[str, ...] = ("tta",)
    tta_events: int = 2000
    lr_boost: float = 3.0
    lr_boost_events: int = 2000

    def __post_init__(self) -> None:
        for name in ("on_loss", "on_input"):
            acts = tuple(getattr(self, name))
            object.__setattr__(self, name, acts)
            for a in acts:
                if a not in ACTIONS:
                    raise ValueError(
                        f"unknown action {a!r} in {name}; valid choices: {', '.join(ACTIONS)}"
                    )
        if self.tta_events < 1 or self.lr_boost_events < 1:
            raise ValueError(
                f"tta_events and lr_boost_events must be >= 1, got {self.tta_events}, "
                f"{self.lr_boost_events}"
            )
        if not self.lr_boost > 0:
            raise ValueError(f"lr_boost must be > 0, got {self.lr_boost}")

    def actions_for(self, signal: str) -> tuple[str, ...]:
        """The actions a detection on ``signal`` triggers."""
        if signal == "loss":
            return self.on_loss
        if signal == "input":
            return self.on_input
        raise ValueError(f"unknown signal {signal!r}; valid choices: {', '.join(SIGNALS)}")
