"""The Kafka-native state store through the real broker: checkpoints round-trip through a
compacted topic; a multi-MiB state is chunked (and stale chunks get tombstones); a torn
write falls back to the previous complete checkpoint; a stale generation is refused and
ranks below a newer one; signed checkpoints are verified and forged records neither
restore nor fence; tens of slots restore quickly; an unreachable broker is an OSError.
End to end, with no checkpoint directory at all: two service processes hand a partition's
state over through the topic, and a member killed with -9 is restored from it."""

from __future__ import annotations

import collections
import re
import time
import uuid
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer
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
from connectors.kafka.statestore import KafkaStateStore, chunk_records
from streamadapt.checkpoint import StaleCheckpoint, encode_checkpoint

pytestmark = pytest.mark.kafka

TOPIC = "group.state"


def store(broker: Any, **kw: Any) -> KafkaStateStore:
    return KafkaStateStore(TOPIC, {"bootstrap_servers": [broker.bootstrap]}, **kw)


def raw_write(broker: Any, records: list) -> None:
    """Write records into the state topic as another (crashing, racing) writer would."""
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                      max_request_size=4 << 20)
    for value, key, headers in records:
        p.send(TOPIC, value=value, key=key, headers=headers, partition=0)
    p.flush(30)
    p.close()


def as_array(v: Any) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def test_round_trip_through_the_topic(broker):
    a = store(broker)
    assert a.restore_partition(("events", 0)) is None  # creates the topic, empty
    a.save_partition(("events", 0), {"n": 1, "w": np.arange(4.0)}, 10, generation=2)
    a.save_partition(("events", 0), {"n": 2, "w": np.arange(4.0) * 2}, 20, generation=2)
    a.save({"whole": True}, {("events", 0): 20, ("events", 1): 5})
    a.save_slot("weights.r1", {"w": np.ones(3)}, {})

    b = store(broker)  # another replica: reads the topic from the beginning
    state, offset = b.restore_partition(("events", 0))
    assert (state["n"], offset, as_array(state["w"]).tolist()) == (2, 20, [0.0, 2.0, 4.0, 6.0])
    full = b.restore_slot_full("events.0")
    assert full.generation == 2 and full.offsets == {("events", 0): 20} and full.created > 0
    assert b.restore() == ({"whole": True}, {("events", 0): 20, ("events", 1): 5})
    assert b.slots() == ["events.0", "service", "weights.r1"]
    assert b.restore_partition(("events", 9)) is None and b.corrupt == []
    a.save_partition(("events", 0), {"n": 3}, 30, generation=3)
    assert b.restore_partition(("events", 0)) == ({"n": 3}, 30)  # b read the new tail
    a.close()
    b.close()


def test_generation_minus_one_ranks_below_a_known_generation(broker):
    a = store(broker)
    a.save_slot("s", {"n": 1}, {}, generation=3)
    a.save_slot("s", {"n": 2}, {})  # unknown generation: written, but ranks lower
    assert a.restore_slot("s")[0] == {"n": 1}
    a.save_slot("s", {"n": 3}, {}, generation=3)  # same generation: write order decides
    assert store(broker).restore_slot("s")[0] == {"n": 3}


def test_a_multi_mib_state_is_chunked_and_stale_chunks_get_tombstones(broker):
    a = store(broker)
    big = np.random.default_rng(0).standard_normal(500_000)  # 4 MB, incompressible
    a.save_slot("weights.r1", {"w": big}, {("events", 0): 7}, generation=1)
    recs = read_topic(broker.bootstrap, TOPIC, idle_s=1.0)
    keys = sorted(r.key.decode() for r in recs)
    assert len(keys) >= 8 and keys[0] == "weights.r1/0"
    assert max(len(r.value) for r in recs) <= 512 << 10  # fits the default record limit
    assert len({dict(r.headers)["checkpoint_id"] for r in recs}) == 1

    b = store(broker)
    found = b.restore_slot_full("weights.r1")
    assert np.array_equal(as_array(found.state["w"]), big)
    assert found.offsets == {("events", 0): 7} and found.generation == 1

    a.save_slot("weights.r1", {"w": big[:1000]}, {}, generation=1)  # one chunk now
    recs = read_topic(broker.bootstrap, TOPIC, idle_s=1.0)
    tombstones = {r.key.decode() for r in recs if r.value is None}
    assert tombstones == {f"weights.r1/{i}" for i in range(1, len(keys))}
    assert np.array_equal(as_array(b.restore_slot("weights.r1")[0]["w"]), big[:1000])
    # After compaction (the last record per key), only the new checkpoint is left whole.
    last = {r.key: r for r in recs}
    survivors = [r for r in last.values() if r.value is not None]
    assert [r.key for r in survivors] == [b"weights.r1/0"]


def test_a_torn_write_falls_back_to_the_previous_checkpoint(broker):
    a = store(broker, chunk_bytes=1024)
    a.save_slot("events.3", {"w": np.arange(1000.0), "v": 1}, {("events", 3): 100})
    blob = encode_checkpoint({"w": np.arange(1000.0), "v": 2}, {("events", 3): 200})
    torn = chunk_records("events.3", blob, checkpoint_id=uuid.uuid4().hex, chunk_bytes=1024)
    raw_write(broker, torn[:-2])  # the writer died before its last two chunks

    b = store(broker, chunk_bytes=1024)
    state, offsets = b.restore_slot("events.3")
    assert state["v"] == 1 and offsets == {("events", 3): 100}
    assert len(b.corrupt) == 1 and "torn" in b.corrupt[0]
    assert a.restore_slot("events.3")[0]["v"] == 1  # the writer's own cache agrees

    # A checkpoint whose chunks are all there but whose digest does not match is skipped.
    bad = chunk_records("events.3", blob, checkpoint_id=uuid.uuid4().hex, chunk_bytes=1024)
    bad[1] = (bad[1][0][:-1] + b"!", bad[1][1], bad[1][2])
    raw_write(broker, bad)
    assert b.restore_slot("events.3")[0]["v"] == 1
    assert "digest mismatch" in b.corrupt[0]

    # A slot holding only a torn write restores as None (a fresh start).
    raw_write(broker, chunk_records("events.4", blob, checkpoint_id="x", chunk_bytes=1024)[:1])
    assert b.restore_slot("events.4") is None and len(b.corrupt) == 1
    assert "events.4" not in b.slots()


def test_a_stale_generation_is_refused_and_ranks_below(broker):
    old_owner, new_owner = store(broker), store(broker)
    old_owner.save_slot("events.1", {"owner": "old"}, {("events", 1): 50}, generation=5)
    new_owner.save_slot("events.1", {"owner": "new"}, {("events", 1): 60}, generation=6)
    before = len(read_topic(broker.bootstrap, TOPIC, idle_s=1.0))
    with pytest.raises(StaleCheckpoint, match="generation 5 is older than generation 6"):
        old_owner.save_slot("events.1", {"owner": "old"}, {("events", 1): 70}, generation=5)
    assert len(read_topic(broker.bootstrap, TOPIC, idle_s=1.0)) == before  # nothing written
    old_owner.save_slot("events.2", {"owner": "old"}, {}, generation=5)  # other slots: fine

    # Two writers racing past the check: the newer generation still wins the restore.
    late = encode_checkpoint({"owner": "late"}, {("events", 1): 80}, generation=5)
    raw_write(broker, chunk_records("events.1", late, checkpoint_id="late", generation=5))
    found = store(broker).restore_slot_full("events.1")
    assert (found.state["owner"], found.generation) == ("new", 6)


def test_signed_checkpoints_and_forged_records(broker):
    key = "0123456789abcdef0123"
    signed = store(broker, hmac_key=key)
    signed.save_slot("events.0", {"n": 1}, {("events", 0): 5}, generation=2)
    unsigned = store(broker)  # a replica without the key refuses what it cannot verify
    assert unsigned.restore_slot("events.0") is None
    assert len(unsigned.corrupt) == 1 and "key" in unsigned.corrupt[0]
    # Records forged into the topic (no key) with a huge generation neither restore nor
    # fence the slot.
    forged = encode_checkpoint({"n": 666}, {("events", 0): 9}, generation=99)
    raw_write(broker, chunk_records("events.0", forged, checkpoint_id="f", generation=99))
    reader = store(broker, hmac_key=key)
    assert reader.restore_slot("events.0")[0] == {"n": 1}
    assert "unsigned checkpoint refused" in reader.corrupt[0]
    signed.save_slot("events.0", {"n": 2}, {("events", 0): 6}, generation=3)  # not fenced
    assert reader.restore_slot_full("events.0").state == {"n": 2}
    with pytest.raises(StaleCheckpoint):  # the genuine generation 3 does fence
        reader.save_slot("events.0", {"n": 0}, {}, generation=2)


def test_tens_of_slots_restore_quickly(broker):
    a = store(broker)
    for p in range(40):
        a.save_partition(("events", p), {"p": p, "w": np.arange(2000.0)}, p, generation=1)
    b = store(broker)
    t = time.perf_counter()
    got = [b.restore_partition(("events", p)) for p in range(40)]
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = [b.restore_partition(("events", p)) for p in range(40)]
    cached = time.perf_counter() - t
    assert [g[1] for g in got] == list(range(40)) == [g[1] for g in again]
    assert first < 10 and cached < 5, (first, cached)  # ~1 s and ~0.5 s measured


def test_an_unreachable_broker_is_an_oserror(broker):
    a = store(broker, timeout_s=2)
    a.save_slot("s", {"n": 1}, {})
    broker.stop()
    t = time.monotonic()
    with pytest.raises(OSError, match=TOPIC):
        a.save_slot("s", {"n": 2}, {})
    assert time.monotonic() - t < 15
    a.close()


# -- end to end, through the service: no checkpoint directory anywhere ----------------------

LINKS = 6  # keys link-0..link-5: three on each of the two partitions
KAFKA_STORE = {"STREAMADAPT_CHECKPOINT__STORE": "kafka",
               "STREAMADAPT_CHECKPOINT__INTERVAL_S": "0"}
STATE_TOPIC = "streamadapt-test.state"  # <group id>.state


def scored(svc: ServiceProcess) -> int:
    return int(svc.summary()["predictions scored"].replace(",", ""))


def test_two_replicas_hand_a_partition_over_through_the_kafka_store(broker, tmp_path):
    create_topics(broker.bootstrap, {TOPICS["input"]: 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    n1, n2 = 1200, 1200
    produce(broker.bootstrap, TOPICS["input"], events(n1, links=LINKS))
    env = {**KAFKA_STORE, "STREAMADAPT_PIPELINE__BATCH_SIZE": "100"}
    a = ServiceProcess(broker.bootstrap, tmp_path, "a",
                       env={**env, "STREAMADAPT_KAFKA__REPLICA_ID": "a"})
    a.wait_ready()
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=n1,
                                    timeout_s=5)) >= n1, 60, "replica a to serve the first part")
    b = ServiceProcess(broker.bootstrap, tmp_path, "b",
                       env={**env, "STREAMADAPT_KAFKA__REPLICA_ID": "b"})
    b.wait_ready()
    wait_for(lambda: a.readyz().get("reason", "").startswith("1 partitions"), 30,
             "replica a to give up one partition")
    assert b.readyz()["reason"] == "1 partitions assigned, 1 restored from checkpoints"

    produce(broker.bootstrap, TOPICS["input"], events(n2, links=LINKS, start=n1))
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=n1 + n2,
                                    timeout_s=5)) >= n1 + n2, 60, "both replicas to serve")
    assert b.stop() == 0, b.output()[-3000:]
    assert a.stop() == 0, a.output()[-3000:]

    counts = collections.Counter(prediction_ids(read_topic(broker.bootstrap, TOPICS["output"],
                                                           idle_s=1.0)))
    assert set(counts) == {f"e{i}" for i in range(n1 + n2)}
    assert max(counts.values()) == 1  # a clean hand-over repeats nothing
    # Every prediction is scored but each link's last: b's first sample of each of its links
    # joined the prediction a made before the hand-over, carried by the state topic.
    assert scored(a) + scored(b) == n1 + n2 - LINKS
    slots = KafkaStateStore(STATE_TOPIC, {"bootstrap_servers": [broker.bootstrap]}).slots()
    assert {"weights.a", "weights.b"} <= set(slots), slots
    assert not list(tmp_path.glob("**/*.ckpt"))  # no checkpoint file anywhere


def test_kill_9_then_restore_from_the_kafka_store(broker, tmp_path):
    n, batch = 6000, 200
    create_topics(broker.bootstrap, {TOPICS["input"]: 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    produce(broker.bootstrap, TOPICS["input"], events(n))
    env = {**KAFKA_STORE, "STREAMADAPT_PIPELINE__BATCH_SIZE": str(batch),
           "STREAMADAPT_KAFKA__REPLICA_ID": "r1"}
    first = ServiceProcess(broker.bootstrap, tmp_path, "first", env=env)
    wait_for(lambda: len(read_topic(broker.bootstrap, TOPICS["output"], expect=1000,
                                    timeout_s=5)) >= 1000, 60, "the first predictions")
    first.kill9()
    before = len(read_topic(broker.bootstrap, TOPICS["output"], idle_s=1.0))
    assert before < n, "the stream ended before the kill: not a mid-stream crash"

    second = ServiceProcess(broker.bootstrap, tmp_path, "second", env=env)
    second.wait_ready()
    # Each partition the first process had begun reading (kafka-python may have read only
    # one of them by then) is restored from the topic.
    reason = second.readyz()["reason"]
    assert re.fullmatch(r"2 partitions assigned, [12] restored from checkpoints", reason), reason
    want = {f"e{i}" for i in range(n)}
    wait_for(lambda: want <= set(prediction_ids(read_topic(
        broker.bootstrap, TOPICS["output"], idle_s=0.5, timeout_s=20))), 120,
        "predictions for every input", every_s=1.0)
    assert second.stop() == 0, second.output()[-3000:]
    assert f"restored state from topic {STATE_TOPIC}" in second.output()  # the weights
    counts = collections.Counter(prediction_ids(read_topic(broker.bootstrap, TOPICS["output"],
                                                           idle_s=1.0)))
    assert set(counts) == want
    assert sum(c - 1 for c in counts.values()) <= batch  # at most one batch repeated
    # The weights the second process checkpointed last learned from the first one's labels
    # too: more labels than the second process scored itself.
    weights = KafkaStateStore(STATE_TOPIC, {"bootstrap_servers": [broker.bootstrap]})
    learned = _find(weights.restore_slot_full("weights.r1").state, "labels_learned")
    assert learned is not None and learned >= scored(second) + before // 2, (
        learned, scored(second), before)


def _find(state: Any, name: str) -> Any:
    """The first value named ``name`` anywhere in a nested state dict."""
    if isinstance(state, dict):
        if name in state:
            return state[name]
        for v in state.values():
            found = _find(v, name)
            if found is not None:
                return found
    return None
