"""The model registry: every adapter the CLI and the settings can name.

Adapter modules register factories with :func:`register`; :data:`MODULES` lists the modules
imported on first use, so adding a model is one decorator plus one line here.

>>> sorted(n for n in model_names("ctr") if n.startswith("river"))[:2]
['river-fm', 'river-logreg']
>>> make_model("nonexistent")
Traceback (most recent call last):
...
ValueError: unknown model 'nonexistent'; valid choices: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from streamadapt.adapters.base import Adapter

__all__ = ["ModelSpec", "register", "make_model", "model_names", "specs", "MODULES"]

#: Modules that hold registered adapters, imported lazily.
MODULES: list[str] = [
    "streamadapt.adapters.river_models",
    "streamadapt.adapters.naive",
    "streamadapt.adapters.liquid",
    "streamadapt.adapters.mlp",
    "streamadapt.adapters.river_forecasters",
    "streamadapt.adapters.ctr_net",
    "streamadapt.adapters.reloop2",
    "streamadapt.tta.model",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    factory: Callable[..., Adapter]
    summary: str
    #: A reference that learns no concept (persistence, the running click rate): its loss
    #: cannot show drift, so it is never the model a drift monitor watches by default.
    baseline: bool = False


_SPECS: dict[str, ModelSpec] = {}
_loaded = False


def register(name: str, task: str, summary: str, baseline: bool = False
             ) -> Callable[[Callable[..., Adapter]], Callable[..., Adapter]]:
    """Decorator registering an adapter factory (a class or a function) under ``name``."""

    def deco(factory: Callable[..., Adapter]) -> Callable[..., Adapter]:
        if name in _SPECS and _SPECS[name].factory is not factory:
            raise ValueError(f"model name {name!r} registered twice")
        _SPECS[name] = ModelSpec(name, task, factory, summary, baseline)
        return factory

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for mod in MODULES:
            importlib.import_module(mod)
        _loaded = True


def specs() -> dict[str, ModelSpec]:
    _load()
    return dict(_SPECS)


def model_names(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those for one task."""
    return [n for n, s in specs().items() if task is None or s.task == task]


def make_model(name: str, task: str | None = None, **params: object) -> Adapter:
    """Build a fresh adapter by registered name; ``params`` go to its constructor."""
    all_specs = specs()
    if name not in all_specs:
        valid = ", ".join(sorted(model_names(task)))
        raise ValueError(f"unknown model {name!r}; valid choices: {valid}")
    spec = all_specs[name]
    if task is not None and spec.task != task:
        valid = ", ".join(sorted(model_names(task)))
        raise ValueError(
            f"model {name!r} is for task {spec.task!r}, not {task!r}; valid choices: {valid}"
        )
    return spec.factory(**params)
