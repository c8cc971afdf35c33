"""Every Prometheus metric of streamadapt, declared in this one module.

Naming follows the Prometheus conventions: ``streamadapt_<noun>[_<verb>]_<unit>``, base
units (seconds, bytes, ratio; time stamps are unix seconds), counters end in ``_total``.
Labels are low-cardinality and take their values from the tuples below, created up front so
that no series is ever missing; a link, user or item id is never a label.

State that lives in objects (error-memory size, pending labels, consumer lag) may be read at
scrape time instead of being set on every event: ``ERROR_MEMORY_ENTRIES.set_function(fn)``
for the gauges declared here, :func:`register_gauge_callback` for any other. Ages
are exported as time stamps; dashboards and alerts compute ``time() - <timestamp>``.

The catalogue, with every metric's type and labels, is :data:`CATALOGUE`; ``docs/metrics.md``
documents it as a table.

>>> EVENTS.labels(outcome="predicted")._name
'streamadapt_events'
>>> dead_letter_reason("malformed json: unexpected character")
'malformed_json'
>>> dead_letter_reason("something else entirely")
'other'
>>> sorted(CATALOGUE)[:2]
['streamadapt_adaptations_applied_total', 'streamadapt_adaptations_skipped_total']
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from streamadapt import __version__

__all__ = [
    "REGISTRY",
    "EVENTS",
    "STAGE_DURATION",
    "PREQUENTIAL_ERROR",
    "DRIFT_DETECTIONS",
    "ADAPTATIONS",
    "ADAPTATIONS_APPLIED",
    "ADAPTATIONS_SKIPPED",
    "ERROR_MEMORY_ENTRIES",
    "ERROR_MEMORY_READS",
    "ERROR_MEMORY_WRITES",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "PREDICTIONS",
    "PENDING_LABELS",
    "CHECKPOINTS",
    "CHECKPOINT_LAST_SUCCESS",
    "HEARTBEAT",
    "BUILD_INFO",
    "CATALOGUE",
    "EVENT_OUTCOMES",
    "STAGES",
    "ERROR_METRICS",
    "MODEL_ROLES",
    "DRIFT_SIGNALS",
    "ADAPTATION_ACTIONS",
    "ADAPTATION_OUTCOMES",
    "MEMORY_READ_RESULTS",
    "CHECKPOINT_OUTCOMES",
    "DEAD_LETTER_REASONS",
    "dead_letter_reason",
    "register_gauge_callback",
    "set_build_info",
]

#: ``streamadapt_events_total{outcome}``.
EVENT_OUTCOMES = ("predicted", "labelled", "dead_letter", "expired")
#: ``streamadapt_stage_duration_seconds{stage}``: the stages of the service loop.
STAGES = ("poll", "decode", "step", "produce", "checkpoint", "commit")
#: ``streamadapt_prequential_error{metric}``.
ERROR_METRICS = ("mae", "rmse", "logloss")
#: ``streamadapt_prequential_error{model}``: the served model and its frozen shadow.
MODEL_ROLES = ("adapted", "shadow")
#: ``streamadapt_drift_detections_total{signal}``: what the detector watched, the model's
#: prequential loss (concept drift) or an input statistic (covariate drift).
DRIFT_SIGNALS = ("loss", "input")
#: ``streamadapt_adaptations_total{action}``.
ADAPTATION_ACTIONS = ("tta", "memory_refresh", "lr_boost")
#: ``streamadapt_adaptations_total{outcome}``: judged against the frozen shadow once labels
#: came: kept, rolled back (worse than the shadow), or reset (the model collapsed).
ADAPTATION_OUTCOMES = ("kept", "rolled_back", "reset")
#: ``streamadapt_error_memory_reads_total{result}``: a hit found at least one neighbour.
MEMORY_READ_RESULTS = ("hit", "miss")
#: ``streamadapt_checkpoints_total{outcome}``: writes (``ok``, ``failed``) and checkpoints
#: skipped on restore, ``refused`` (signature, key or state allow-list) or ``corrupt``.
CHECKPOINT_OUTCOMES = ("ok", "failed", "refused", "corrupt")
#: Dead-letter reasons are the first words of the decoder's reason strings.
DEAD_LETTER_REASONS = (
    "oversized", "malformed json", "not an object", "unknown kind", "wrong kind for task",
    "validation error", "orphan label", "label keyed wrongly", "label without key",
)

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
    "streamadapt_drift_detections_total", "Drift detections, by detector and watched signal.",
    ["detector", "signal"],
)
ADAPTATIONS = Counter(
    "streamadapt_adaptations_total",
    "Adaptations triggered by drift, by action and by outcome against the shadow model.",
    ["action", "outcome"],
)
ADAPTATIONS_APPLIED = Counter(
    "streamadapt_adaptations_applied_total",
    "Adaptation actions applied to the served model after a drift detection, by action.",
    ["action"],
)
ADAPTATIONS_SKIPPED = Counter(
    "streamadapt_adaptations_skipped_total",
    "Adaptation actions a detection asked for that the served model has no hook for.",
    ["action"],
)
ERROR_MEMORY_ENTRIES = Gauge(
    "streamadapt_error_memory_entries", "Samples held by the error memory (after decay)."
)
ERROR_MEMORY_READS = Counter(
    "streamadapt_error_memory_reads_total",
    "Error-memory reads, by result (hit: at least one neighbour found).",
    ["result"],
)
ERROR_MEMORY_WRITES = Counter(
    "streamadapt_error_memory_writes_total", "Labelled samples written to the error memory."
)
CONSUMER_LAG = Gauge(
    "streamadapt_consumer_lag_records",
    "Records between the consumed position and the end of the assigned partitions.",
)
DEAD_LETTERS = Counter(
    "streamadapt_dead_letters_total", "Records sent to the dead-letter sink, by reason.",
    ["reason"],
)
PREDICTIONS = Counter("streamadapt_predictions_total", "Prediction records emitted.")
PENDING_LABELS = Gauge(
    "streamadapt_pending_labels", "Predictions waiting for their label."
)
CHECKPOINTS = Counter(
    "streamadapt_checkpoints_total",
    "Checkpoint writes (ok, failed) and checkpoints skipped on restore (refused, corrupt).",
    ["outcome"],
)
CHECKPOINT_LAST_SUCCESS = Gauge(
    "streamadapt_checkpoint_last_success_timestamp_seconds",
    "Unix time of the last successful checkpoint (the checkpoint age is time() minus it).",
)
REPLAYED_RECORDS = Counter(
    "streamadapt_replayed_records_total",
    "Records read again after a restore, between the checkpoint's offset and the committed "
    "one: learned again, not emitted again.",
)
WEIGHT_SYNC_REPLICAS = Gauge(
    "streamadapt_weight_sync_replicas",
    "Other replicas whose weights were averaged with this one's at the last checkpoint.",
)
HEARTBEAT = Gauge(
    "streamadapt_poll_heartbeat_timestamp_seconds",
    "Unix time at which the poll loop last completed an iteration.",
)
BUILD_INFO = Info("streamadapt_build", "Version of the running service.")

#: Every metric of this module by its exposed name (counters with ``_total``, the build
#: info as ``streamadapt_build_info``).
CATALOGUE: dict[str, MetricWrapperBase] = {
    (m._name + "_total" if m._type == "counter" else
     m._name + "_info" if m._type == "info" else m._name): m
    for m in (
        EVENTS, STAGE_DURATION, PREQUENTIAL_ERROR, DRIFT_DETECTIONS, ADAPTATIONS,
        ADAPTATIONS_APPLIED, ADAPTATIONS_SKIPPED,
        ERROR_MEMORY_ENTRIES, ERROR_MEMORY_READS, ERROR_MEMORY_WRITES, CONSUMER_LAG,
        DEAD_LETTERS, PREDICTIONS, PENDING_LABELS, CHECKPOINTS, CHECKPOINT_LAST_SUCCESS,
        REPLAYED_RECORDS, WEIGHT_SYNC_REPLICAS, HEARTBEAT, BUILD_INFO,
    )
}


def dead_letter_reason(reason: str) -> str:
    """Map a free-text dead-letter reason to its low-cardinality label value."""
    for r in DEAD_LETTER_REASONS:
        if reason.startswith(r):
            return r.replace(" ", "_")
    return "other"


def set_build_info(**extra: str) -> None:
    """Fill ``streamadapt_build_info`` with the package and Python versions (and ``extra``)."""
    BUILD_INFO.info({"version": __version__, "python": platform.python_version(), **extra})


def _init_series() -> None:
    for o in EVENT_OUTCOMES:
        EVENTS.labels(outcome=o)
    for s in STAGES:
        STAGE_DURATION.labels(stage=s)
    for r in DEAD_LETTER_REASONS:
        DEAD_LETTERS.labels(reason=r.replace(" ", "_"))
    DEAD_LETTERS.labels(reason="other")
    for a in ADAPTATION_ACTIONS:
        ADAPTATIONS_APPLIED.labels(action=a)
        ADAPTATIONS_SKIPPED.labels(action=a)
        for o in ADAPTATION_OUTCOMES:
            ADAPTATIONS.labels(action=a, outcome=o)
    for r in MEMORY_READ_RESULTS:
        ERROR_MEMORY_READS.labels(result=r)
    for o in CHECKPOINT_OUTCOMES:
        CHECKPOINTS.labels(outcome=o)
    set_build_info()


_init_series()

_CALLBACKS: dict[tuple[int, str], Gauge] = {}


def register_gauge_callback(
    name: str, doc: str, fn: Callable[[], float], registry: CollectorRegistry = REGISTRY
) -> Gauge:
    """A gauge whose value is read from ``fn`` at scrape time.

    Registering the same ``name`` again in the same registry (a service restarted in the
    same process) rebinds the existing gauge to the new ``fn``.

    >>> r = CollectorRegistry()
    >>> g = register_gauge_callback("streamadapt_example_entries", "Example.", lambda: 3.0, r)
    >>> g = register_gauge_callback("streamadapt_example_entries", "Example.", lambda: 4.0, r)
    >>> r.get_sample_value("streamadapt_example_entries")
    4.0
    """
    key = (id(registry), name)
    g = _CALLBACKS.get(key)
    if g is None:
        g = Gauge(name, doc, registry=registry)
        _CALLBACKS[key] = g
    g.set_function(fn)
    return g


def track_error_memory(model: object) -> Callable[[], None] | None:
    """Bind the error-memory metrics to ``model`` (an adapter with ``stats()``, such as
    ReLoop2); returns a function that adds the reads and writes since its last call to the
    counters (call it once per batch), or None when the model has no error memory.

    The entries gauge is read at scrape time.
    """
    stats = getattr(model, "stats", None)
    if not callable(stats):
        return None
    ERROR_MEMORY_ENTRIES.set_function(lambda: float(stats()["entries"]))
    last = dict(stats())

    def update() -> None:
        now = stats()
        for key, counter in (("hit", ERROR_MEMORY_READS.labels(result="hit")),
                             ("miss", ERROR_MEMORY_READS.labels(result="miss")),
                             ("written", ERROR_MEMORY_WRITES)):
            delta = now.get(key, 0) - last.get(key, 0)
            if delta > 0:
                counter.inc(delta)
        last.update(now)

    return update
