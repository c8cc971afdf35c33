"""The metric catalogue follows the Prometheus naming rules and matches its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamadapt import metrics
from streamadapt.events import decode_one

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^streamadapt_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
#: Units that are not base units, as name parts; base units are seconds, bytes and ratio.
NON_BASE_UNITS = {
    "ms", "millis", "milliseconds", "us", "microseconds", "ns", "nanoseconds", "minutes",
    "hours", "days", "kb", "kilobytes", "mb", "megabytes", "gb", "gigabytes", "kib", "mib",
    "percent", "pct", "bits",
}
#: Label names that would carry a link, user, item or event id (unbounded cardinality).
HIGH_CARDINALITY = {"link", "user", "item", "event", "key", "id", "offset", "url", "path"}
TIME_WORDS = {"duration", "timestamp", "age", "latency", "time", "delay", "elapsed"}


def _rule_violations(name: str, kind: str, labels: tuple[str, ...], doc: str) -> list[str]:
    out = []
    if not NAME.match(name):
        out.append("name is not streamadapt_<snake_case>")
    parts = name.split("_")
    if NON_BASE_UNITS & set(parts):
        out.append(f"non-base unit in {parts}")
    if kind == "counter" and not name.endswith("_total"):
        out.append("counter does not end in _total")
    if kind != "counter" and name.endswith("_total"):
        out.append("only counters end in _total")
    if TIME_WORDS & set(parts) and not name.endswith("_seconds"):
        out.append("a time quantity must be in _seconds")
    if kind == "info" and not name.endswith("_info"):
        out.append("info metric does not end in _info")
    for label in labels:
        if label in HIGH_CARDINALITY or label.endswith("_id"):
            out.append(f"label {label!r} would carry an id")
    if not doc.strip():
        out.append("no help text")
    return out


def test_rule_checker_rejects_bad_names() -> None:
    assert _rule_violations("streamadapt_events", "counter", (), "x")
    assert _rule_violations("streamadapt_latency_ms", "gauge", (), "x")
    assert _rule_violations("streamadapt_step_duration", "histogram", (), "x")
    assert _rule_violations("streamadapt_loads_total", "counter", ("link_id",), "x")
    assert _rule_violations("events_total", "counter", (), "x")
    assert _rule_violations("streamadapt_queue_total", "gauge", (), "x")
    assert not _rule_violations("streamadapt_step_duration_seconds", "histogram", ("stage",), "x")


@pytest.mark.parametrize("name", sorted(metrics.CATALOGUE))
def test_catalogue_metric_follows_naming_rules(name: str) -> None:
    m = metrics.CATALOGUE[name]
    assert _rule_violations(name, m._type, tuple(m._labelnames), m._documentation) == []


def test_exposition_follows_naming_rules() -> None:
    """What a scrape actually sees: every streamadapt sample has a catalogued family."""
    text = generate_latest(metrics.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)
                if f.name.startswith("streamadapt_")}
    # prometheus_client exposes each counter's and histogram's creation time as a gauge
    families = {n: f for n, f in families.items()
                if not (n.endswith("_created") and n[: -len("_created")] in families)}
    assert families, "no streamadapt metric in the default registry"
    exposed = set()
    for fam in families.values():
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            if fam.type == "histogram":
                assert s.name.rsplit("_", 1)[-1] in ("bucket", "count", "sum", "created")
        exposed.add(fam.name + ("_total" if fam.type == "counter" else
                                "_info" if fam.type == "info" else ""))
    assert exposed == set(metrics.CATALOGUE)


def test_label_values_exist_before_first_event() -> None:
    reg = metrics.REGISTRY
    for outcome in metrics.EVENT_OUTCOMES:
        assert reg.get_sample_value("streamadapt_events_total", {"outcome": outcome}) is not None
    for stage in metrics.STAGES:
        assert reg.get_sample_value("streamadapt_stage_duration_seconds_count",
                                    {"stage": stage}) is not None
    for a in metrics.ADAPTATION_ACTIONS:
        for o in metrics.ADAPTATION_OUTCOMES:
            assert reg.get_sample_value("streamadapt_adaptations_total",
                                        {"action": a, "outcome": o}) is not None
    for r in metrics.MEMORY_READ_RESULTS:
        assert reg.get_sample_value("streamadapt_error_memory_reads_total",
                                    {"result": r}) is not None
    info = [s for f in reg.collect() if f.name == "streamadapt_build" for s in f.samples]
    assert info and info[0].labels["version"]


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"kind": "teapot"}', "unknown_kind"),
        (b'{"kind": "impression", "event_id": "e", "user_id": "u", "item_id": "i", '
         b'"timestamp": 0}', "wrong_kind_for_task"),
        (b'{"event_id": "e", "link_id": "a", "timestamp": 0, "load": -1}', "validation_error"),
        (b"x" * 2_000_000, "oversized"),
    ],
)
def test_every_decoder_reason_has_its_own_label(raw: bytes, label: str) -> None:
    dead = decode_one(raw, task="forecast")
    assert metrics.dead_letter_reason(dead.reason) == label
    assert label in {r.replace(" ", "_") for r in metrics.DEAD_LETTER_REASONS}


def test_gauge_callback_rebinds_in_same_registry() -> None:
    reg = CollectorRegistry()
    state = {"n": 5.0}
    metrics.register_gauge_callback("streamadapt_test_entries", "T.", lambda: state["n"], reg)
    assert reg.get_sample_value("streamadapt_test_entries") == 5.0
    state["n"] = 7.0
    assert reg.get_sample_value("streamadapt_test_entries") == 7.0
    metrics.register_gauge_callback("streamadapt_test_entries", "T.", lambda: 1.0, reg)
    assert reg.get_sample_value("streamadapt_test_entries") == 1.0


def test_metrics_are_declared_only_in_the_metrics_module() -> None:
    """No other module of the package or the connectors builds a Prometheus metric."""
    ctor = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']")
    offenders = []
    for base in ("streamadapt", "connectors"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if path == ROOT / "streamadapt" / "metrics.py":
                continue
            text = path.read_text(encoding="utf-8")
            if "prometheus_client" in text and ctor.search(text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_callback_gauge_names_elsewhere_follow_rules() -> None:
    call = re.compile(r"register_gauge_callback\(\s*[\"']([^\"']+)[\"']\s*,\s*[\"']([^\"']*)")
    for base in ("streamadapt", "connectors"):
        for path in sorted((ROOT / base).rglob("*.py")):
            for name, doc in call.findall(path.read_text(encoding="utf-8")):
                assert _rule_violations(name, "gauge", (), doc) == [], (path, name)


def test_docs_table_lists_every_metric_with_type_and_labels() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0].startswith("`streamadapt_"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(metrics.CATALOGUE)
    for name, cells in rows.items():
        m = metrics.CATALOGUE[name]
        assert cells[1] == m._type, name
        labels = {s.strip(" `") for s in cells[2].split(",") if s.strip(" `-")}
        assert labels == set(m._labelnames), name
