"""The small protocols an adapter implements to take part in drift adaptation.

A torch adapter adopts neuro-modulated Hebbian test-time adaptation (:mod:`.nhl`) by
implementing :class:`HebbianHooks`; nothing else about it has to change:

``tta_encode(xs) -> Tensor``
    The batch as the input layer sees it, shape ``(n, in_features)``, no gradient.
``tta_input_layer() -> torch.nn.Linear``
    The layer the soft Hebbian rule updates (its ``weight``; the bias is left alone).
``tta_modulator() -> torch.nn.Module``
    The small layer after it whose parameters the unsupervised loss trains. It may hold
    buffers (running statistics) that it refreshes itself while in training mode.
``tta_loss(xs, encoded) -> Tensor``
    A scalar unsupervised loss computed with gradients from ``encoded`` through the
    current weights: prediction entropy for clicks, a self-supervised loss for forecasting.

Two optional hooks serve the other adaptation actions of
:class:`~streamadapt.drift.policy.AdaptationPolicy`:

``set_lr_scale(scale)``
    Multiply the adapter's learning rate by ``scale`` (1.0 restores it) - the learning-rate
    boost.
``refresh_memory()`` (or ``reset_memory()``, the name the ReLoop2 adapter uses)
    Reset or decay an error memory (ReLoop2-style adapters) - the memory refresh; call it
    through :func:`refresh_memory`.

Two more optional hooks, for wrappers and for models whose support depends on their
configuration:

``adaptation_actions() -> frozenset[str]``
    The actions the model supports. When present it decides what :func:`supports` answers
    (the protocols are not consulted): a wrapper such as
    :class:`~streamadapt.adapters.reloop2.ReLoop2` defines every hook and forwards it to its
    base, but supports only what the base supports (plus its own memory refresh).
``tta_begin()``
    Called by :meth:`~streamadapt.tta.nhl.NHL.begin` before a window of test-time
    adaptation. ReLoop2 empties its error memory there: its keys and stored base
    predictions come from the base model as it was, and adaptation moves it.

Hidden state stays with the caller (ncps style): these hooks never keep a per-key state,
and test-time adaptation never writes one (a forecaster's per-link states are read, never
advanced, by ``tta_encode`` and ``tta_loss``).

>>> from streamadapt.adapters.naive import LastValue
>>> supports(LastValue(), "tta"), supports(LastValue(), "lr_boost")
(False, False)
>>> from streamadapt.adapters.registry import make_model
>>> sorted(supported_actions(make_model("ctr-net+reloop2")))
['lr_boost', 'memory_refresh', 'tta']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["HebbianHooks", "SupportsLRScale", "SupportsMemoryRefresh", "refresh_memory",
           "supported_actions", "supports"]


@runtime_checkable
class HebbianHooks(Protocol):
    def tta_encode(self, xs: Sequence[Any]) -> torch.Tensor: ...

    def tta_input_layer(self) -> torch.nn.Linear: ...

    def tta_modulator(self) -> torch.nn.Module: ...

    def tta_loss(self, xs: Sequence[Any], encoded: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SupportsLRScale(Protocol):
    def set_lr_scale(self, scale: float) -> None: ...


@runtime_checkable
class SupportsMemoryRefresh(Protocol):
    def refresh_memory(self) -> None: ...


@runtime_checkable
class _SupportsMemoryReset(Protocol):
    def reset_memory(self) -> None: ...


_BY_ACTION: dict[str, tuple[type, ...]] = {
    "tta": (HebbianHooks,),
    "lr_boost": (SupportsLRScale,),
    "memory_refresh": (SupportsMemoryRefresh, _SupportsMemoryReset),
}


def refresh_memory(model: object) -> None:
    """Call the model's ``refresh_memory()``, or its ``reset_memory()``."""
    if isinstance(model, SupportsMemoryRefresh):
        model.refresh_memory()
    elif isinstance(model, _SupportsMemoryReset):
        model.reset_memory()
    else:
        raise TypeError(f"{type(model).__name__} has no refresh_memory() or reset_memory()")


def supported_actions(model: object) -> frozenset[str]:
    """The adaptation actions ``model`` supports: its ``adaptation_actions()`` when it has
    one, otherwise every action whose hooks it implements."""
    declared = getattr(model, "adaptation_actions", None)
    if declared is None:
        return frozenset(a for a, types in _BY_ACTION.items()
                         if any(isinstance(model, t) for t in types))
    actions = frozenset(declared())
    unknown = sorted(actions - _BY_ACTION.keys())
    if unknown:
        raise ValueError(f"{type(model).__name__}.adaptation_actions() names unknown actions "
                         f"{unknown}; valid choices: {', '.join(_BY_ACTION)}")
    return actions


def supports(model: object, action: str) -> bool:
    """Whether ``model`` supports ``action`` (see :func:`supported_actions`)."""
    if action not in _BY_ACTION:
        raise ValueError(f"unknown action {action!r}; valid choices: {', '.join(_BY_ACTION)}")
    return action in supported_actions(model)
