"""The alert rules pass ``promtool check rules`` and their unit tests (``promtool test``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    from tests.realparts import require_binary
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from realparts import require_binary

from streamadapt import metrics

pytestmark = pytest.mark.prometheus

DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = DIR / "streamadapt-rules.yaml"
ISSUE_ALERTS = {"StreamadaptDriftStorm", "StreamadaptHighRollbackRate",
                "StreamadaptConsumerLagGrowing", "StreamadaptCheckpointStale",
                "StreamadaptDeadLetterRate"}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_cover_the_issue_and_are_documented() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} >= ISSUE_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        for name in set(re.findall(r"\bstreamadapt_[a-z0-9_]+", r["expr"])):
            assert name in metrics.CATALOGUE, (r["alert"], name)


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool", "apt-get install --no-install-recommends prometheus")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_promtool_unit_tests_fire_every_alert() -> None:
    promtool = require_binary("promtool", "apt-get install --no-install-recommends prometheus")
    tests = DIR / "streamadapt-rules.test.yaml"
    spec = yaml.safe_load(tests.read_text())
    fired = {t["alertname"] for case in spec["tests"] for t in case["alert_rule_test"]
             if t.get("exp_alerts")}
    assert fired == {r["alert"] for r in _rules()}, "every alert needs a firing test"
    out = subprocess.run([promtool, "test", "rules", tests.name], cwd=DIR,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
