"""``streamadapt demo`` starts its broker, streams, shows the result and cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kafkahelp import ROOT

pytestmark = pytest.mark.kafka


def test_demo_runs_end_to_end(tansu_binary):
    r = subprocess.run([sys.executable, "-m", "connectors", "demo", "--events", "3000"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "records read" in out and "3,003" in out  # 3000 samples + 3 bad records
    assert "predictions read back from linkload.predictions" in out
    assert "malformed json" in out and "validation error" in out
    assert "broker stopped" in out
