"""Safe serialisation of adapter state.

An adapter's ``state_dict()`` is a nested structure of ``dict`` (string keys), ``list``,
``tuple``, ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``, ``torch.Tensor`` and
``numpy.ndarray`` (stored as a tensor). :func:`dumps` writes it with ``torch.save``;
:func:`loads` reads it with ``torch.load(weights_only=True)``, which refuses arbitrary
objects, so loading a checkpoint never executes code from it.

river models and drift detectors have no tensor form; their adapters store them as a
pickle (``bytes`` inside the state dict) that :func:`restricted_unpickle` reads back with a
pickle machine of its own: a global resolves only through an exact allow-list (the river
classes the registered models use, a few standard-library and numpy containers; nothing is
imported by name from the blob), and every opcode that calls, creates or modifies something
is checked against it, so a blob cannot call ``os.system``, ``eval``, a ``getattr`` gadget or
any other object. :func:`check_state` runs that check over every pickle in a loaded state
dict, which is how a checkpoint is vetted before any of it reaches a model.

>>> import numpy as np
>>> state = loads(dumps({"w": np.arange(3.0), "n": 2, "name": "x"}))
>>> state["w"].tolist(), state["n"], state["name"]
([0.0, 1.0, 2.0], 2, 'x')
"""

from __future__ import annotations

import collections
import functools
import importlib
import io
import pickle
import random
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "dumps",
    "loads",
    "copy_state",
    "restricted_unpickle",
    "check_state",
    "allowed_globals",
    "UnsafeStateError",
    "RIVER_CLASSES",
    "RIVER_CALLABLES",
    "RIVER_BOUND_METHODS",
    "STDLIB_CALLABLES",
    "NUMPY_GLOBALS",
    "optimizer_state",
    "load_optimizer_state",
]


class UnsafeStateError(pickle.UnpicklingError):
    """A state blob asked for a global, a call or a change that the allow-list refuses."""


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


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """What ``loads(dumps(state))`` gives, without the bytes in between: the same
    structure (arrays as tensors, tuples as lists), every tensor a copy of its own, so
    nothing is shared with ``state``. A model copied this way (the drift safeguard's
    shadow) costs a memory copy instead of a serialisation.

    >>> import numpy as np
    >>> w = np.arange(3.0)
    >>> twin = copy_state({"w": w, "pair": (1, 2)})
    >>> w[0] = 9.0
    >>> twin["w"].tolist(), twin["pair"]
    ([0.0, 1.0, 2.0], [1, 2])
    """
    return _cloned(_to_safe(state))


def _cloned(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _cloned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cloned(v) for v in obj]
    return obj


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


# -- river state: a pickle machine with an exact allow-list -----------------------------------

#: river classes whose instances the registered river models and drift detectors hold. A
#: state pickle may create them (``cls.__new__``, without running ``__init__``) and restore
#: their attributes, and do nothing else with river.
RIVER_CLASSES: tuple[tuple[str, str], ...] = (
    ("river._river_rust.drift", "AdaptiveWindowing"),
    ("river._river_rust.stats", "RsEWMean"),
    ("river.compose.pipeline", "Pipeline"),
    ("river.drift.adwin", "ADWIN"),
    ("river.drift.binary.ddm", "DDM"),
    ("river.drift.binary.eddm", "EDDM"),
    ("river.drift.binary.fhddm", "FHDDM"),
    ("river.drift.binary.hddm_a", "HDDMA"),
    ("river.drift.binary.hddm_w", "HDDMW"),
    ("river.drift.binary.hddm_w", "SampleInfo"),
    ("river.drift.kswin", "KSWIN"),
    ("river.drift.page_hinkley", "PageHinkley"),
    ("river.facto.fm", "FMClassifier"),
    ("river.linear_model.lin_reg", "LinearRegression"),
    ("river.linear_model.log_reg", "LogisticRegression"),
    ("river.optim.initializers", "Normal"),
    ("river.optim.initializers", "Zeros"),
    ("river.optim.losses", "Log"),
    ("river.optim.losses", "Squared"),
    ("river.optim.schedulers", "Constant"),
    ("river.optim.sgd", "SGD"),
    ("river.preprocessing.scale", "StandardScaler"),
    ("river.preprocessing.scale_target", "TargetStandardScaler"),
    ("river.stats.ewmean", "EWMean"),
    ("river.stats.mean", "Mean"),
    ("river.stats.var", "Var"),
    ("river.time_series.holt_winters", "HoltWinters"),
    ("river.time_series.snarimax", "Differencer"),
    ("river.time_series.snarimax", "SNARIMAX"),
)

#: river types a state pickle rebuilds by calling them with plain arguments: the sparse
#: vector of the linear models, and the components of Holt-Winters (deques, refilled with
#: their items).
RIVER_CALLABLES: tuple[tuple[str, str], ...] = (
    ("river._river_rust.vectordict", "VectorDict"),
    ("river.time_series.holt_winters", "AdditiveLevel"),
    ("river.time_series.holt_winters", "AdditiveSeason"),
    ("river.time_series.holt_winters", "Trend"),
)

#: Bound methods that river objects keep as attributes: the comparison a PageHinkley runs
#: and the target transforms of a TargetStandardScaler. A pickle stores one as
#: ``builtins.getattr(obj, name)``; that global resolves to a function that accepts exactly
#: these (class, method) pairs, binds the class's own method and refuses anything else.
RIVER_BOUND_METHODS: dict[tuple[str, str], tuple[str, ...]] = {
    ("river.drift.page_hinkley", "PageHinkley"): ("_test_both", "_test_decrease",
                                                  "_test_increase"),
    ("river.preprocessing.scale_target", "TargetStandardScaler"): ("_scale", "_unscale"),
}

#: Standard-library types river objects hold: running statistics tables, windows, the
#: random generator of KSWIN, the latent initialiser of the factorisation machine.
STDLIB_CALLABLES: tuple[tuple[str, str], ...] = (
    ("builtins", "float"),
    ("collections", "Counter"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("functools", "partial"),
    ("random", "Random"),
)

#: numpy: arrays, dtypes and scalars, and the legacy ``RandomState`` over ``MT19937`` that
#: river's initialisers draw from (``numpy.core`` is numpy 1's name of ``numpy._core``).
NUMPY_GLOBALS: tuple[tuple[str, str], ...] = (
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
)


@dataclass(frozen=True)
class _Allowlist:
    """The resolved allow-list; membership is by identity (``id``), so checking an object
    never runs any of its code."""

    #: What a global reference in the pickle may resolve to.
    globals: dict[tuple[str, str], Any]
    #: What REDUCE may call.
    callables: frozenset[int]
    #: What NEWOBJ may create.
    classes: frozenset[int]
    #: Types whose state BUILD may restore.
    stateful: frozenset[int]
    #: Types that APPEND(S) may fill through ``deque.extend`` (``list`` is always allowed).
    deques: frozenset[int]
    #: Exact type -> the method names :func:`_bound_method` may bind.
    bound: dict[type, tuple[str, ...]]
    #: Keeps every object above alive, so that the ids stay theirs.
    keep: tuple[Any, ...]


def _resolve(module: str, name: str) -> Any:
    """An allow-listed global by its name in this module (never a name from a blob); None
    when this river or numpy has no such thing, so that a pickle naming it is refused."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _np_multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    return multiarray


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor, for plain ``numpy.ndarray`` only."""
    if subtype is not np.ndarray:
        raise UnsafeStateError(
            f"refusing numpy _reconstruct of {_describe(subtype)}: only numpy.ndarray")
    return _np_multiarray()._reconstruct(np.ndarray, shape, dtype)


def _bit_generator(bit_generator: Any = "MT19937") -> np.random.MT19937:
    """numpy's bit-generator reconstructor, for ``MT19937`` only."""
    if not (bit_generator is np.random.MT19937
            or (type(bit_generator) is str and bit_generator == "MT19937")):
        raise UnsafeStateError(
            f"refusing bit generator {_describe(bit_generator)}: only MT19937")
    return np.random.MT19937()


def _random_state(bit_generator: Any = "MT19937",
                  bit_generator_ctor: Any = None) -> np.random.RandomState:
    """numpy's ``RandomState`` reconstructor, over ``MT19937`` only."""
    if bit_generator_ctor is not None and bit_generator_ctor is not _bit_generator:
        raise UnsafeStateError(
            f"refusing RandomState built by {_describe(bit_generator_ctor)}: only by "
            "numpy.random._pickle.__bit_generator_ctor")
    if type(bit_generator) is not np.random.MT19937:
        bit_generator = _bit_generator(bit_generator)
    return np.random.RandomState(bit_generator)


def _bound_method(obj: Any, name: Any) -> Any:
    """``getattr`` for the bound methods of :data:`RIVER_BOUND_METHODS` only: binds the
    class's own method (never an instance attribute); anything else is refused."""
    names = _allowlist().bound.get(type(obj), ())
    if type(name) is not str or name not in names:
        valid = ", ".join(f"{cls}.{m}" for (_, cls), ms in RIVER_BOUND_METHODS.items()
                          for m in ms)
        raise UnsafeStateError(
            f"refusing builtins.getattr({_describe(obj)}, {name!r}): only these bound "
            f"methods may be stored: {valid}")
    return types.MethodType(getattr(type(obj), name), obj)


_WRAPPED: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "getattr"): _bound_method,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.random._pickle", "__bit_generator_ctor"): _bit_generator,
    ("numpy.random._pickle", "__randomstate_ctor"): _random_state,
}


@functools.cache
def _allowlist() -> _Allowlist:
    multiarray = _np_multiarray()
    found: dict[tuple[str, str], Any] = dict(_WRAPPED)
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        found[(mod, "scalar")] = multiarray.scalar
    found[("numpy", "dtype")] = np.dtype
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy.random._mt19937", "MT19937")] = np.random.MT19937
    for key in STDLIB_CALLABLES + RIVER_CLASSES + RIVER_CALLABLES:
        obj = _resolve(*key)
        if obj is not None:
            found[key] = obj
    river_classes = [found[k] for k in RIVER_CLASSES if k in found]
    deques = [collections.deque] + [found[k] for k in RIVER_CALLABLES[1:] if k in found]
    callables = [found[k] for k in STDLIB_CALLABLES + RIVER_CALLABLES if k in found] + [
        np.dtype, multiarray.scalar, *_WRAPPED.values()]
    stateful = river_classes + [np.ndarray, np.random.MT19937, np.random.RandomState,
                                random.Random, functools.partial]
    bound = {cls: names for k, names in RIVER_BOUND_METHODS.items()
             if (cls := _resolve(*k)) is not None}
    return _Allowlist(
        globals=found,
        callables=frozenset(map(id, callables)),
        classes=frozenset(map(id, river_classes)),
        stateful=frozenset(map(id, stateful)),
        deques=frozenset(map(id, deques)),
        bound=bound,
        keep=(*found.values(), *stateful, *bound),
    )


def allowed_globals() -> list[str]:
    """Every global a state pickle may name, as ``module.name``.

    >>> "collections.deque" in allowed_globals(), "os.system" in allowed_globals()
    (True, False)
    """
    return sorted(f"{m}.{n}" for m, n in _allowlist().globals)


def _describe(obj: Any) -> str:
    """Name an object by its type only (reading its attributes could run its code)."""
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    tp = type(obj)
    if tp is types.FunctionType or tp is types.BuiltinFunctionType:
        return f"function {obj.__module__}.{obj.__qualname__}"
    return f"a {tp.__module__}.{tp.__qualname__} object"


def _is_exact(obj: Any, kinds: tuple[type, ...]) -> bool:
    return any(type(obj) is k for k in kinds)


_MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)


class _StateUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's own pickle machine with every opcode that can call, create or modify
    something checked against the allow-list.

    * a global reference resolves only through the allow-list (nothing is imported);
    * REDUCE calls only allow-listed callables, NEWOBJ creates only allow-listed river
      classes, BUILD restores state only into allow-listed types (through the type's own
      ``__setstate__``, never an instance attribute) and never sets dunder attributes;
    * SETITEM(S), APPEND(S) and ADDITEMS fill only plain dicts, lists, sets and the
      allow-listed deques (through the base type's own method);
    * the opcodes state pickles never use (INST, OBJ, the extension registry, persistent
      ids, out-of-band buffers) are refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob))
        self._allow = _allowlist()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allow.globals.get((module, name))
        if obj is None:
            raise UnsafeStateError(
                f"refusing global {module}.{name}: not on the state allow-list (river "
                "classes of the registered models, a few standard-library and numpy "
                "containers; see streamadapt.state.allowed_globals())")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeStateError("refusing a persistent id: state pickles have none")

    def _op_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if id(func) not in self._allow.callables:
            raise UnsafeStateError(f"refusing to call {_describe(func)}: not an "
                                   "allow-listed constructor")
        if type(args) is not tuple:
            raise UnsafeStateError(f"refusing call arguments of type {_describe(args)}")
        stack[-1] = func(*args)

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if id(cls) not in self._allow.classes:
            raise UnsafeStateError(f"refusing to create {_describe(cls)}: not an "
                                   "allow-listed river class")
        if type(args) is not tuple or type(kwargs) is not dict:
            raise UnsafeStateError(f"refusing arguments to create {_describe(cls)}")
        return cls.__new__(cls, *args, **kwargs)

    def _op_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _op_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _op_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        cls = type(inst)
        if isinstance(inst, type):
            raise UnsafeStateError(f"refusing to change class {_describe(inst)}: only "
                                   "instances get their state restored")
        if id(cls) not in self._allow.stateful and not isinstance(inst, np.dtype):
            raise UnsafeStateError(f"refusing to set the state of {_describe(inst)}: not "
                                   "an allow-listed type")
        setstate = getattr(cls, "__setstate__", None)
        if setstate is not None:
            setstate(inst, state)
            return
        slots = None
        if type(state) is tuple and len(state) == 2:
            state, slots = state
        for part in (state, slots):
            if part is None:
                continue
            if type(part) is not dict:
                raise UnsafeStateError(f"refusing state of type {_describe(part)} for "
                                       f"{_describe(inst)}: expected a dict")
            for k in part:
                if type(k) is not str or (k.startswith("__") and k.endswith("__")):
                    raise UnsafeStateError(f"refusing attribute {k!r} of {_describe(inst)}")
        if state:
            inst.__dict__.update(state)
        for k, v in (slots or {}).items():
            setattr(inst, k, v)

    def _mapping(self) -> Any:
        target = self.stack[-1]
        if not _is_exact(target, _MAPPINGS):
            raise UnsafeStateError(f"refusing to set items of {_describe(target)}: only "
                                   "dict, OrderedDict, defaultdict and Counter")
        return target

    def _op_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._mapping()[key] = value

    def _op_setitems(self) -> None:
        items = self.pop_mark()
        target = self._mapping()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _extend(self, items: list[Any]) -> None:
        target = self.stack[-1]
        if type(target) is list:
            list.extend(target, items)
        elif id(type(target)) in self._allow.deques:
            collections.deque.extend(target, items)
        else:
            raise UnsafeStateError(f"refusing to append to {_describe(target)}: only list, "
                                   "deque and the allow-listed river deques")

    def _op_append(self) -> None:
        self._extend([self.stack.pop()])

    def _op_appends(self) -> None:
        self._extend(self.pop_mark())

    def _op_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafeStateError(f"refusing to add items to {_describe(target)}: only set")
        set.update(target, items)



_StateUnpickler.dispatch.update({
    pickle.REDUCE[0]: _StateUnpickler._op_reduce,
    pickle.NEWOBJ[0]: _StateUnpickler._op_newobj,
    pickle.NEWOBJ_EX[0]: _StateUnpickler._op_newobj_ex,
    pickle.BUILD[0]: _StateUnpickler._op_build,
    pickle.SETITEM[0]: _StateUnpickler._op_setitem,
    pickle.SETITEMS[0]: _StateUnpickler._op_setitems,
    pickle.APPEND[0]: _StateUnpickler._op_append,
    pickle.APPENDS[0]: _StateUnpickler._op_appends,
    pickle.ADDITEMS[0]: _StateUnpickler._op_additems,
})


def _refuse_opcode(name: str) -> Callable[[Any], None]:
    def refuse(self: Any) -> None:
        raise UnsafeStateError(f"refusing pickle opcode {name}: state pickles do not use it")
    return refuse


for _name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "NEXT_BUFFER",
              "READONLY_BUFFER"):
    _StateUnpickler.dispatch[getattr(pickle, _name)[0]] = _refuse_opcode(_name)
del _name


def restricted_unpickle(blob: bytes) -> Any:
    """Unpickle river model state, allowing only what the allow-list names.

    The allow-list is exact: the river classes the registered models and drift detectors
    hold (:data:`RIVER_CLASSES`, :data:`RIVER_CALLABLES`, :data:`RIVER_BOUND_METHODS`), a
    few standard-library and numpy containers (:data:`STDLIB_CALLABLES`,
    :data:`NUMPY_GLOBALS`), nothing more. Anything else (``os.system``, ``builtins.eval``,
    a ``getattr`` gadget, a call of a non-listed object) raises :class:`UnsafeStateError`
    naming it, before it runs. A blob that is not a valid pickle raises
    :class:`pickle.UnpicklingError`.

    >>> import os, pickle
    >>> restricted_unpickle(pickle.dumps(os.system))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamadapt.state.UnsafeStateError: refusing global posix.system: not on the state ...
    >>> from river import stats
    >>> m = stats.Mean()
    >>> m.update(4.0)
    >>> restricted_unpickle(pickle.dumps(m)).get()
    4.0
    """
    try:
        return _StateUnpickler(bytes(blob)).load()
    except UnsafeStateError:
        raise
    except Exception as exc:  # a damaged or foreign blob: one error type for callers
        raise pickle.UnpicklingError(
            f"not a loadable state pickle: {type(exc).__name__}: {exc}") from None


def check_state(state: Any, path: str = "state") -> None:
    """Refuse a loaded state dict whose embedded pickles name anything off the allow-list.

    Every ``bytes`` value inside ``state`` (river models, detectors) goes through
    :func:`restricted_unpickle` and the result is thrown away. A refusal raises
    :class:`UnsafeStateError` with the value's path. A value that starts like a pickle
    (the PROTO opcode) but does not load raises :class:`pickle.UnpicklingError`; other bytes
    that are no pickle at all are left alone.

    >>> import pickle
    >>> check_state({"model": {"blob": pickle.dumps([1.0, 2.0])}})
    >>> check_state({"model": {"blob": b"cos\\nsystem\\n(S'true'\\ntR."}})
    Traceback (most recent call last):
    ...
    streamadapt.state.UnsafeStateError: state.model.blob: refusing global os.system: ...
    """
    todo: list[tuple[str, Any]] = [(path, state)]
    while todo:
        where, obj = todo.pop()
        if isinstance(obj, dict):
            todo.extend((f"{where}.{k}", v) for k, v in obj.items())
        elif isinstance(obj, list | tuple):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, bytes | bytearray):
            try:
                restricted_unpickle(obj)
            except UnsafeStateError as exc:
                raise UnsafeStateError(f"{where}: {exc}") from None
            except pickle.UnpicklingError as exc:
                if obj[:1] == pickle.PROTO:
                    raise pickle.UnpicklingError(f"{where}: {exc}") from None
