"""Scale-out through Kafka: accuracy, throughput and hand-over with 1 and 2 replicas.

One command::

    python benchmarks/kafka_scale.py [--ctr-limit 40000] [--partitions 6] [--out out/]

Through the embedded tansu broker, with the service as users run it (``python -m
connectors run --kafka``, one process per replica, the default model of the task, weights
averaged through a shared checkpoint directory every ``--interval`` seconds):

* **Accuracy.** MovieLens (clicks, ``ctr-net+reloop2``) and the link-load scenario
  (forecasts, ``liquid``) produced keyed by user / link into ``--partitions`` partitions,
  served by 1 replica, by 2 replicas (weights averaged, exchanged as deltas, or not at all); the
  prequential AUC / MAE of the predictions read back from the output topic, beside
  ``streamadapt evaluate`` (:func:`streamadapt.evaluate.evaluate`, one process, time
  order) on the same events. The drift monitor is off on both sides: this measures the
  state model.
* **Throughput** of each run (events over the time from the first replica's readiness to
  the last prediction's CreateTime) and its ratio between 2 replicas and 1.
* **Hand-over**: when the second replica joins, the pause of the first (from giving its
  partitions back to getting its share again) and the time to restore the moved
  partitions' state.
* **kill -9**: one replica killed mid-stream and restarted: the records replayed, and the
  duplicate predictions in the output.

A table is printed with the goals met or missed, and ``kafka_scale.json`` goes to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from connectors.broker import EmbeddedBroker, create_topics, free_port
from streamadapt.adapters.registry import make_model
from streamadapt.datasets import load_dataset
from streamadapt.evaluate import evaluate
from streamadapt.report import auc

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=150)
DEFAULT_MODEL = {"ctr": "ctr-net+reloop2", "forecast": "liquid"}


# -- data ------------------------------------------------------------------------------------
def stream_records(task: str, limit: int | None) -> tuple[list[tuple[bytes, bytes]],
                                                         dict[str, float]]:
    """(key, value) records of the task's stream, and each event's label or next load."""
    if task == "ctr":
        stream = load_dataset("movielens", limit=limit)
    else:
        stream = load_dataset("linkload", seed=0)
    records, truth = [], {}
    last: dict[str, str] = {}
    for e in stream.events:
        if task == "ctr":
            records.append((e.user_id.encode(), orjson.dumps(e.model_dump())))
            truth[e.event_id] = float(e.label)
        else:
            records.append((e.link_id.encode(), orjson.dumps(e.model_dump())))
            prev = last.get(e.link_id)
            if prev is not None:
                truth[prev] = e.load  # the prediction at prev is scored by this load
            last[e.link_id] = e.event_id
        if limit is not None and len(records) >= limit:
            break
    return records, truth


def reference(task: str, limit: int | None) -> float:
    """AUC (ctr) or MAE (forecast) of ``streamadapt evaluate`` on the same events."""
    if task == "ctr":
        stream = load_dataset("movielens", limit=limit)
    else:
        stream = load_dataset("linkload", seed=0)
    name = DEFAULT_MODEL[task]
    rep = evaluate(stream, {name: make_model(name, task=task)}, progress=False, limit=limit)
    return float(rep["models"][name]["auc" if task == "ctr" else "mae"])


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 18,
                      enable_idempotence=False)
    for key, value in records:
        p.send(topic, key=key, value=value)
    p.flush(120)
    p.close()


def read_predictions(bootstrap: str, topic: str, want: int, timeout_s: float
                     ) -> tuple[list[dict[str, Any]], float]:
    """Prediction records of ``topic`` until ``want`` distinct event ids came; also the
    newest record's CreateTime (s)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = None
    deadline = time.monotonic() + timeout_s
    while parts is None and time.monotonic() < deadline:
        parts = c.partitions_for_topic(topic)
        time.sleep(0.1)
    tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    newest = 0.0
    while time.monotonic() < deadline and len(ids) < want:
        for recs in c.poll(timeout_ms=500, max_records=50_000).values():
            for r in recs:
                d = orjson.loads(r.value)
                out.append(d)
                ids.add(d["event_id"])
                newest = max(newest, r.timestamp / 1000.0)
    c.close()
    return out, newest


# -- replicas ---------------------------------------------------------------------------------
class Replica:
    """``python -m connectors run --kafka`` as a child process."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.log = self.log_path.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connectors", "run", "--kafka", "--no-progress"],
            cwd=ROOT, env={**os.environ, **env, "STREAMADAPT_HTTP__PORT": str(self.port),
                           "STREAMADAPT_KAFKA__REPLICA_ID": name, "PYTHONUNBUFFERED": "1"},
            stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.text()[-3000:]}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO streamadapt\.(\w+) (.*)$",
                    re.M)


def events_of(text: str) -> list[tuple[float, str, str]]:
    """(unix time, logger, message) of the service's INFO log lines."""
    out = []
    for stamp, logger, msg in _STAMP.findall(text):
        t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((t, logger, msg))
    return out


def handover(first: str, second: str) -> dict[str, float | None]:
    """The first replica's pause when the second joined, and the restore time of the
    partitions the second one took over."""
    a, b = events_of(first), events_of(second)
    revoked = [t for t, lg, m in a if lg == "service" and m.startswith("revoked")]
    assigned = [t for t, lg, m in a if lg == "service" and m.startswith("assigned")]
    pause = None
    if revoked:
        after = [t for t in assigned if t >= revoked[0]]
        pause = after[0] - revoked[0] if after else None
    restore = sum(float(m.rsplit(" in ", 1)[1].split()[0]) for _, lg, m in b
                  if lg == "partitions" and m.startswith("restored partition"))
    return {"pause_s": pause, "restore_s": restore}


def score(task: str, preds: list[dict[str, Any]], truth: dict[str, float]) -> float:
    first: dict[str, float] = {}
    for d in preds:
        first.setdefault(d["event_id"], d["prediction"])
    ids = [i for i in first if i in truth]
    y = np.array([truth[i] for i in ids])
    p = np.array([first[i] for i in ids])
    if task == "ctr":
        return float(auc(y, p))
    return float(np.mean(np.abs(y - p)))


def serve(broker: EmbeddedBroker, task: str, n_replicas: int, records: list,
          truth: dict[str, float], args: argparse.Namespace, work: Path, tag: str,
          sync: str = "average", kill: bool = False) -> dict[str, Any]:
    """Serve the task's topic with ``n_replicas`` processes in a fresh group."""
    topic_in, topic_out = f"{task}-in", f"{tag}-out"
    create_topics(broker.bootstrap, {topic_out: args.partitions, f"{tag}-dlq": 1})
    env = {
        "STREAMADAPT_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "STREAMADAPT_KAFKA__INPUT_TOPICS": json.dumps([topic_in]),
        "STREAMADAPT_KAFKA__OUTPUT_TOPIC": topic_out,
        "STREAMADAPT_KAFKA__DEAD_LETTER_TOPIC": f"{tag}-dlq",
        "STREAMADAPT_KAFKA__GROUP_ID": tag,
        "STREAMADAPT_KAFKA__WEIGHT_SYNC": sync,
        "STREAMADAPT_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "STREAMADAPT_TASK": task,
        "STREAMADAPT_DRIFT__ENABLED": "false",
        "STREAMADAPT_CHECKPOINT__DIR": str(work / tag / "ckpt"),
        "STREAMADAPT_CHECKPOINT__INTERVAL_S": str(args.interval),
        "STREAMADAPT_PIPELINE__BATCH_SIZE": "256",
    }
    (work / tag).mkdir(parents=True, exist_ok=True)
    reps = [Replica(f"{tag}-r0", env, work / tag)]
    reps[0].wait_ready()
    t0 = time.time()  # serving starts: the first replica is ready
    for i in range(1, n_replicas):
        reps.append(Replica(f"{tag}-r{i}", env, work / tag))
        reps[-1].wait_ready()
    if kill:  # kill -9 mid-stream, then start it again
        while len(read_predictions(broker.bootstrap, topic_out, len(records) // 3, 2)[0]) \
                < len(records) // 3:
            time.sleep(0.2)
        reps[0].kill9()
        reps[0] = Replica(f"{tag}-r0b", env, work / tag)
    preds, newest = read_predictions(broker.bootstrap, topic_out, len(records), args.timeout)
    for r in reps:
        r.stop()
    ids = collections.Counter(d["event_id"] for d in preds)
    texts = [r.text() for r in reps]
    out = {
        "replicas": n_replicas, "weight_sync": sync,
        "metric": score(task, preds, truth),
        "events": len(ids), "complete": len(ids) == len(records),
        "events_per_s": len(ids) / max(newest - t0, 1e-9),
        "duplicates": sum(c - 1 for c in ids.values()),
    }
    if n_replicas > 1:
        out.update(handover(texts[0], texts[1]))
    if kill:
        text = reps[0].text()
        out["replayed"] = sum(int(b) - int(a) for a, b in
                              re.findall(r"replaying \S+ from (\d+) to (\d+)", text))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctr-limit", type=int, default=40_000,
                    help="MovieLens impressions (time order)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--interval", type=float, default=5.0,
                    help="checkpoint (and weight averaging) interval, s")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--tasks", default="ctr,forecast")
    ap.add_argument("--runs", default="",
                    help="only these runs, e.g. 2,2-deltas (default: 1,2,2-deltas,2-off,kill)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": vars(args), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = EmbeddedBroker(log_path=str(work / "broker.log")).start()
        try:
            for task in args.tasks.split(","):
                limit = args.ctr_limit if task == "ctr" else None
                console.print(f"[bold]{task}[/bold]: reference (streamadapt evaluate)")
                ref = reference(task, limit)
                records, truth = stream_records(task, limit)
                create_topics(broker.bootstrap, {f"{task}-in": args.partitions})
                produce(broker.bootstrap, f"{task}-in", records)
                runs = []
                for tag, n, sync, kill in ((f"{task}-1", 1, "average", False),
                                           (f"{task}-2", 2, "average", False),
                                           (f"{task}-2-deltas", 2, "deltas", False),
                                           (f"{task}-2-off", 2, "off", False),
                                           (f"{task}-kill", 1, "average", True)):
                    if args.runs and tag.split("-", 1)[1] not in args.runs.split(","):
                        continue
                    console.print(f"  {tag}: {n} replica(s), weight sync {sync}, kill {kill}")
                    runs.append({"run": tag, **serve(broker, task, n, records, truth, args,
                                                     work, tag, sync, kill)})
                results["tasks"][task] = {"events": len(records), "reference": ref,
                                          "runs": runs}
        finally:
            broker.stop()
    (out_dir / "kafka_scale.json").write_text(json.dumps(results, indent=2))
    report(results)
    return 0


def report(results: dict[str, Any]) -> None:
    goals = []
    for task, res in results["tasks"].items():
        metric = "AUC" if task == "ctr" else "MAE"
        ref = res["reference"]
        t = Table(title=f"{task}: {res['events']:,} events, {metric} of evaluate {ref:.4f}")
        for col in ("run", "replicas", "weight sync", metric, "vs evaluate", "events/s",
                    "pause s", "restore s", "duplicates", "replayed"):
            t.add_column(col)
        base_rate = None
        for r in res["runs"]:
            diff = (r["metric"] - ref) * 100 if task == "ctr" else (r["metric"] / ref - 1) * 100
            unit = " pts" if task == "ctr" else " %"
            if r["run"].endswith("-1"):
                base_rate = r["events_per_s"]
            t.add_row(r["run"], str(r["replicas"]), str(r["weight_sync"]),
                      f"{r['metric']:.4f}", f"{diff:+.2f}{unit}", f"{r['events_per_s']:,.0f}",
                      f"{r.get('pause_s') or 0:.2f}", f"{r.get('restore_s') or 0:.3f}",
                      str(r["duplicates"]), str(r.get("replayed", "-")))
            if r["weight_sync"] == "average" and not r["run"].endswith("kill"):
                ok = abs(diff) <= 0.5 if task == "ctr" else diff <= 2.0
                goals.append((f"{task} {r['replicas']} replica(s): {metric} within "
                              f"{'0.5 pts' if task == 'ctr' else '2 %'} of evaluate "
                              f"({diff:+.2f}{unit})", ok))
        console.print(t)
        two = [r for r in res["runs"] if r["run"].endswith("-2")]
        if base_rate and two:
            console.print(f"  throughput 2 replicas / 1: "
                          f"{two[0]['events_per_s'] / base_rate:.2f}x (2 cores)")
    for text, ok in goals:
        console.print(f"  {'[green]met[/green]' if ok else '[red]missed[/red]'}  {text}")


if __name__ == "__main__":
    raise SystemExit(main())
