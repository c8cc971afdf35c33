"""Real parts (binaries, optional packages) for tests: skip when absent, unless required.

A test that needs a real part calls :func:`require_binary` or :func:`require_module`. When
the part is missing the test is skipped, except when the environment variable
``STREAMADAPT_REQUIRE_REAL_PARTS=1`` is set (as CI does): then it fails, so a CI image that
lost a part cannot pass by skipping.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

__all__ = ["required", "require_binary", "require_module"]


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
    return path


def require_module(name: str, hint: str = "") -> ModuleType:
    """Import ``name``, or skip/fail the calling test."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"module {name!r}", hint or str(exc))
        raise  # unreachable: _missing raised
