"""Helpers of the Kafka tests: produce events, read topics back, run the service as a
process (``python -m connectors run --kafka``) configured through STREAMADAPT_* variables."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
TOPICS = {"input": "events", "output": "predictions", "dead": "dead-letters"}


def events(n: int, links: int = 6, start: int = 0, prefix: str = "e") -> list[tuple[bytes, bytes]]:
    """(key, value) of ``n`` link-load samples, ``links`` links, event ids ``<prefix><i>``."""
    out = []
    for i in range(start, start + n):
        link = f"link-{i % links}"
        load = 50.0 + 10.0 * ((i // links) % 7) + (i % links)
        value = orjson.dumps({"event_id": f"{prefix}{i}", "link_id": link,
                              "timestamp": 60.0 * (i // links), "load": load})
        out.append((link.encode(), value))
    return out


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            **client: Any) -> int:
    p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5,
                      max_request_size=4 << 20, **client)
    n = 0
    for key, value in records:
        p.send(topic, key=key, value=value)
        n += 1
    p.flush(30)
    p.close()
    return n


def read_topic(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 30.0,
               idle_s: float = 2.0, **client: Any) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the start): until ``expect`` came,
    or nothing new came for ``idle_s``, or ``timeout_s``."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client)
    deadline = time.monotonic() + timeout_s
    parts: set[int] | None = None
    while parts is None and time.monotonic() < deadline:
        parts = c.partitions_for_topic(topic)
        if parts is None:
            time.sleep(0.2)
    if not parts:
        c.close()
        return []
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[Any] = []
    last = time.monotonic()
    while time.monotonic() < deadline:
        got = c.poll(timeout_ms=200)
        for recs in got.values():
            out.extend(recs)
        if got:
            last = time.monotonic()
        if expect is not None and len(out) >= expect:
            break
        if expect is None and time.monotonic() - last > idle_s:
            break
    c.close()
    return out


def prediction_ids(records: Iterable[Any]) -> list[str]:
    return [json.loads(r.value)["event_id"] for r in records]


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


class ServiceProcess:
    """``python -m connectors run --kafka`` as a child process."""

    def __init__(self, bootstrap: str, workdir: Path, name: str = "svc",
                 env: Mapping[str, str] | None = None, args: Iterable[str] = ()) -> None:
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        full = {
            **os.environ,
            "STREAMADAPT_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "STREAMADAPT_KAFKA__INPUT_TOPICS": json.dumps([TOPICS["input"]]),
            "STREAMADAPT_KAFKA__OUTPUT_TOPIC": TOPICS["output"],
            "STREAMADAPT_KAFKA__DEAD_LETTER_TOPIC": TOPICS["dead"],
            "STREAMADAPT_KAFKA__GROUP_ID": "streamadapt-test",
            "STREAMADAPT_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "STREAMADAPT_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "STREAMADAPT_KAFKA__POLL_TIMEOUT_S": "0.2",
            "STREAMADAPT_HTTP__PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connectors", "run", "--kafka", "--no-progress", *args],
            cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return http_get(self.url + "/readyz")[0] == 200

    def readyz(self) -> dict[str, Any]:
        return http_get(self.url + "/readyz")[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 40.0) -> None:
        def ok() -> bool:
            if not self.alive():
                raise AssertionError(f"service exited early:\n{self.output()[-3000:]}")
            return self.ready()

        wait_for(ok, timeout_s, "the service to be ready")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to end by itself; returns the exit code."""
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def summary(self) -> dict[str, str]:
        """The end-of-run table, measure -> value."""
        rows = re.findall(r"[│|]\s*([a-z][^│|]*?)\s*[│|]\s*([^│|]+?)\s*[│|]", self.output())
        return {k.strip(): v.strip() for k, v in rows}

    def __del__(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
