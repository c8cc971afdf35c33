"""``streamadapt demo``: the Kafka service end to end on this machine, nothing to install.

It starts the embedded tansu broker on a free loopback port, creates the topics, produces
the generated link-load stream (keyed by link) with a few malformed records mixed in, runs
the service against it as a consumer-group member (micro-batches, per-partition state,
checkpoints, dead letters), then reads predictions and dead letters back from their topics,
shows them with the run's counts and prequential error, and stops everything it started.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import tempfile
import threading
import time
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from connectors.broker import BrokerError, EmbeddedBroker, create_topics
from connectors.commands.run import (
    apply_process_settings,
    build_pipeline,
    build_store,
    summary_table,
)
from streamadapt.datasets import load_dataset
from streamadapt.events import encode
from streamadapt.service import Service
from streamadapt.settings import load_settings

BAD_RECORDS = [
    b'{"event_id": "bad-1", "link_id": ',
    b'{"event_id": "bad-2", "link_id": "X-Y", "timestamp": 0, "load": "heavy"}',
    b'{"event_id": "bad-3", "link_id": "X-Y", "timestamp": 0, "load": NaN}',
]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="start an embedded Kafka broker, stream link loads "
                       "through the service and show the result", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="link-load samples to stream")
    p.add_argument("--partitions", type=int, default=2, help="partitions of the input topic")
    p.add_argument("--client", choices=["kafka-python", "confluent-kafka"],
                   default="kafka-python", help="Kafka client of the service")
    p.add_argument("--model", default=None,
                   help="forecasting model (default: the service's default, liquid)")
    p.add_argument("--batch-size", type=int, default=500, help="records per micro-batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream and the model")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many s")
    p.set_defaults(func=demo_command)


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]],
             console: Console) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                             linger_ms=10, batch_size=1 << 16)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"producing to {topic}", total=len(records))
        for i, (key, value) in enumerate(records):
            producer.send(topic, key=key, value=value)
            if i % 2000 == 0:
                progress.update(bar, completed=i)
        producer.flush()
    producer.close()


def _read_back(bootstrap: str, topic: str, limit: int, timeout_s: float = 5.0) -> list[Any]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < limit and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200).values():
            out.extend(recs)
    consumer.close()
    return out[:limit]


def demo_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    console = Console(stderr=True)
    workdir = tempfile.mkdtemp(prefix="streamadapt-demo-")
    try:
        broker = EmbeddedBroker(log_path=f"{workdir}/broker.log").start()
    except BrokerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    try:
        return _demo(args, broker, workdir, console)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        console.print("broker stopped, temporary files removed")


def _demo(args: argparse.Namespace, broker: EmbeddedBroker, workdir: str,
          console: Console) -> int:
    topics = {"input": "linkload.samples", "output": "linkload.predictions",
              "dead": "linkload.dead-letters"}
    console.print(f"tansu broker on {broker.bootstrap} (in memory)")
    create_topics(broker.bootstrap, {topics["input"]: args.partitions,
                                     topics["output"]: args.partitions, topics["dead"]: 1})
    stream = load_dataset("linkload", seed=args.seed)
    records: list[tuple[bytes | None, bytes]] = [
        (e.link_id.encode(), encode(e)) for e in itertools.islice(stream.events, args.events)
    ]
    for i, bad in enumerate(BAD_RECORDS):  # a few bad records, spread over the stream
        records.insert((i + 1) * len(records) // (len(BAD_RECORDS) + 1), (b"X-Y", bad))
    _produce(broker.bootstrap, topics["input"], records, console)
    console.print(f"produced {len(records):,} records of {stream.name} "
                  f"({len(BAD_RECORDS)} of them malformed) to {topics['input']}")

    settings = load_settings(
        task="forecast", model=args.model, seed=args.seed, log_level="WARNING",
        pipeline={"batch_size": args.batch_size},
        kafka={"bootstrap_servers": broker.bootstrap, "client": args.client,
               "input_topics": [topics["input"]], "output_topic": topics["output"],
               "dead_letter_topic": topics["dead"], "group_id": "streamadapt-demo",
               "session_timeout_ms": 6000, "poll_timeout_s": 0.2},
        checkpoint={"dir": f"{workdir}/checkpoints", "interval_s": 5.0, "keep": 2},
    )
    apply_process_settings(settings)
    from connectors.kafka import open_kafka

    source, sink, dead = open_kafka(settings)
    stop = threading.Event()
    timer = threading.Timer(args.timeout, stop.set)
    timer.start()
    store = build_store(settings, kafka=True)  # the directory, or the Kafka state store
    service = Service(
        build_pipeline(settings), source, sink, dead,
        batch_size=settings.pipeline.batch_size,
        poll_timeout_s=settings.kafka.poll_timeout_s,
        checkpointer=store,
        checkpoint_interval_s=settings.checkpoint.interval_s,
        max_poll_interval_s=settings.kafka.max_poll_interval_ms / 1000,
        partition_state=True,
        replica_id="demo",
    )
    with Progress(console=console) as progress:
        bar = progress.add_task(f"serving with {args.client}", total=len(records))
        service.on_batch = lambda r, s: progress.update(bar, completed=s.records)
        try:
            summary = service.run(stop, max_records=len(records))
            service.checkpoint_now()
        finally:
            timer.cancel()
            service.close()
            if hasattr(store, "close"):  # STREAMADAPT_CHECKPOINT__STORE=kafka
                store.close()
    console.print(summary_table(summary, settings))
    if summary.records < len(records):
        console.print(f"[red]timed out after {args.timeout:g} s[/red]")

    preds = _read_back(broker.bootstrap, topics["output"], limit=8)
    table = Table(title=f"predictions read back from {topics['output']}")
    for col in ("partition", "offset", "key", "event_id", "load forecast"):
        table.add_column(col)
    for r in preds:
        p = orjson.loads(r.value)
        table.add_row(str(r.partition), str(r.offset), r.key.decode(), p["event_id"],
                      f"{p['prediction']:.2f}")
    console.print(table)
    dead_back = _read_back(broker.bootstrap, topics["dead"], limit=len(BAD_RECORDS))
    table = Table(title=f"dead letters read back from {topics['dead']}")
    for col in ("source", "reason"):
        table.add_column(col)
    for r in dead_back:
        h = {k: v.decode() for k, v in r.headers}
        table.add_row(f"{h['source_topic']}[{h['source_partition']}]@{h['source_offset']}",
                      h["reason"][:70])
    console.print(table)
    return 0 if summary.records == len(records) else 1
