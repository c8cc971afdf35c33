"""Two service processes in one consumer group split the partitions, and a partition's
state follows it to the member that gains it (restored from the shared checkpoints)."""

from __future__ import annotations

import collections

import pytest
from kafkahelp import (
    TOPICS,
    ServiceProcess,
    events,
    prediction_ids,
    produce,
    read_topic,
    wait_for,
)

from connectors.broker import create_topics

pytestmark = pytest.mark.kafka

LINKS = 6  # keys link-0..link-5: three on each of the two partitions


def test_two_replicas_split_partitions_and_state_follows(broker, tmp_path):
    create_topics(broker.bootstrap, {TOPICS["input"]: 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    n1, n2 = 1200, 1200
    produce(broker.bootstrap, TOPICS["input"], events(n1, links=LINKS))
    env = {"STREAMADAPT_CHECKPOINT__DIR": str(tmp_path / "ckpt"),
           "STREAMADAPT_CHECKPOINT__INTERVAL_S": "0",
           "STREAMADAPT_PIPELINE__BATCH_SIZE": "100"}
    a = ServiceProcess(broker.bootstrap, tmp_path, "a", env=env)
    a.wait_ready()
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=n1,
                                    timeout_s=5)) >= n1, 60, "replica a to serve the first part")
    assert a.readyz()["reason"].startswith("2 partitions assigned")

    b = ServiceProcess(broker.bootstrap, tmp_path, "b", env=env)
    b.wait_ready()
    wait_for(lambda: a.readyz().get("reason", "").startswith("1 partitions"), 30,
             "replica a to give up one partition")
    assert b.readyz()["reason"] == "1 partitions assigned, 1 restored from checkpoints"

    produce(broker.bootstrap, TOPICS["input"], events(n2, links=LINKS, start=n1))
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=n1 + n2,
                                    timeout_s=5)) >= n1 + n2, 60, "both replicas to serve")
    assert b.stop() == 0, b.output()[-3000:]
    assert a.stop() == 0, a.output()[-3000:]

    ids = prediction_ids(read_topic(broker.bootstrap, TOPICS["output"], idle_s=1.0))
    counts = collections.Counter(ids)
    assert set(counts) == {f"e{i}" for i in range(n1 + n2)}
    assert max(counts.values()) == 1  # a clean hand-over repeats nothing
    sa, sb = a.summary(), b.summary()
    served_b = int(sb["predictions emitted"].replace(",", ""))
    assert 0 < served_b < n2  # b served its partition's share of the second part
    scored = sum(int(s["predictions scored"].replace(",", "")) for s in (sa, sb))
    # Every prediction is scored except each link's last: b's first sample of each of its
    # links joined the prediction a made before the hand-over, which only works when the
    # partition's pending predictions and windows moved with it.
    assert scored == n1 + n2 - LINKS
