"""Real parts (binaries, optional packages) for tests: skip when absent, unless required.

A test that needs a real part calls :func:`require_binary` or :func:`require_module`. When
the part is missing the test is skipped, except when the environment variable
``STREAMADAPT_REQUIRE_REAL_PARTS=1`` is set (as CI does): then it fails, so a CI image that
lost a part cannot pass by skipping.

Every part a test obtained is recorded (:func:`used`) and listed at the end of the run by
``tests/conftest.py``, so each run says which real broker, Prometheus and SDKs it used.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from types import ModuleType

import pytest

__all__ = ["required", "require_binary", "require_module", "record", "used"]

# This file is imported both as ``realparts`` and as ``tests.realparts``: the record lives
# in one module registered under a fixed name, so both copies share it.
_STORE = sys.modules.setdefault("_streamadapt_real_parts", ModuleType("_streamadapt_real_parts"))
if not hasattr(_STORE, "parts"):
    _STORE.parts = {}  # type: ignore[attr-defined]


def _version_of(path: str) -> str:
    for flag in ("--version", "version"):
        try:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        lines = (out.stdout or out.stderr).strip().splitlines()
        if out.returncode == 0 and lines:
            return lines[0].strip()
    return "version unknown"


def record(name: str, where: str, version: str | None = None) -> None:
    """Note that a test used real part ``name`` found at ``where``."""
    parts = _STORE.parts  # type: ignore[attr-defined]
    if name not in parts:
        parts[name] = f"{where} ({version or _version_of(where)})"


def used() -> dict[str, str]:
    """Every real part the tests used so far: name -> where (version)."""
    return dict(_STORE.parts)  # type: ignore[attr-defined]


def required() -> bool:
    """True when missing real parts must fail the tests instead of skipping them."""
    return os.environ.get("STREAMADAPT_REQUIRE_REAL_PARTS", "") == "1"


def _missing(what: str, hint: str) -> None:
    msg = f"{what} is not available ({hint})"
    if required():
        pytest.fail(f"{msg} and STREAMADAPT_REQUIRE_REAL_PARTS=1", pytrace=False)
    pytest.skip(msg)


def require_binary(name: str, hint: str = "") -> str:
    """The path of executable ``name`` on PATH, or skip/fail the calling test."""
    path = shutil.which(name)
    if path is None:
        _missing(f"binary {name!r}", hint or "not on PATH")
    assert path is not None
    record(name, path)
    return path


def require_module(name: str, hint: str = "") -> ModuleType:
    """Import ``name``, or skip/fail the calling test."""
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        _missing(f"module {name!r}", hint or str(exc))
        raise  # unreachable: _missing raised
    record(name, str(getattr(mod, "__file__", "") or name),
           str(getattr(mod, "__version__", "version unknown")))
    return mod
