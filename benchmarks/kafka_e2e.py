"""End-to-end Kafka benchmark through the embedded tansu broker on loopback.

One command, both clients, baselines side by side::

    python benchmarks/kafka_e2e.py [--events 100000] [--rss-events 1000000] [--out out/]
    python benchmarks/kafka_e2e.py --only b,own,ctr     # just (b), (d) and (e)

Stages, (a) to (d) on the same pre-produced link-load stream (keyed by link):

(a) raw: the client consumes and produces every record with no processing, flushing and
    committing per batch like an at-least-once processor: the ceiling of that client;
(b) river loop: the per-event loop users write today with kafka-python (poll, json.loads,
    predict_one, learn_one, produce; auto-commit), with the same river model and features;
(c) streamadapt end to end (micro-batches, per-partition state, produce, commit) with the
    same river model (``river-linear``);
(d) streamadapt with its own adapters (``--own-models``, default ``last-value`` and the
    default forecast model ``liquid``; ``--own-events``, default ``--events``);
(e) streamadapt with the default click model (``ctr-net+reloop2``) on ``--ctr-events``
    records of the built-in ``clicks`` stream with delayed labels: impressions and click
    labels keyed by user on one topic. Its rate counts records read, impressions and
    labels, as ``streamadapt run``'s "records / s".

Every stage but (a) scores its predictions prequentially (predict, then learn): (b) in its
loop, the service stages from the pipeline's scores of the served model. The MAE of each
service forecast stage is compared with (b)'s over the events both scored (those whose
link's next sample both read); (e) reports the AUC of its scored impressions.

Then the end-to-end latency (input record's produce time to the prediction record's
produce time, both Kafka CreateTime stamps) of (c) with each client, fed at half of its
measured maximum rate for ``--latency-seconds`` but over at least ``--latency-records``
records (p50, p99 and max after a 10 % warm-up), and the service's RSS over
``--rss-events`` events (0 skips it). ``--only`` runs a subset of the stages. A table,
the errors and the goals met or missed are printed; JSON results and PNG plots go to
``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from kafka_e2e_baselines import STAGE_TIMEOUT_S, raw_confluent, raw_kafka_python, river_loop
from kafka_e2e_report import B_STAGE, ctr_stage, own_stage, report
from kafka_e2e_scores import (
    ATTRIBUTION_WINDOW_S,
    ScoreLog,
    click_records,
    matched_mae,
)
from rich.console import Console
from rich.progress import Progress

from connectors.broker import EmbeddedBroker, create_topics, free_port
from connectors.commands.run import build_pipeline
from connectors.kafka import open_kafka
from streamadapt.datasets import load_dataset
from streamadapt.events import encode
from streamadapt.service import Service
from streamadapt.settings import DEFAULT_MODEL, load_settings

CLIENTS = ("kafka-python", "confluent-kafka")
console = Console()


# -- data ------------------------------------------------------------------------------------
def iter_records(n: int, seed: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """``n`` encoded link-load samples of the linkload scenario, (key, value)."""
    per_step = 10  # fewer than abilene's links report per round while some are down
    stream = load_dataset("linkload", seed=seed, n_steps=n // per_step + 10)
    count = 0
    for e in stream.events:
        yield e.link_id.encode(), encode(e)
        count += 1
        if count >= n:
            return
    raise RuntimeError(f"the linkload stream gave {count} events, fewer than {n}")


def stream_records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    return list(iter_records(n, seed))


def fill(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], partitions: int
         ) -> None:
    from confluent_kafka import Producer

    create_topics(bootstrap, {topic: partitions})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False,
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    for key, value in records:
        while True:
            try:
                p.produce(topic, value=value, key=key)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


# -- stages (c), (d), (e): the service ---------------------------------------------------------
def service_run(bootstrap: str, src: str | list[str], dst: str, n: int, client: str,
                model: str, batch: int, on_batch: Any = None,
                stop: threading.Event | None = None, task: str = "forecast",
                pipeline: dict[str, Any] | None = None, scores: ScoreLog | None = None
                ) -> dict[str, Any]:
    """Serve ``n`` records of ``src`` (a topic or several) with ``model`` through
    ``client``, as ``streamadapt run --kafka`` does (partition state on). The rate counts
    the records read (for clicks: impressions and labels, as the run's "records / s")
    after the first batch. ``scores`` (a :class:`ScoreLog` of ``model``) collects the
    pipeline's prequential scores; ``pipeline`` adds pipeline settings."""
    settings = load_settings(
        task=task, model=model, pipeline={"batch_size": batch, **(pipeline or {})},
        kafka={"bootstrap_servers": bootstrap, "client": client,
               "input_topics": [src] if isinstance(src, str) else list(src),
               "output_topic": dst, "dead_letter_topic": dst + ".dlq",
               "group_id": f"svc-{dst}", "session_timeout_ms": 6000, "poll_timeout_s": 0.1},
    )
    source, sink, dead = open_kafka(settings)
    times: dict[str, float] = {}

    def batch_done(result: Any, summary: Any) -> None:
        if "first" not in times:
            times["first"], times["first_n"] = time.perf_counter(), summary.records
        if scores is not None:
            scores.add(result)
        if on_batch is not None:
            on_batch(summary)

    svc = Service(build_pipeline(settings), source, sink, dead, batch_size=batch,
                  poll_timeout_s=0.1, on_batch=batch_done,
                  max_poll_interval_s=settings.kafka.max_poll_interval_ms / 1000,
                  partition_state=True)
    stop = stop or threading.Event()
    timer = threading.Timer(STAGE_TIMEOUT_S, stop.set)
    timer.start()
    try:
        summary = svc.run(stop, max_records=n)
    finally:
        end = time.perf_counter()
        timer.cancel()
        svc.close()
    counted = summary.records - times.get("first_n", 0)
    dt = end - times.get("first", end)
    return {"events": summary.records, "seconds": dt,
            "events_per_s": counted / dt if dt > 0 else 0.0, "labelled": summary.labelled,
            "dead_letters": summary.dead_letters, "expired": summary.expired,
            **summary.metrics()}


# -- latency at half load ------------------------------------------------------------------
#: The latency stage measures at least this many records, whatever the duration.
MIN_LATENCY_RECORDS = 5_000
#: Records produced in this first share of the paced run are left out as warm-up.
WARMUP_SHARE = 0.1


def latency_plan(rate: float, seconds: float, min_records: int = MIN_LATENCY_RECORDS
                 ) -> tuple[int, float]:
    """(records, seconds) of a latency run at ``rate``: ``rate * seconds`` records, at least
    ``min_records`` (the run is then longer than ``seconds``).

    >>> latency_plan(5_000, 10)
    (50000, 10.0)
    >>> latency_plan(5_000, 0.1)
    (5000, 1.0)
    """
    if not rate > 0:
        raise ValueError(f"the latency stage needs a positive rate, got {rate!r} ev/s: stage "
                         "(c) measured no throughput")
    if min_records < 100:
        raise ValueError(f"min_records must be >= 100 (percentiles of a handful of records "
                         f"say nothing), got {min_records!r}")
    n = max(round(rate * seconds), min_records)
    return n, n / rate


def latency(bootstrap: str, records: list[tuple[bytes, bytes]], client: str, rate: float,
            seconds: float, batch: int, tag: str, min_records: int = MIN_LATENCY_RECORDS
            ) -> dict[str, Any]:
    """End-to-end latency of stage (c) with ``client`` at ``rate`` events/s: from each input
    record's CreateTime (set by the paced producer) to its prediction record's CreateTime
    (set by the service's producer), over the paced records but the first
    :data:`WARMUP_SHARE` of them (the one record that wakes the group up, sent before the
    service joined, is not measured).

    The run lasts ``seconds`` but measures at least ``min_records`` records. A run that
    matched under 99 % of its paced records is marked ``valid: False`` with the reason, and
    its percentiles are not a measurement.
    """
    from confluent_kafka import Producer

    n, planned_s = latency_plan(rate, seconds, min_records)
    if planned_s > seconds * 1.001:
        console.print(f"latency, {client}: {seconds:g} s at {rate:,.0f} ev/s is "
                      f"{rate * seconds:,.0f} records; measuring {n:,} ({planned_s:.1f} s)")
    src, dst = f"lat-in-{tag}", f"lat-out-{tag}"
    create_topics(bootstrap, {src: 2, dst: 2, dst + ".dlq": 1})
    stop = threading.Event()
    started = threading.Event()
    svc_result: dict[str, Any] = {}

    def serve() -> None:
        svc_result.update(service_run(bootstrap, src, dst, n + 1, client, "river-linear",
                                      batch, on_batch=lambda s: started.set(), stop=stop))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False,
                  "partitioner": "murmur2_random"})
    wake_id = orjson.loads(records[0][1])["event_id"]  # not measured: sent before the join
    p.produce(src, value=records[0][1], key=records[0][0])  # wakes the group up
    p.flush()
    if not started.wait(60):
        stop.set()
        t.join(30)
        return {"rate_events_per_s": rate, "events": n, "matched": 0, "valid": False,
                "reason": "the service read nothing within 60 s of the first record",
                "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "latencies_ms": []}
    # the paced producer runs in its own process, so that it does not take the service's
    # interpreter lock (a real producer is another process too)
    paced = []
    for i in range(1, n + 1):
        key, value = records[i % len(records)]
        if i >= len(records):  # the stream wraps: keep event ids unique
            tag_id = f'"event_id":"w{i // len(records)}-'.encode()
            value = value.replace(b'"event_id":"', tag_id, 1)
        paced.append((key, value))
    child = multiprocessing.get_context("spawn").Process(
        target=paced_produce, args=(bootstrap, src, paced, rate))
    child.start()
    child.join(planned_s * 3 + 60)
    t.join(planned_s + 120)
    stop.set()
    t.join(30)
    sent = dict(read_stamps(bootstrap, src, n + 1))
    got = dict(read_stamps(bootstrap, dst, len(sent)))
    pairs = sorted((sent[e], got[e] - sent[e]) for e in sent.keys() & got.keys() - {wake_id})
    skip = int(len(pairs) * WARMUP_SHARE)
    lat = np.array([d for _, d in pairs[skip:]], dtype=float)
    valid = len(pairs) >= 0.99 * n  # n >= min_records
    reason = "" if valid else (f"only {len(pairs):,} of {n:,} paced records matched (input "
                               f"records read back: {len(sent):,}, predictions: {len(got):,})")

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    return {"rate_events_per_s": rate, "events": int(n), "seconds": planned_s,
            "matched": len(pairs), "measured": int(len(lat)), "valid": valid,
            "reason": reason, "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": float(lat.max()) if len(lat) else float("nan"),
            "max_all_ms": float(max(d for _, d in pairs)) if pairs else float("nan"),
            "latencies_ms": lat.tolist()}


def paced_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                  rate: float) -> None:
    """Produce ``records`` at ``rate`` per second (each stamped with its produce time)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "enable.idempotence": False,
                  "partitioner": "murmur2_random"})
    t0 = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while (d := t0 + i / rate - time.perf_counter()) > 0:
            time.sleep(min(d, 0.002))
        while True:
            try:
                p.produce(topic, value=value, key=key)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(60)


def read_stamps(bootstrap: str, topic: str, expect: int, idle_s: float = 3.0,
                deadline_s: float = 120.0) -> list[tuple[str, float]]:
    """(event id, CreateTime in ms) of the records of ``topic``, read without a group until
    ``expect`` are read, nothing came for ``idle_s`` after the first one, or ``deadline_s``.
    """
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[tuple[str, float]] = []
    t0 = last = time.perf_counter()
    while len(out) < expect:
        now = time.perf_counter()
        if now - t0 > deadline_s or (out and now - last > idle_s):
            break
        for recs in c.poll(timeout_ms=300, max_records=5000).values():
            last = time.perf_counter()
            out.extend((orjson.loads(r.value)["event_id"], float(r.timestamp)) for r in recs)
    c.close()
    return out


# -- main -----------------------------------------------------------------------------------
#: What ``--only`` selects, by name or by the stage's letter.
STAGES = {"raw": "a", "river": "b", "linear": "c", "own": "d", "ctr": "e", "latency": "",
          "rss": ""}


def parse_only(text: str) -> set[str]:
    """The stages named in ``--only`` (names or letters, comma-separated).

    >>> sorted(parse_only("b, own,e"))
    ['ctr', 'own', 'river']
    """
    letters = {v: k for k, v in STAGES.items() if v}
    out = set()
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        name = letters.get(word, word)
        if name not in STAGES:
            raise ValueError(f"unknown stage {word!r}; valid choices: "
                             + ", ".join(f"{k} ({v})" if v else k for k, v in STAGES.items()))
        out.add(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events per rate stage")
    ap.add_argument("--own-events", type=int, default=None,
                    help="events for stage (d) (default: --events, so that its error is "
                    "compared with (b)'s over the same events; fewer for a slow adapter)")
    ap.add_argument("--own-models", default=f"last-value,{DEFAULT_MODEL['forecast']}",
                    help="comma-separated streamadapt adapters for stage (d)")
    ap.add_argument("--ctr-events", type=int, default=20_000,
                    help="click records (impressions + labels) of stage (e) (0: no stage (e))")
    ap.add_argument("--ctr-model", default=DEFAULT_MODEL["ctr"], help="click model of (e)")
    ap.add_argument("--only", metavar="STAGES",
                    help="run only these stages, comma-separated: raw (a), river (b), linear "
                    "(c), own (d), ctr (e), latency (needs c), rss; e.g. --only b,own,ctr "
                    "(the accuracy goal compares (d) with (b), so keep b)")
    ap.add_argument("--rss-events", type=int, default=1_000_000,
                    help="events of the RSS run (0: no RSS run)")
    ap.add_argument("--rss-client", choices=CLIENTS, default="confluent-kafka")
    ap.add_argument("--latency-seconds", type=float, default=10.0,
                    help="length of each latency run at half load")
    ap.add_argument("--latency-records", type=int, default=MIN_LATENCY_RECORDS,
                    help="fewest records a latency run measures (a short --latency-seconds "
                    "is stretched to reach them)")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--out", default="out", help="folder for kafka_e2e.json and PNG plots")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--report-only", metavar="JSON",
                    help="print the table and redraw the plots of an earlier run")
    args = ap.parse_args(argv)
    if args.report_only:
        old = json.loads(Path(args.report_only).read_text())
        cfg = old["config"]
        report(old, cfg["clients"].split(","), cfg["own_models"].split(","),
               Path(args.report_only).parent)
        return 0
    if args.quick:  # smaller defaults; sizes given on the command line are kept
        for name, value in (("events", 5_000), ("rss_events", 20_000),
                            ("latency_seconds", 3.0), ("ctr_events", 4_000)):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    if args.own_events is None:
        args.own_events = args.events
    if args.latency_seconds <= 0 or args.latency_records < 100:
        ap.error(f"--latency-seconds must be > 0 and --latency-records >= 100, got "
                 f"{args.latency_seconds:g} and {args.latency_records}")
    try:
        only = parse_only(args.only) if args.only else set(STAGES)
    except ValueError as exc:
        ap.error(f"--only: {exc}")
    if args.ctr_events <= 0:
        only.discard("ctr")
    if args.rss_events <= 0:
        only.discard("rss")
    torch.set_num_threads(1)
    clients = [c for c in args.clients.split(",") if c]
    own_models = [m for m in args.own_models.split(",") if m]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {**vars(args), "stages": sorted(only)}, "rates": {},
                               "accuracy": {}, "clicks": {}, "latency": {}, "rss": {}}
    broker = EmbeddedBroker(log_path=str(out / "kafka_e2e_broker.log")).start()
    try:
        records: list[tuple[bytes, bytes]] = []
        if only & {"raw", "river", "linear", "own", "latency"}:
            records = stream_records(max(args.events, args.own_events if "own" in only else 0))
            size = float(np.mean([len(v) for _, v in records[:1000]]))
            results["record_bytes"] = size
            console.print(f"tansu on {broker.bootstrap}; {len(records):,} link-load records "
                          f"of ~{size:.0f} B")
            fill(broker.bootstrap, "bench-in", records, args.partitions)
        if "ctr" in only:
            clicks, info = click_records(args.ctr_events)
            info["record_bytes"] = float(np.mean([len(v) for _, v in clicks[:1000]]))
            results["clicks"] = info
            console.print(f"{len(clicks):,} click records of ~{info['record_bytes']:.0f} B: "
                          f"{info['impressions']:,} impressions, {info['labels']:,} labels "
                          f"(clicks, ~{info['delay_s']:g} s after their impression)")
            fill(broker.bootstrap, "clicks-in", clicks, args.partitions)
            del clicks
        rates, accuracy = results["rates"], results["accuracy"]
        stages = rate_stages(broker.bootstrap, args, only, clients, own_models)
        with Progress(console=console) as progress:
            bar = progress.add_task("rate stages", total=len(stages))
            for i, (name, task, log, fn) in enumerate(stages):
                progress.update(bar, description=name)
                rates[name] = fn(f"bench-out-{i}")
                if log is not None:
                    rates[name].update(log.summary(task))
                progress.advance(bar)
        errors_b = next((log for name, _, log, _ in stages if name == B_STAGE), None)
        for name, task, log, _ in stages:
            if task == "forecast" and log is not None and name != B_STAGE and errors_b:
                accuracy[name] = {"ref": B_STAGE,
                                  **matched_mae(log.abs_errors(), errors_b.abs_errors())}
        for client in clients if "latency" in only else ():
            c_name = f"(c) streamadapt river-linear, {client}"
            if c_name not in rates:
                console.print(f"latency, {client}: not measured (it runs at half of (c)'s "
                              "rate; add linear to --only)")
                continue
            c_rate = rates[c_name]["events_per_s"]
            console.print(f"latency of (c), {client}, at half load: {c_rate / 2:,.0f} ev/s")
            # a broker of its own: the rate stages leave ~1M records in tansu's memory and
            # their clients' threads winding down, neither of which a deployment has
            gc.collect()
            with EmbeddedBroker() as lat_broker:
                results["latency"][client] = latency(
                    lat_broker.bootstrap, records, client, c_rate / 2, args.latency_seconds,
                    args.batch_size, tag=client, min_records=args.latency_records)
        del records, stages
        gc.collect()
        if "rss" in only:
            results["rss"] = rss_run(broker, args)
    finally:
        broker.stop()
    (out / "kafka_e2e.json").write_text(json.dumps(results, indent=2, default=float))
    report(results, clients, own_models, out)
    return 0


class _Errors(ScoreLog):
    """Stage (b)'s errors (event id -> absolute error) in the shape of a ScoreLog."""

    def __init__(self) -> None:
        super().__init__("river loop")
        self.errors: dict[str, float] = {}

    def abs_errors(self) -> dict[str, float]:
        return self.errors

    def summary(self, task: str) -> dict[str, Any]:
        return {}  # river_loop reports its own mae and scored


def rate_stages(bootstrap: str, args: argparse.Namespace, only: set[str], clients: list[str],
                own_models: list[str]) -> list[tuple[str, str, ScoreLog | None, Any]]:
    """(name, task, score log, run(output topic)) of the selected rate stages, in order."""
    stages: list[tuple[str, str, ScoreLog | None, Any]] = []
    if "raw" in only:
        for client in clients:
            raw = raw_kafka_python if client == "kafka-python" else raw_confluent
            stages.append((f"(a) raw consume+produce, {client}", "forecast", None,
                           lambda d, raw=raw: raw(bootstrap, "bench-in", d, args.events,
                                                  args.batch_size)))
    if "river" in only:
        b_log = _Errors()
        stages.append((B_STAGE, "forecast", b_log,
                       lambda d: river_loop(bootstrap, "bench-in", d, args.events,
                                            errors=b_log.errors)))
    for client in clients:
        if "linear" in only:
            log = ScoreLog("river-linear")
            stages.append((f"(c) streamadapt river-linear, {client}", "forecast", log,
                           lambda d, c=client, log=log: service_run(
                               bootstrap, "bench-in", d, args.events, c, "river-linear",
                               args.batch_size, scores=log)))
        for model in own_models if "own" in only else ():
            log = ScoreLog(model)
            stages.append((own_stage(model, client), "forecast", log,
                           lambda d, c=client, m=model, log=log: service_run(
                               bootstrap, "bench-in", d, args.own_events, c, m,
                               args.batch_size, scores=log)))
        if "ctr" in only:
            log = ScoreLog(args.ctr_model)
            stages.append((ctr_stage(args.ctr_model, client), "ctr", log,
                           lambda d, c=client, log=log: service_run(
                               bootstrap, "clicks-in", d, args.ctr_events, c, args.ctr_model,
                               args.batch_size, task="ctr", scores=log,
                               pipeline={"attribution_window_s": ATTRIBUTION_WINDOW_S})))
    return stages


def rss_run(broker: EmbeddedBroker, args: argparse.Namespace) -> dict[str, Any]:
    """RSS of a ``streamadapt run --kafka`` process, sampled while it serves
    ``rss_events`` events (counted from its /metrics)."""
    n = args.rss_events
    console.print(f"RSS run: {n:,} events through (c), {args.rss_client}, as its own process")
    fill(broker.bootstrap, "rss-in", iter_records(n, seed=1), args.partitions)
    create_topics(broker.bootstrap, {"rss-out": args.partitions, "rss-dlq": 1})
    port = free_port()
    env = {**os.environ,
           "STREAMADAPT_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
           "STREAMADAPT_KAFKA__CLIENT": args.rss_client,
           "STREAMADAPT_KAFKA__INPUT_TOPICS": '["rss-in"]',
           "STREAMADAPT_KAFKA__OUTPUT_TOPIC": "rss-out",
           "STREAMADAPT_KAFKA__DEAD_LETTER_TOPIC": "rss-dlq",
           "STREAMADAPT_KAFKA__GROUP_ID": "rss", "STREAMADAPT_KAFKA__SESSION_TIMEOUT_MS": "6000",
           "STREAMADAPT_PIPELINE__BATCH_SIZE": str(args.batch_size),
           "STREAMADAPT_HTTP__PORT": str(port), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors", "run", "--kafka", "--no-progress", "--model",
         "river-linear", "--limit", str(n)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with Progress(console=console) as progress:
        bar = progress.add_task("RSS run", total=n)
        while proc.poll() is None and time.perf_counter() - t0 < STAGE_TIMEOUT_S:
            done, mb = predicted(port), proc_rss_mb(proc.pid)
            if mb > 0 and done >= 0:
                samples.append((done, mb))
                progress.update(bar, completed=done)
            time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    dt = time.perf_counter() - t0
    ev = np.array([s[0] for s in samples], dtype=float)
    mb = np.array([s[1] for s in samples])
    warm = ev >= 0.2 * n
    after = mb[warm] if warm.any() else mb
    return {"client": args.rss_client, "events": n if proc.returncode == 0 else int(ev.max()),
            "events_per_s": float(ev.max() / dt) if len(ev) else 0.0, "samples": samples,
            "rss_start_mb": float(mb[0]), "rss_after_warmup_mb": float(after[0]),
            "rss_end_mb": float(mb[-1]), "growth_after_warmup_mb": float(after[-1] - after[0]),
            "peak_rss_mb": float(mb.max())}


def proc_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def predicted(port: int) -> int:
    """streamadapt_events_total{outcome="predicted"} of the service on ``port``; -1 if
    it does not answer yet."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('streamadapt_events_total{outcome="predicted"}'):
                    return int(float(line.split()[-1]))
    except OSError:
        return -1
    return -1


if __name__ == "__main__":
    raise SystemExit(main())
