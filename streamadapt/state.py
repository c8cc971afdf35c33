"""Safe serialisation of adapter state.

An adapter's ``state_dict()`` is a nested structure of ``dict`` (string keys), ``list``,
``tuple``, ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``, ``torch.Tensor`` and
``numpy.ndarray`` (stored as a tensor). :func:`dumps` writes it with ``torch.save``;
:func:`loads` reads it with ``torch.load(weights_only=True)``, which refuses arbitrary
objects, so loading a checkpoint never executes code from it.

river models have no tensor form; their adapters store them as a pickle that
:func:`restricted_unpickle` reads back while allowing only river classes and a short list
of containers from the standard library and numpy.

>>> import numpy as np
>>> state = loads(dumps({"w": np.arange(3.0), "n": 2, "name": "x"}))
>>> state["w"].tolist(), state["n"], state["name"]
([0.0, 1.0, 2.0], 2, 'x')
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import torch

__all__ = [
    "dumps",
    "loads",
    "restricted_unpickle",
    "UnsafeStateError",
    "optimizer_state",
    "load_optimizer_state",
]


class UnsafeStateError(pickle.UnpicklingError):
    """A state blob asked for an object that is not on the allow-list."""


def _to_safe(obj: Any, path: str = "state") -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: keys must be str, got {type(k).__name__} {k!r}")
            out[k] = _to_safe(v, f"{path}.{k}")
        return out
    if isinstance(obj, list | tuple):
        return [_to_safe(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, str | bytes | bool | int | float | torch.Tensor):
        return obj
    raise TypeError(f"{path}: cannot store {type(obj).__name__} in a state dict")


def dumps(state: dict[str, Any]) -> bytes:
    """Serialise a state dict to bytes (see the module docstring for what it may hold)."""
    buf = io.BytesIO()
    torch.save(_to_safe(state), buf)
    return buf.getvalue()


def loads(blob: bytes) -> dict[str, Any]:
    """Read a state dict written by :func:`dumps`; never runs code from the blob."""
    return torch.load(io.BytesIO(blob), weights_only=True)


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A torch optimizer's state in the safe format (parameter indices as str keys)."""
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load :func:`optimizer_state` output back (``betas`` come back as tuples)."""
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g)
              for g in state["param_groups"]]
    opt.load_state_dict({"state": {int(k): v for k, v in state["state"].items()},
                         "param_groups": groups})


_ALLOWED_GLOBALS: set[tuple[str, str]] = {
    ("builtins", "float"),
    ("builtins", "int"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("collections", "Counter"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("functools", "partial"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
    ("random", "Random"),
}


def _river_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for pickled bound methods of river objects (e.g. TargetStandardScaler
    keeps ``self._scale``): only on river instances, never for dunder names."""
    if not type(obj).__module__.startswith("river.") or name.startswith("__"):
        raise UnsafeStateError(f"refusing getattr({type(obj).__name__}, {name!r})")
    return getattr(obj, name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _river_getattr
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "river" or module.startswith("river."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise UnsafeStateError(f"refusing to load {module}.{name}: not an allowed state type")


def restricted_unpickle(blob: bytes) -> Any:
    """Unpickle river model state, allowing only river classes and plain containers.

    >>> import os, pickle
    >>> restricted_unpickle(pickle.dumps(os.system))
    Traceback (most recent call last):
    ...
    streamadapt.state.UnsafeStateError: refusing to load posix.system: not an allowed state type
    """
    return _RestrictedUnpickler(io.BytesIO(blob)).load()
