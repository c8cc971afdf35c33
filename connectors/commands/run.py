"""``streamadapt run``: the service loop, on the embedded default stream or on Kafka.

With no arguments it needs no broker: it streams the built-in link-load scenario through
the full service path (encode -> decode -> pipeline -> sinks), serves ``/metrics``,
``/healthz`` and ``/readyz`` on a local port while it runs, shows progress, and prints a
summary table at the end. SIGINT/SIGTERM finish the batch in flight, checkpoint, commit and
exit cleanly.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamadapt.adapters.registry import make_model
from streamadapt.datasets import DATASETS, load_dataset
from streamadapt.drift.policy import ACTIONS
from streamadapt.events import encode
from streamadapt.http import Health, HealthServer
from streamadapt.io import IterableSource, ListSink
from streamadapt.metrics import track_error_memory
from streamadapt.monitor import DriftMonitor, monitor_from_settings
from streamadapt.pipeline import Pipeline
from streamadapt.runplot import RunRecorder, plot_run
from streamadapt.service import RunSummary, Service
from streamadapt.settings import Settings, SettingsError, load_settings

log = logging.getLogger("streamadapt")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the service (embedded default stream, a JSONL file, or Kafka)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML or TOML settings file (else STREAMADAPT_CONFIG)")
    p.add_argument("--task", choices=["forecast", "ctr"], help="task (default: from settings)")
    p.add_argument("--model", help="registered model name (see `streamadapt models`)")
    p.add_argument("--dataset", help=f"built-in stream: {', '.join(DATASETS)}")
    p.add_argument("--input", metavar="FILE",
                   help="replay raw JSON records, one per line, instead of a built-in stream")
    p.add_argument("--kafka", action="store_true", help="consume from Kafka (settings.kafka)")
    p.add_argument("--limit", type=int, help="stop after this many records")
    p.add_argument("--rate", type=float, help="pace the embedded stream to N records/s")
    p.add_argument("--linger", type=float, default=0.0,
                   help="keep serving HTTP this many seconds after the stream ends")
    p.add_argument("--http-port", type=int, help="port for /metrics /healthz /readyz "
                   "(0: a free one; default from settings)")
    p.add_argument("--batch-size", type=int, help="records per micro-batch")
    p.add_argument("--seed", type=int, help="seed of models and generators")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of the run: adapted vs "
                   "shadow error, detections, adaptations and outcomes, throughput")
    p.add_argument("--no-drift", action="store_true",
                   help="switch the drift monitor off (settings: drift.enabled)")
    p.set_defaults(func=run_command)


def _settings_from_args(args: argparse.Namespace) -> Settings:
    over: dict[str, Any] = {}
    for name in ("task", "model", "dataset", "seed"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    if args.http_port is not None:
        over["http"] = {"port": args.http_port}
    if args.batch_size is not None:
        over["pipeline"] = {"batch_size": args.batch_size}
    if args.no_drift:
        over["drift"] = {"enabled": False}
    if args.dataset in DATASETS and args.task is None:
        over["task"] = DATASETS[args.dataset].task
    return load_settings(args.config, **over)


def _paced(records: Iterable[bytes], rate: float | None) -> Iterator[bytes]:
    if not rate:
        yield from records
        return
    start = time.perf_counter()
    for i, rec in enumerate(records):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield rec


def build_pipeline(settings: Settings) -> Pipeline:
    params = {"seed": settings.seed, **settings.model_params}
    model = make_model(settings.model, task=settings.task, **params)
    ps = settings.pipeline
    try:
        monitor = monitor_from_settings(settings.drift, settings.task, seed=settings.seed)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"invalid setting drift: {exc}") from None
    return Pipeline(
        settings.task,
        {settings.model: model},
        window=ps.window,
        max_keys=ps.max_keys,
        attribution_window_s=ps.attribution_window_s,
        label_grace_s=ps.attribution_window_s if ps.label_grace_s is None
        else ps.label_grace_s,
        missing_label=ps.missing_label,
        monitor=monitor,
    )


def _embedded_source(settings: Settings, args: argparse.Namespace) -> tuple[Any, int | None]:
    if args.input:
        path = Path(args.input)
        if not path.exists():  # a regular file, or a pipe another process writes into
            raise SystemExit(f"--input: no such file {str(path)!r}")

        def lines() -> Iterator[bytes]:
            with path.open("rb") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip(b"\r\n")

        return IterableSource(_paced(lines(), args.rate), name=str(path)), None
    ds = DATASETS.get(settings.dataset)
    if ds is None:
        raise SystemExit(
            f"unknown dataset {settings.dataset!r}; valid choices: {', '.join(DATASETS)}"
        )
    if ds.task != settings.task:
        raise SystemExit(f"dataset {settings.dataset!r} is a {ds.task!r} stream, but task is "
                         f"{settings.task!r}")
    stream = load_dataset(settings.dataset, seed=settings.seed) if ds.name in (
        "linkload", "clicks") else load_dataset(settings.dataset)
    events: Iterable[Any] = stream.events
    total = stream.n_events
    args.drift_points = list(stream.drift_points)
    # a stream that can write its records itself (the link-load scenario) skips building
    # each event only to serialise it; the bytes are the same as encode's
    fast = getattr(events, "encoded", None)
    encoded: Iterable[bytes] = fast() if callable(fast) else (encode(e) for e in events)
    if args.limit is not None:
        encoded = itertools.islice(encoded, args.limit)
        total = min(total, args.limit) if total else args.limit
    return IterableSource(_paced(encoded, args.rate), name=f"dataset:{stream.name}"), total


def apply_process_settings(settings: Settings) -> None:
    """Settings that belong to the process rather than to an object: the level of the
    ``streamadapt`` loggers (``log_level``) and torch's intra-op threads (``torch_threads``;
    0 keeps torch's default). They come from the settings, so a value in the config file
    applies as much as one in the environment."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("streamadapt").setLevel(settings.log_level)
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)


def build_store(settings: Settings, kafka: bool = False) -> Any | None:
    """The checkpoint store of ``settings.checkpoint``, or None (no checkpoints).

    ``store=dir``: a :class:`~streamadapt.checkpoint.CheckpointStore` in ``dir`` when it is
    set (replicas share it through a volume). ``store=kafka``: a
    :class:`~connectors.kafka.statestore.KafkaStateStore`, a compacted topic of the
    cluster in ``settings.kafka``, which needs the service on Kafka (``kafka``, the
    ``--kafka`` flag); without it a :class:`~streamadapt.settings.SettingsError` names the
    field. Both sign and verify checkpoints with ``hmac_key`` when it is set. Nothing
    connects here: the Kafka store opens its clients on first use.
    """
    c = settings.checkpoint
    hmac_key = None if c.hmac_key is None else c.hmac_key.get_secret_value().encode()
    if c.store == "kafka":
        if not kafka:
            raise SettingsError("invalid setting checkpoint.store = 'kafka': the Kafka state "
                                "store needs the service on Kafka (--kafka); valid choices "
                                "without it: 'dir'")
        from connectors.kafka import open_state_store

        return open_state_store(settings, hmac_key=hmac_key)
    if not c.dir:
        return None
    from streamadapt.checkpoint import CheckpointStore

    return CheckpointStore(c.dir, keep=c.keep, hmac_key=hmac_key)


def store_name(store: Any) -> str:
    """Where a checkpoint store keeps its checkpoints, for messages."""
    topic = getattr(store, "topic", None)
    return f"topic {topic}" if topic is not None else str(getattr(store, "dir", store))


def run_command(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        settings = _settings_from_args(args)
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    apply_process_settings(settings)
    try:
        pipeline = build_pipeline(settings)
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    try:
        checkpointer = build_store(settings, kafka=args.kafka)
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if args.kafka:
        from connectors.kafka import open_kafka

        source, sink, dead = open_kafka(settings)
        total = None
    else:
        source, total = _embedded_source(settings, args)
        sink, dead = ListSink(keep=False), ListSink(keep=True)
    health = Health()
    server = None
    if settings.http.enabled:
        server = HealthServer(health, settings.http.host, settings.http.port).start()
        console.print(f"serving /metrics /healthz /readyz on {server.url}")
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        console.print(f"\n{signal.Signals(signum).name}: finishing the batch in flight")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} ev/s  {task.fields[err]}"), TimeElapsedColumn(),
        console=console, disable=args.no_progress,
    )
    bar = progress.add_task(f"{settings.task}/{settings.model}", total=total, rate="", err="")

    track_memory = track_error_memory(pipeline.models[pipeline.primary])
    recorder = RunRecorder(settings.task)
    seen: dict[int, DriftMonitor] = {}
    last = [time.perf_counter(), 0]

    def on_batch(result: Any, summary: RunSummary) -> None:
        if track_memory is not None:
            track_memory()
        now = time.perf_counter()
        scores = result.scores.get(pipeline.primary)
        stamps = [p.timestamp for p in result.predictions]
        mons = monitors(service)
        for mon in mons:  # partitions' pipelines go away on revocation
            seen[id(mon)] = mon
        if stamps or scores is not None:
            shadows = [mon.shadow_error for mon in mons]
            recorder.add(max(stamps) if stamps else float(scores.timestamps[-1]),
                         summary.records - last[1], now - last[0],
                         scores.y_true if scores is not None else np.empty(0),
                         scores.y_pred if scores is not None else np.empty(0),
                         float(np.nanmean(shadows)) if shadows and not all(
                             np.isnan(shadows)) else float("nan"))
        last[:] = [now, summary.records]
        err = "  ".join(f"{k}={v:.4g}" for k, v in summary.metrics().items())
        elapsed = max(time.perf_counter() - started, 1e-9)
        progress.update(bar, completed=summary.records, rate=f"{summary.records / elapsed:,.0f}",
                        err=err)

    kafka_options: dict[str, Any] = {}
    if args.kafka:
        k = settings.kafka
        kafka_options = {
            "max_poll_interval_s": k.max_poll_interval_ms / 1000.0,
            "retry_backoff_s": k.retry_backoff_s,
            "retry_backoff_max_s": k.retry_backoff_max_s,
        }
        if k.partition_state:  # key state follows its partitions across the group
            kafka_options["partition_state"] = True
            kafka_options["replica_id"] = k.replica_id or socket.gethostname()
            kafka_options["weight_sync"] = k.weight_sync
    service = Service(
        pipeline, source, sink, dead,
        batch_size=settings.pipeline.batch_size,
        poll_timeout_s=settings.kafka.poll_timeout_s,
        checkpointer=checkpointer,
        checkpoint_interval_s=settings.checkpoint.interval_s,
        health=health,
        max_record_bytes=settings.kafka.max_record_bytes,
        on_batch=on_batch,
        **kafka_options,
    )
    if checkpointer is not None and service.restore():
        console.print(f"restored state from {store_name(checkpointer)}")
    started = time.perf_counter()
    try:
        with progress:
            summary = service.run(stop, max_records=args.limit if args.kafka else None)
        if checkpointer is not None:
            service.checkpoint_now()
    finally:
        service.close()
        if hasattr(checkpointer, "close"):  # the Kafka state store's clients
            checkpointer.close()
    for mon in monitors(service):
        seen[id(mon)] = mon
    console.print(summary_table(summary, settings, list(seen.values())))
    if args.plot:
        timeline = sorted((e for mon in seen.values() for e in mon.timeline),
                          key=lambda e: e["timestamp"])
        path = plot_run(recorder, timeline, args.plot,
                        getattr(args, "drift_points", []),
                        title=f"streamadapt run: {settings.task} / {settings.model}")
        console.print(f"plot: {path}")
    if args.linger and server is not None and not stop.is_set():
        console.print(f"serving for {args.linger:g} s more (Ctrl-C to stop)")
        stop.wait(args.linger)
    if server is not None:
        server.stop()
    return 0


def monitors(service: Service) -> list[DriftMonitor]:
    """The drift monitors of a service (its replica's one pipeline)."""
    mon = service.pipeline.monitor
    return [mon] if isinstance(mon, DriftMonitor) else []


def drift_rows(mons: list[DriftMonitor], task: str) -> list[tuple[str, str]]:
    """Summary-table rows of the drift monitors: detections per signal, adaptations
    applied per action, their outcomes, skipped actions, and the adapted vs shadow loss
    over every judged event."""
    if not mons:
        return [("drift monitor", "off")]
    total: dict[str, int] = {}
    for mon in mons:
        for k, v in mon.counts.items():
            total[k] = total.get(k, 0) + v
    by_signal: dict[str, int] = {}
    for mon in mons:
        for e in mon.timeline:
            if e["type"] == "detection":
                by_signal[e["signal"]] = by_signal.get(e["signal"], 0) + 1
    applied = ", ".join(f"{a} {total[f'applied_{a}']}" for a in ACTIONS
                        if total.get(f"applied_{a}"))
    rows = [
        ("drift detections", f"{total['detections']:,}" + (
            " (" + ", ".join(f"{s} {n}" for s, n in sorted(by_signal.items())) + ")"
            if by_signal else "")),
        ("adaptations applied", f"{total['adaptations']:,}" + (f" ({applied})" if applied
                                                                else "")),
        ("adaptations kept / rolled back / reset",
         f"{total['kept']} / {total['rolled_back']} / {total['reset']}"),
        ("actions skipped (no hook)", f"{total['skipped']:,}"),
    ]
    n = sum(mon.judged["n"] for mon in mons)
    if n:
        a = sum(mon.judged["adapted"] for mon in mons) / n
        b = sum(mon.judged["shadow"] for mon in mons) / n
        metric = "mae" if task == "forecast" else "logloss"
        rows.append((f"judged {metric}: adapted vs shadow",
                     f"{a:.4f} vs {b:.4f} ({n:,} events)"))
    return rows


def summary_table(summary: RunSummary, settings: Settings,
                  mons: list[DriftMonitor] | None = None) -> Table:
    table = Table(title=f"streamadapt run: {settings.task} / {settings.model}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("records read", f"{summary.records:,}"),
        ("events", f"{summary.events:,}"),
        ("predictions emitted", f"{summary.predictions:,}"),
        ("predictions scored", f"{summary.labelled:,}"),
        ("dead letters", f"{summary.dead_letters:,}"),
        ("labels expired", f"{summary.expired:,}"),
        ("seconds", f"{summary.seconds:.2f}"),
        ("records / s", f"{summary.events_per_second:,.0f}"),
    ]
    rows += [(f"prequential {k}", f"{v:.4f}") for k, v in summary.metrics().items()]
    rows += [(f"dead letters: {k}", str(v)) for k, v in sorted(summary.dead_letter_reasons.items())]
    rows += drift_rows(mons or [], settings.task)
    for name, value in rows:
        table.add_row(name, value)
    return table
