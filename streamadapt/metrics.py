"""Every Prometheus metric of streamadapt, declared in this one module.

Naming: ``streamadapt_<noun>_<unit>``, base units (seconds, bytes, ratio), counters end in
``_total``. Labels are low-cardinality and take their values from the tuples below, created
up front so no series is ever missing; a link, user or item id is never a label.

State that lives in objects (memory size, pending labels) is read at scrape time by
:func:`register_gauge_callback`, not set on every event.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = [
    "REGISTRY",
    "EVENTS",
    "STAGE_DURATION",
    "PREQUENTIAL_ERROR",
    "DRIFT_DETECTIONS",
    "ADAPTATIONS",
    "DEAD_LETTERS",
    "PREDICTIONS",
    "PENDING_LABELS",
    "CHECKPOINT_LAST_SUCCESS",
    "HEARTBEAT",
    "BUILD_INFO",
    "EVENT_OUTCOMES",
    "STAGES",
    "register_gauge_callback",
]

EVENT_OUTCOMES = ("predicted", "labelled", "dead_letter", "expired")
STAGES = ("poll", "decode", "step", "produce", "checkpoint", "commit")
ERROR_METRICS = ("mae", "rmse", "logloss")
MODEL_ROLES = ("adapted", "shadow")

EVENTS = Counter(
    "streamadapt_events_total", "Events processed, by outcome.", ["outcome"]
)
STAGE_DURATION = Histogram(
    "streamadapt_stage_duration_seconds",
    "Time spent per micro-batch in each stage of the service loop.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PREQUENTIAL_ERROR = Gauge(
    "streamadapt_prequential_error",
    "Rolling prequential error of the served (adapted) model and its frozen shadow.",
    ["model", "metric"],
)
DRIFT_DETECTIONS = Counter(
    "streamadapt_drift_detections_total", "Drift detections.", ["detector", "signal"]
)
ADAPTATIONS = Counter(
    "streamadapt_adaptations_total",
    "Adaptations triggered by drift, by action and by outcome.",
    ["action", "outcome"],
)
DEAD_LETTERS = Counter(
    "streamadapt_dead_letters_total", "Records sent to the dead-letter sink, by reason.",
    ["reason"],
)
PREDICTIONS = Counter("streamadapt_predictions_total", "Prediction records emitted.")
PENDING_LABELS = Gauge(
    "streamadapt_pending_labels", "Predictions waiting for their label."
)
CHECKPOINT_LAST_SUCCESS = Gauge(
    "streamadapt_checkpoint_last_success_timestamp_seconds",
    "Unix time of the last successful checkpoint.",
)
HEARTBEAT = Gauge(
    "streamadapt_poll_heartbeat_timestamp_seconds",
    "Unix time at which the poll loop last completed an iteration.",
)
BUILD_INFO = Info("streamadapt_build", "Version of the running service.")

#: Dead-letter reasons are the first words of the decoder's reason strings.
DEAD_LETTER_REASONS = (
    "oversized", "malformed json", "not an object", "unknown kind", "wrong kind for task",
    "validation error", "orphan label",
)


def dead_letter_reason(reason: str) -> str:
    """Map a free-text dead-letter reason to its low-cardinality label value."""
    for r in DEAD_LETTER_REASONS:
        if reason.startswith(r):
            return r.replace(" ", "_")
    return "other"


def _init_series() -> None:
    for o in EVENT_OUTCOMES:
        EVENTS.labels(outcome=o)
    for s in STAGES:
        STAGE_DURATION.labels(stage=s)
    for r in DEAD_LETTER_REASONS:
        DEAD_LETTERS.labels(reason=r.replace(" ", "_"))
    DEAD_LETTERS.labels(reason="other")


_init_series()


def register_gauge_callback(
    name: str, doc: str, fn: Callable[[], float], registry: CollectorRegistry = REGISTRY
) -> Gauge:
    """A gauge whose value is read from ``fn`` at scrape time."""
    g = Gauge(name, doc, registry=registry)
    g.set_function(fn)
    return g
