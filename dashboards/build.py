"""Generate the Grafana dashboards of streamadapt from code.

``python dashboards/build.py`` rewrites ``dashboards/streamadapt-drift.json`` and
``dashboards/streamadapt-service.json``; ``python dashboards/build.py --check`` rewrites
nothing and exits 1 when a committed file differs from what this module generates. The
JSON files are committed, so Grafana (and the Helm chart, and a plain copy into a
provisioning folder) needs neither Python nor this module.

The dashboards are built with Grafana's Python SDK, ``grafana-foundation-sdk`` (the ``test``
extra: ``pip install -e '.[test]'``). Every ``streamadapt_*`` metric name comes from the
metric objects of :mod:`streamadapt.metrics` through :data:`~streamadapt.metrics.CATALOGUE`,
and every label a selector matches on is checked against the metric's labels, so a renamed
metric or label fails here, not on a blank panel.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from grafana_foundation_sdk.builders import (
        common,
        dashboard,
        prometheus,
        stat,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.cog.builder import Builder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the dashboards are built with grafana-foundation-sdk: "
        "pip install -e '.[test]' (or pip install grafana-foundation-sdk)"
    ) from exc

from prometheus_client.metrics import MetricWrapperBase

from streamadapt import metrics

__all__ = ["HERE", "PROCESS_METRICS", "build_all", "drift_dashboard", "main", "render",
           "selector", "series", "service_dashboard"]

HERE = Path(__file__).resolve().parent

#: Series of the Prometheus client's process collector and of Prometheus itself, used by the
#: service dashboard; they are not streamadapt metrics, so the catalogue does not hold them.
PROCESS_METRICS = ("up", "process_start_time_seconds", "process_cpu_seconds_total",
                   "process_resident_memory_bytes")

_DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
_NAMES = {id(m): name for name, m in metrics.CATALOGUE.items()}
_SCOPE = ("job", "instance")


def series(metric: MetricWrapperBase, suffix: str = "") -> str:
    """The exposed name of ``metric`` (a catalogue entry), plus a histogram ``suffix``.

    Parameters
    ----------
    metric
        A metric object of :mod:`streamadapt.metrics`.
    suffix
        ``""``, or ``"_bucket"``, ``"_sum"`` or ``"_count"`` for a histogram.

    Returns
    -------
    str
        The series name as Prometheus stores it.

    Raises
    ------
    ValueError
        When ``metric`` is not in the catalogue, or the suffix does not fit its type.

    Examples
    --------
    >>> series(metrics.EVENTS)
    'streamadapt_events_total'
    >>> series(metrics.STAGE_DURATION, "_bucket")
    'streamadapt_stage_duration_seconds_bucket'
    """
    name = _NAMES.get(id(metric))
    if name is None:
        raise ValueError(f"{metric!r} is not in streamadapt.metrics.CATALOGUE")
    if suffix and (metric._type != "histogram" or suffix not in ("_bucket", "_sum", "_count")):
        raise ValueError(f"suffix {suffix!r} on {name}: only a histogram has _bucket, _sum, "
                         "_count")
    return name + suffix


def selector(metric: MetricWrapperBase | str, suffix: str = "", /,
             **labels: str | tuple[str, ...]) -> str:
    """A selector scoped to the ``$job`` and ``$instance`` variables, plus ``labels``.

    A tuple value matches any of its items; a value that names a variable (``$metric``)
    matches as a regular expression, so "All" works.

    Parameters
    ----------
    metric
        A catalogue metric (whose label names are checked) or one of
        :data:`PROCESS_METRICS`.
    suffix
        A histogram suffix, as in :func:`series`.
    **labels
        Label matchers, in the order given.

    Returns
    -------
    str
        The PromQL selector.

    Raises
    ------
    ValueError
        When a label is not one of the metric's, or ``metric`` is an unknown string.

    Examples
    --------
    >>> selector(metrics.ERROR_MEMORY_READS, result="hit")
    'streamadapt_error_memory_reads_total{job=~"$job",instance=~"$instance",result="hit"}'
    >>> selector(metrics.CHECKPOINTS, outcome=("ok", "failed"))
    'streamadapt_checkpoints_total{job=~"$job",instance=~"$instance",outcome=~"ok|failed"}'
    >>> selector(metrics.CHECKPOINTS, result="ok")
    Traceback (most recent call last):
    ...
    ValueError: streamadapt_checkpoints_total has no label ['result']; its labels: ['outcome']
    """
    if isinstance(metric, str):
        if metric not in PROCESS_METRICS:
            raise ValueError(f"{metric!r}: pass the metric object; strings are only for "
                             f"{PROCESS_METRICS}")
        name, known = metric + suffix, set(labels)
    else:
        name, known = series(metric, suffix), set(metric._labelnames)
    unknown = sorted(set(labels) - known)
    if unknown:
        raise ValueError(f"{name} has no label {unknown}; its labels: {sorted(known)}")
    matchers = [f'{k}=~"${k}"' for k in _SCOPE]
    for key, value in labels.items():
        if isinstance(value, tuple):
            matchers.append(f'{key}=~"{"|".join(value)}"')
        elif value.startswith("$"):
            matchers.append(f'{key}=~"{value}"')
        else:
            matchers.append(f'{key}="{value}"')
    return name + "{" + ",".join(matchers) + "}"


class _WithFields(Builder[Any]):
    """An SDK builder whose JSON also carries fields the SDK's model does not declare.

    The SDK models neither the Prometheus annotation fields (``step``, ``titleFormat``,
    ``textFormat``, ``tagKeys``, ``useValueForTime``) nor a query variable's ``definition``,
    which Grafana shows in the variable editor.
    """

    def __init__(self, inner: Builder[Any], **fields: object) -> None:
        self.inner = inner
        self.fields = fields

    def build(self) -> _Merged:
        return _Merged(self.inner.build(), self.fields)


class _Merged:
    """A built SDK model and the extra fields its JSON gets."""

    def __init__(self, model: Any, fields: dict[str, object]) -> None:
        self.model = model
        self.fields = fields

    def to_json(self) -> dict[str, object]:
        return {**self.model.to_json(), **self.fields}


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (dashboard.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def _targets(panel: Any, queries: Sequence[tuple[str, str]]) -> Any:
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(prometheus.Dataquery().datasource(_DS).ref_id(chr(ord("A") + i))
                          .expr(expr).legend_format(legend))
    return panel


def _timeseries(title: str, description: str, unit: str, queries: Sequence[tuple[str, str]],
                *, w: int, h: int = 8, bars: bool = False, stacked: bool = False,
                thresholds: dashboard.ThresholdsConfig | None = None) -> timeseries.Panel:
    """A time-series panel: lines (or bars), a list legend below, a shared tooltip."""
    panel = (timeseries.Panel().title(title).description(description).datasource(_DS)
             .span(w).height(h).unit(unit)
             .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
             .line_width(1).fill_opacity(80 if bars else 10)
             .show_points(cm.VisibilityMode.NEVER).span_nulls(False)
             .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.NONE)))
    if stacked:
        panel.stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL))
    if thresholds is not None:
        panel.thresholds(thresholds).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    return _targets(panel, queries)


def _stat(title: str, description: str, unit: str, query: tuple[str, str], *, w: int,
          h: int, graph: bool = False,
          thresholds: dashboard.ThresholdsConfig | None = None) -> stat.Panel:
    """A single-value panel showing the last value (with a sparkline when ``graph``)."""
    panel = (stat.Panel().title(title).description(description).datasource(_DS)
             .span(w).height(h).unit(unit)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("")
                             .values(False))
             .color_mode(cm.BigValueColorMode.VALUE).text_mode(cm.BigValueTextMode.AUTO)
             .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE))
    if thresholds is not None:
        panel.thresholds(thresholds)
    return _targets(panel, [query])


def _variables(extra: Sequence[tuple[str, str, str]] = ()) -> list[Builder[Any]]:
    """The data-source, job and instance variables, then ``extra`` (name, label, query)."""
    build_info = series(metrics.BUILD_INFO)
    queries = [("job", "Job", f"label_values({build_info}, job)"),
               ("instance", "Instance", f'label_values({build_info}{{job=~"$job"}}, instance)'),
               *extra]
    out: list[Builder[Any]] = [dashboard.DatasourceVariable("datasource").label("Data source")
                               .type("prometheus").hide(dm.VariableHide.DONT_HIDE)]
    for name, label, query in queries:
        var = (dashboard.QueryVariable(name).label(label).datasource(_DS)
               .query({"query": query, "refId": name}).include_all(True).multi(True)
               .all_value(".*").refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
               .sort(dm.VariableSort.ALPHABETICAL_ASC)
               .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))
        out.append(_WithFields(var, definition=query))
    return out


def _annotation(name: str, expr: str, *, enable: bool, color: str, title: str, text: str,
                tag_keys: str) -> Builder[Any]:
    """A Prometheus annotation: a marker wherever ``expr`` has a value."""
    query = (dashboard.AnnotationQuery().name(name).enable(enable).icon_color(color)
             .datasource(_DS).expr(expr))
    return _WithFields(query, step="1m", titleFormat=title, textFormat=text, tagKeys=tag_keys,
                       useValueForTime=False)


def _dashboard(uid: str, title: str, description: str, tags: list[str],
               variables: Sequence[Builder[Any]], annotations: Sequence[Builder[Any]],
               rows: Sequence[tuple[str, Sequence[Any]]]) -> dashboard.Dashboard:
    """A dashboard with the shared settings; ``rows`` are laid out left to right, ids 1..n."""
    board = (dashboard.Dashboard(title).uid(uid).description(description).tags(tags)
             .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).version(1)
             .time("now-1h", "now").refresh("30s").timezone("").live_now(False).week_start("")
             .link(dashboard.DashboardLink("streamadapt dashboards")
                   .type(dm.DashboardLinkType.DASHBOARDS).tags(["streamadapt"])
                   .as_dropdown(True).include_vars(True).keep_time(True))
             .annotation(dashboard.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                         .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                         .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                         .type("dashboard")))
    for var in variables:
        board.with_variable(var)
    for ann in annotations:
        board.annotation(ann)
    ids = itertools.count(1)
    for row_title, panels in rows:
        board.with_row(dashboard.Row(row_title).id(next(ids)))
        for panel in panels:
            board.with_panel(panel.id(next(ids)))
    return board


def _rate(metric: MetricWrapperBase, by: str, fn: str = "rate", /, **labels: str) -> str:
    return f"sum by ({by}) ({fn}({selector(metric, **labels)}[$__rate_interval]))"


def _quantile(q: float) -> str:
    bucket = selector(metrics.STAGE_DURATION, "_bucket")
    return f"histogram_quantile({q}, sum by (le, stage) (rate({bucket}[$__rate_interval])))"


def _share(metric: MetricWrapperBase, window: str, /, **part: str | tuple[str, ...]) -> str:
    """The share of ``metric``'s increase over ``window`` that matches ``part``."""
    return (f"sum(increase({selector(metric, **part)}[{window}])) / "
            f"sum(increase({selector(metric)}[{window}]))")


def drift_dashboard() -> dashboard.Dashboard:
    """Model quality against the shadow, drift, adaptation, error memory, the stream."""
    m = metrics
    error = m.PREQUENTIAL_ERROR
    judged_bad = tuple(o for o in m.ADAPTATION_OUTCOMES if o != "kept")
    hits = (f"sum(rate({selector(m.ERROR_MEMORY_READS, result='hit')}[$__rate_interval])) / "
            f"sum(rate({selector(m.ERROR_MEMORY_READS)}[$__rate_interval]))")
    diff = " - ".join(f"sum by (instance, metric) ({selector(error, model=r, metric='$metric')})"
                      for r in m.MODEL_ROLES)
    reads = _timeseries(
        "Error-memory reads and hit ratio",
        "Reads per second by result, and the share of reads that found a neighbour "
        "(right axis).", "reqps",
        [(_rate(m.ERROR_MEMORY_READS, "result"), "{{result}}"), (hits, "hit ratio")], w=12,
    ).override_by_name("hit ratio", [
        dm.DynamicConfigValue(id_val="unit", value="percentunit"),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        dm.DynamicConfigValue(id_val="min", value=0),
        dm.DynamicConfigValue(id_val="max", value=1),
    ])
    rows = [
        ("Model quality", [
            _timeseries("Prequential error: adapted vs shadow",
                        "Rolling prequential error of the served (adapted) model and of its "
                        "frozen shadow. The adapted line below the shadow line means "
                        "adaptation helps.", "short",
                        [(selector(error, metric="$metric"), "{{model}} {{metric}} {{instance}}")],
                        w=16, h=9),
            _timeseries("Adapted minus shadow error",
                        "Adapted error minus shadow error, per metric: below zero the adapted "
                        "model is better.", "short", [(diff, "{{metric}} {{instance}}")],
                        w=8, h=9, thresholds=_thresholds((None, "green"), (0, "red"))),
        ]),
        ("Drift and adaptation", [
            _timeseries("Drift detections",
                        "Detections per interval, by detector and watched signal (loss or "
                        "input). They also appear as annotations on every panel.", "short",
                        [(_rate(m.DRIFT_DETECTIONS, "detector, signal", "increase"),
                          "{{detector}} {{signal}}")], w=8, bars=True),
            _timeseries("Adaptations applied, skipped, kept / rolled back",
                        "Adaptation actions per interval: applied to the served model after a "
                        "detection, skipped because the model has no hook for them (nothing "
                        "changed), and judged against the frozen shadow: kept, rolled back "
                        "because the shadow did better, or reset because the model collapsed.",
                        "short",
                        [(_rate(m.ADAPTATIONS, "action, outcome", "increase"),
                          "{{action}} {{outcome}}"),
                         (_rate(m.ADAPTATIONS_APPLIED, "action", "increase"),
                          "{{action}} applied"),
                         (_rate(m.ADAPTATIONS_SKIPPED, "action", "increase"),
                          "{{action}} skipped (no hook)")],
                        w=8, bars=True, stacked=True),
            _stat("Rollback ratio (1h)",
                  "Share of the adaptations judged in the last hour that were rolled back or "
                  "reset.", "percentunit",
                  (_share(m.ADAPTATIONS, "1h", outcome=judged_bad), "rolled back"),
                  w=8, h=8, graph=True,
                  thresholds=_thresholds((None, "green"), (0.3, "orange"), (0.5, "red")))
            .min(0).max(1),
        ]),
        ("Error memory", [
            _timeseries("Error-memory entries", "Samples held by the error memory.", "short",
                        [(selector(m.ERROR_MEMORY_ENTRIES), "{{instance}}")], w=12),
            reads,
        ]),
        ("Stream", [
            _timeseries("Throughput", "Events per second by outcome.", "ops",
                        [(_rate(m.EVENTS, "outcome"), "{{outcome}}")], w=8),
            _timeseries("Stage latency (p95)",
                        "95th percentile of the time one micro-batch spends in each stage.",
                        "s", [(_quantile(0.95), "{{stage}}")], w=8),
            _timeseries("Consumer lag",
                        "Records between the consumed position and the end of the assigned "
                        "partitions.", "short",
                        [(f"sum by (instance) ({selector(m.CONSUMER_LAG)})", "{{instance}}")],
                        w=8),
            _timeseries("Dead letters",
                        "Records sent to the dead-letter sink per second, by reason.", "ops",
                        [(_rate(m.DEAD_LETTERS, "reason"), "{{reason}}")], w=12),
            _timeseries("Checkpoint age",
                        "Seconds since the last successful checkpoint (empty until the first "
                        "one).", "s",
                        [(f"time() - ({selector(m.CHECKPOINT_LAST_SUCCESS)} > 0)",
                          "{{instance}}")],
                        w=12, thresholds=_thresholds((None, "green"), (300, "orange"),
                                                     (900, "red"))),
        ]),
    ]
    annotations = [
        _annotation("Drift detections",
                    f"sum by (detector, signal) (changes({selector(m.DRIFT_DETECTIONS)}[1m])) > 0",
                    enable=True, color="orange", title="drift",
                    text="{{detector}} on {{signal}}", tag_keys="detector,signal"),
        _annotation("Rollbacks",
                    "sum by (action) (changes("
                    f"{selector(m.ADAPTATIONS, outcome=judged_bad)}[1m])) > 0",
                    enable=False, color="red", title="rollback", text="{{action}} rolled back",
                    tag_keys="action"),
    ]
    error_metric = ("metric", "Error metric",
                    f'label_values({series(error)}{{job=~"$job"}}, metric)')
    return _dashboard(
        "streamadapt-drift", "streamadapt / drift monitoring",
        "Prequential error of the adapted model against its frozen shadow, drift detections, "
        "adaptations and the stream's health.", ["streamadapt", "drift"],
        _variables([error_metric]), annotations, rows)


def service_dashboard() -> dashboard.Dashboard:
    """Liveness, throughput, stage latency, delivery and state, resources."""
    m = metrics
    build = (table.Panel().title("Build").description("Version of each running instance.")
             .datasource(_DS).span(12).height(5).unit("short").show_header(True)
             .with_target(prometheus.Dataquery().datasource(_DS).ref_id("A")
                          .expr(selector(m.BUILD_INFO)).legend_format("").instant()
                          .format(pm.PromQueryFormat.TABLE))
             .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                 "excludeByName": {"Time": True, "Value": True, "__name__": True}})))
    rows = [
        ("Process", [
            _stat("Targets up", "Scrape targets of the selected jobs that answer.", "short",
                  (f"sum({selector('up')})", "up"), w=4, h=5),
            _stat("Uptime", "Time since the process started.", "s",
                  (f"time() - {selector('process_start_time_seconds')}", "{{instance}}"),
                  w=4, h=5),
            _stat("Poll-loop heartbeat age",
                  "Seconds since the poll loop last completed an iteration (the liveness "
                  "signal).", "s", (f"time() - {selector(m.HEARTBEAT)}", "{{instance}}"),
                  w=4, h=5, thresholds=_thresholds((None, "green"), (30, "orange"),
                                                   (120, "red"))),
            build,
        ]),
        ("Events", [
            _timeseries("Events by outcome", "Events per second by outcome.", "ops",
                        [(_rate(m.EVENTS, "outcome"), "{{outcome}}")], w=8),
            _timeseries("Predictions emitted", "Prediction records emitted per second.", "ops",
                        [(_rate(m.PREDICTIONS, "instance"), "{{instance}}")], w=8),
            _timeseries("Pending labels", "Predictions waiting for their label.", "short",
                        [(f"sum by (instance) ({selector(m.PENDING_LABELS)})", "{{instance}}")],
                        w=8),
        ]),
        ("Latency", [
            _timeseries("Stage latency quantiles",
                        "p50 / p95 / p99 of the time one micro-batch spends in each stage.",
                        "s", [(_quantile(q), f"{{{{stage}}}} p{round(q * 100)}")
                              for q in (0.5, 0.95, 0.99)], w=12),
            _timeseries("Time share by stage",
                        "Seconds spent per second of wall time in each stage (1.0 = the loop "
                        "is busy in that stage all the time).", "percentunit",
                        [("sum by (stage) (rate("
                          f"{selector(m.STAGE_DURATION, '_sum')}[$__rate_interval]))",
                          "{{stage}}")], w=12, stacked=True),
        ]),
        ("Delivery and state", [
            _timeseries("Consumer lag", "Records behind the end of the assigned partitions.",
                        "short",
                        [(f"sum by (instance) ({selector(m.CONSUMER_LAG)})", "{{instance}}")],
                        w=8),
            _timeseries("Dead letters by reason", "Records dead-lettered per second, by reason.",
                        "ops", [(_rate(m.DEAD_LETTERS, "reason"), "{{reason}}")], w=8),
            _timeseries("Checkpoints", "Checkpoint attempts per second by outcome.", "ops",
                        [(_rate(m.CHECKPOINTS, "outcome"), "{{outcome}}")], w=8),
        ]),
        ("Resources", [
            _timeseries("CPU", "CPU seconds used per second.", "percentunit",
                        [(f"rate({selector('process_cpu_seconds_total')}[$__rate_interval])",
                          "{{instance}}")], w=12),
            _timeseries("Resident memory", "Resident set size of the process.", "bytes",
                        [(selector("process_resident_memory_bytes"), "{{instance}}")], w=12),
        ]),
    ]
    return _dashboard(
        "streamadapt-service", "streamadapt / service",
        "Health of the streamadapt service: liveness, throughput, latency per stage, lag, "
        "dead letters, checkpoints and resources.", ["streamadapt", "service"],
        _variables(), [], rows)


def render(board: dashboard.Dashboard) -> str:
    """The dashboard as the JSON text that is committed (two-space indent, final newline)."""
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """Every dashboard's JSON text by file name."""
    return {"streamadapt-drift.json": render(drift_dashboard()),
            "streamadapt-service.json": render(service_dashboard())}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards next to this module, or with ``--check`` compare them.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``): ``--check``, ``--out DIR``.

    Returns
    -------
    int
        The exit status: 1 when ``--check`` found a file out of date, else 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a committed file is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="folder (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build_all().items():
        path = args.out / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run: python dashboards/build.py",
              file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
