"""The Grafana dashboards and their provisioning files are well formed and complete.

Their queries are run against a real Prometheus in ``test_prometheus_stack.py``; here the
structure is checked: ids, layout, data source, variables, and that every metric a query
names is in the catalogue (or is a standard Prometheus / process metric).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamadapt import metrics

ROOT = Path(__file__).resolve().parents[1]
BOARDS = {p.stem: p for p in sorted((ROOT / "dashboards").glob("*.json"))}
STANDARD = {"up", "process_start_time_seconds", "process_cpu_seconds_total",
            "process_resident_memory_bytes"}
_METRIC = re.compile(r"\b([a-z_:][a-z0-9_:]*)\s*(?=\{|\[)")


def _load(name: str) -> dict[str, Any]:
    return json.loads(BOARDS[name].read_text())


def _exprs(board: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    out += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return out


def _catalogued(series: str) -> bool:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series[: -len(suffix)] in metrics.CATALOGUE:
            return True
    return series in metrics.CATALOGUE or series in STANDARD


def test_both_dashboards_exist() -> None:
    assert set(BOARDS) == {"streamadapt-drift", "streamadapt-service"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_structure(name: str) -> None:
    board = _load(name)
    assert board["uid"] == name and board["title"].startswith("streamadapt")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert 'job=~"$job"' in t["expr"] or t["expr"].startswith("sum(up{"), t["expr"]
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (p["title"], var)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_queries_name_only_catalogued_metrics(name: str) -> None:
    names = set()
    for expr in _exprs(_load(name)):
        names |= {n for n in _METRIC.findall(expr) if n not in ("by", "without", "on")}
    assert names, name
    assert sorted(n for n in names if not _catalogued(n)) == []


def test_drift_dashboard_covers_the_issue() -> None:
    board = _load("streamadapt-drift")
    text = " ".join(_exprs(board))
    for needed in ('model="adapted"', 'model="shadow"', "streamadapt_adaptations_total",
                   "streamadapt_error_memory_entries", "streamadapt_events_total",
                   "streamadapt_stage_duration_seconds_bucket",
                   "streamadapt_consumer_lag_records", "streamadapt_dead_letters_total",
                   "streamadapt_checkpoint_last_success_timestamp_seconds"):
        assert needed in text, needed
    (ann,) = [a for a in board["annotations"]["list"] if a["name"] == "Drift detections"]
    assert ann["enable"] and "streamadapt_drift_detections_total" in ann["expr"]


def test_provisioning_points_at_the_dashboards() -> None:
    prov = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "dashboards.yaml")
                          .read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "datasources.yaml")
                        .read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
