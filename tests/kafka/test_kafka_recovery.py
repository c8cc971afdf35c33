"""Crash and broker recovery through the real broker: kill -9 mid-stream then restart
loses no input and repeats at most one batch; a stopped and restarted broker does not
crash the service, which resumes on the new broker."""

from __future__ import annotations

import collections
import time

import pytest
from kafkahelp import (
    TOPICS,
    ServiceProcess,
    events,
    http_get,
    prediction_ids,
    produce,
    read_topic,
    wait_for,
)

from connectors.broker import create_topics

pytestmark = pytest.mark.kafka

BATCH = 200


def covered(bootstrap: str, want: set[str]) -> tuple[bool, list[str]]:
    ids = prediction_ids(read_topic(bootstrap, TOPICS["output"], idle_s=0.5, timeout_s=20))
    return want <= set(ids), ids


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_kill_9_mid_stream_then_restart_loses_nothing(broker, tmp_path, client):
    n = 8_000
    create_topics(broker.bootstrap, {TOPICS["input"]: 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    produce(broker.bootstrap, TOPICS["input"], events(n))
    env = {"STREAMADAPT_PIPELINE__BATCH_SIZE": str(BATCH),
           "STREAMADAPT_KAFKA__CLIENT": client,
           "STREAMADAPT_CHECKPOINT__DIR": str(tmp_path / "ckpt"),
           "STREAMADAPT_CHECKPOINT__INTERVAL_S": "0"}
    first = ServiceProcess(broker.bootstrap, tmp_path, "first", env=env)
    seen: list = []

    def some_output() -> bool:
        seen[:] = read_topic(broker.bootstrap, TOPICS["output"], expect=1000, timeout_s=5)
        return len(seen) >= 1000

    wait_for(some_output, 60, "the first predictions")
    first.kill9()
    before = read_topic(broker.bootstrap, TOPICS["output"], idle_s=1.0)
    assert len(before) < n, "the stream ended before the kill: not a mid-stream crash"

    second = ServiceProcess(broker.bootstrap, tmp_path, "second", env=env)
    want = {f"e{i}" for i in range(n)}
    ids: list[str] = []

    def done() -> bool:
        ok, ids[:] = covered(broker.bootstrap, want)
        return ok

    wait_for(done, 120, "predictions for every input", every_s=1.0)
    assert second.stop() == 0, second.output()[-3000:]
    assert "restored" in second.output()  # state came back from the checkpoints
    counts = collections.Counter(ids)
    assert set(counts) == want
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= BATCH, f"{duplicates} duplicates, more than one batch"


def test_broker_away_and_back(broker, tmp_path):
    topics = {TOPICS["input"]: 1, TOPICS["output"]: 1, TOPICS["dead"]: 1}
    create_topics(broker.bootstrap, topics)
    produce(broker.bootstrap, TOPICS["input"], events(600))
    svc = ServiceProcess(broker.bootstrap, tmp_path, env={
        "STREAMADAPT_KAFKA__FLUSH_TIMEOUT_S": "2",
        "STREAMADAPT_KAFKA__RETRY_BACKOFF_MAX_S": "1",
        # the broker comes back with empty storage and forgets producer ids, which ends an
        # idempotent producer (a real cluster keeps them: docs/kafka.md)
        "STREAMADAPT_KAFKA__ENABLE_IDEMPOTENCE": "false",
    })
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=600,
                                    timeout_s=5)) >= 600, 60, "predictions before the outage")
    broker.stop()
    time.sleep(5)
    assert svc.alive(), svc.output()[-3000:]
    code, body = http_get(svc.url + "/healthz")
    assert code == 200, body  # the loop still turns while the broker is away
    broker.start()  # same port, empty storage
    create_topics(broker.bootstrap, topics)
    produce(broker.bootstrap, TOPICS["input"], events(200, prefix="r"))
    want = {f"r{i}" for i in range(200)}
    wait_for(lambda: covered(broker.bootstrap, want)[0], 90,
             "predictions after the broker came back", every_s=1.0)
    assert svc.stop() == 0, svc.output()[-3000:]
