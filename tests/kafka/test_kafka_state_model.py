"""The state model through the real broker: after ``kill -9`` the restored replica replays
from its checkpoint's offsets to the committed ones and ends in the state of a run without
the crash (every label learned once); clicks with labels on their own topic join their
impressions across a restart and a rebalance (zero orphans); a wrongly keyed label is a
dead letter that says why."""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.request

import numpy as np
import orjson
import pytest
from kafka.partitioner.default import murmur2
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
from streamadapt.adapters.registry import make_model
from streamadapt.checkpoint import CheckpointStore
from streamadapt.features import WindowStore

pytestmark = pytest.mark.kafka

BATCH = 50


def outputs(bootstrap: str, topic: str, want: set[str]) -> bool:
    ids = prediction_ids(read_topic(bootstrap, topic, idle_s=0.5, timeout_s=20))
    return want <= set(ids)


def weights(ckpt: str, replica: str) -> dict:
    found = CheckpointStore(ckpt).restore_slot(f"weights.{replica}")
    assert found is not None, f"no weights of {replica} in {ckpt}"
    return found[0]["pipeline"]


def probe(state: dict) -> np.ndarray:
    """Predictions of the checkpointed river-linear model on fixed windows."""
    model = make_model("river-linear", task="forecast")
    model.load_state_dict(state["models"]["river-linear"])
    store = WindowStore(window=12)
    xs = [store.push("p", 60.0 * i, 40.0 + 7.0 * (i % 5)) for i in range(30)]
    return model.predict_many(xs)


def serve(broker, tmp_path, name: str, env: dict, want: set[str], topic: str) -> None:
    svc = ServiceProcess(broker.bootstrap, tmp_path, name, env=env)
    wait_for(lambda: outputs(broker.bootstrap, topic, want), 90, f"{name} to serve",
             every_s=0.5)
    assert svc.stop() == 0, svc.output()[-3000:]


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_kill_9_then_restore_replays_into_the_state_of_an_uninterrupted_run(
    broker, tmp_path, client
):
    create_topics(broker.bootstrap, {TOPICS["input"]: 1, TOPICS["output"]: 1,
                                     "clean-out": 1, TOPICS["dead"]: 1})
    phases = [events(1500), events(600, start=1500), events(400, start=2100)]
    produce(broker.bootstrap, TOPICS["input"], phases[0])
    base = {"STREAMADAPT_MODEL": "river-linear", "STREAMADAPT_KAFKA__CLIENT": client,
            "STREAMADAPT_PIPELINE__BATCH_SIZE": str(BATCH),
            "STREAMADAPT_DRIFT__ENABLED": "false"}
    crash = {**base, "STREAMADAPT_CHECKPOINT__DIR": str(tmp_path / "crash"),
             "STREAMADAPT_CHECKPOINT__INTERVAL_S": "2",
             "STREAMADAPT_KAFKA__GROUP_ID": "crash", "STREAMADAPT_KAFKA__REPLICA_ID": "r"}
    first = ServiceProcess(broker.bootstrap, tmp_path, "first", env=crash)
    ids = [f"e{i}" for i in range(2500)]
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], set(ids[:1500])), 60,
             "the first phase")
    time.sleep(2.5)  # the next batch writes a checkpoint, the ones after it do not
    produce(broker.bootstrap, TOPICS["input"], phases[1])
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], set(ids[:2100])), 60,
             "the second phase", every_s=0.1)
    first.kill9()  # committed beyond the checkpoint: those labels are in no state yet
    produce(broker.bootstrap, TOPICS["input"], phases[2])
    serve(broker, tmp_path, "second", crash, set(ids), TOPICS["output"])
    log = (tmp_path / "second.log").read_text()
    assert "replaying" in log, log[-3000:]

    clean = {**base, "STREAMADAPT_CHECKPOINT__DIR": str(tmp_path / "clean"),
             "STREAMADAPT_KAFKA__GROUP_ID": "clean", "STREAMADAPT_KAFKA__REPLICA_ID": "r",
             "STREAMADAPT_KAFKA__OUTPUT_TOPIC": "clean-out"}
    serve(broker, tmp_path, "clean", clean, set(ids), "clean-out")

    restored, uninterrupted = weights(str(tmp_path / "crash"), "r"), weights(
        str(tmp_path / "clean"), "r")
    # every label learned exactly once: each link's samples but its first
    assert restored["labels_learned"] == uninterrupted["labels_learned"] == 2500 - 6
    np.testing.assert_allclose(probe(restored), probe(uninterrupted), rtol=1e-9)
    counts = collections.Counter(prediction_ids(
        read_topic(broker.bootstrap, TOPICS["output"], idle_s=1.0)))
    assert set(counts) == set(ids)
    assert sum(c - 1 for c in counts.values()) <= BATCH  # at most the batch in flight


# -- clicks with delayed labels ------------------------------------------------------------
USERS = [f"u{i}" for i in range(12)]


def clicks(start: int, n: int, delay_s: float, wrong_key: set[int] = frozenset()):
    """Impressions keyed by user, and each one's label (keyed by the same user, or by
    another user for ``wrong_key``) ``delay_s`` later, both in time order."""
    rng = np.random.default_rng(start)
    imps, labs = [], []
    for i in range(start, start + n):
        user = USERS[i % len(USERS)]
        t = 10.0 * i
        imps.append((t, user.encode(), orjson.dumps({
            "kind": "impression", "event_id": f"i{i}", "user_id": user,
            "item_id": f"m{rng.integers(20)}", "timestamp": t,
            "categorical": {"genre": f"g{i % 4}"}})))
        key = USERS[(i + 1) % len(USERS)] if i in wrong_key else user
        labs.append((t + delay_s, key.encode(), orjson.dumps({
            "kind": "label", "event_id": f"i{i}", "label": int(rng.random() < 0.3),
            "timestamp": t + delay_s, "key": key})))
    return imps, labs


def send(bootstrap: str, imps, labs) -> None:
    produce(bootstrap, "impressions", [(k, v) for _, k, v in imps])
    produce(bootstrap, "labels", [(k, v) for _, k, v in labs])


def dead_reasons(bootstrap: str) -> collections.Counter:
    recs = read_topic(bootstrap, TOPICS["dead"], idle_s=1.0, timeout_s=10)
    return collections.Counter(dict(r.headers)["reason"].decode().split(":")[0] for r in recs)


def learned(ckpt: str, replicas: list[str]) -> int:
    store = CheckpointStore(ckpt)
    return sum(store.restore_slot(f"weights.{r}")[0]["pipeline"]["labels_learned"]
               for r in replicas if store.restore_slot(f"weights.{r}") is not None)


def caught_up(svc: ServiceProcess) -> bool:
    """No record left to read on the partitions the service owns."""
    with urllib.request.urlopen(svc.url + "/metrics", timeout=2) as r:
        text = r.read().decode()
    lag = re.search(r"^streamadapt_consumer_lag_records (\S+)$", text, re.M)
    return lag is not None and float(lag.group(1)) == 0


def test_clicks_with_delayed_labels_join_across_a_rebalance_and_a_kill(broker, tmp_path):
    create_topics(broker.bootstrap, {"impressions": 2, "labels": 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    env = {"STREAMADAPT_TASK": "ctr", "STREAMADAPT_PIPELINE__BATCH_SIZE": "40",
           "STREAMADAPT_KAFKA__INPUT_TOPICS": json.dumps(["impressions", "labels"]),
           "STREAMADAPT_CHECKPOINT__DIR": str(tmp_path / "ckpt"),
           "STREAMADAPT_CHECKPOINT__INTERVAL_S": "1",
           "STREAMADAPT_DRIFT__ENABLED": "false"}
    total = 0

    def batch(n: int, delay_s: float) -> set[str]:
        nonlocal total
        imps, labs = clicks(total, n, delay_s)
        send(broker.bootstrap, imps, labs)
        total += n
        return {f"i{i}" for i in range(total)}

    a = ServiceProcess(broker.bootstrap, tmp_path, "a",
                       env={**env, "STREAMADAPT_KAFKA__REPLICA_ID": "a"})
    a.wait_ready()
    want = batch(300, delay_s=600.0)
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], want), 90, "a to serve")
    b = ServiceProcess(broker.bootstrap, tmp_path, "b",
                       env={**env, "STREAMADAPT_KAFKA__REPLICA_ID": "b"})
    b.wait_ready()
    wait_for(lambda: a.readyz().get("reason", "").startswith("2 partitions"), 30,
             "a to give up one partition number (impressions and labels)")
    want = batch(300, delay_s=1800.0)
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], want), 90, "both to serve")
    a.kill9()  # b takes everything, replaying what a learned after its checkpoint
    want = batch(300, delay_s=3000.0)
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], want), 120,
             "b to serve alone", every_s=0.5)
    a = ServiceProcess(broker.bootstrap, tmp_path, "a2",
                       env={**env, "STREAMADAPT_KAFKA__REPLICA_ID": "a"})
    a.wait_ready()
    want = batch(200, delay_s=60.0)
    wait_for(lambda: outputs(broker.bootstrap, TOPICS["output"], want), 90, "a back")
    wait_for(lambda: caught_up(a) and caught_up(b), 60, "both to read every label")
    assert b.stop() == 0, b.output()[-3000:]
    assert a.stop() == 0, a.output()[-3000:]
    assert dead_reasons(broker.bootstrap) == collections.Counter()  # zero orphans
    # every label learned once, over the replicas' final states
    assert learned(str(tmp_path / "ckpt"), ["a", "b"]) == total


def test_a_wrongly_keyed_label_is_a_dead_letter_that_says_why(broker, tmp_path):
    create_topics(broker.bootstrap, {"impressions": 2, "labels": 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    imps, labs = clicks(0, 60, 30.0, wrong_key={7, 8, 9, 10})
    send(broker.bootstrap, imps, labs)
    env = {"STREAMADAPT_TASK": "ctr", "STREAMADAPT_MODEL": "river-logreg",
           "STREAMADAPT_KAFKA__INPUT_TOPICS": json.dumps(["impressions", "labels"]),
           "STREAMADAPT_DRIFT__ENABLED": "false"}
    serve(broker, tmp_path, "svc", env, {f"i{i}" for i in range(60)}, TOPICS["output"])
    recs = read_topic(broker.bootstrap, TOPICS["dead"], idle_s=1.0)
    # a label keyed by another user lands on that user's partition: where the two users
    # share a partition it still joins; elsewhere it is refused, saying where it belongs
    part = {u: (murmur2(u.encode()) & 0x7FFFFFFF) % 2 for u in USERS}
    expected = {f"i{i}" for i in (7, 8, 9, 10)
                if part[USERS[i % 12]] != part[USERS[(i + 1) % 12]]}
    assert expected, "the test's wrong keys all share their user's partition"
    got = {}
    for r in recs:
        reason = dict(r.headers)["reason"].decode()
        got[json.loads(r.value)["event_id"]] = reason
    assert set(got) == expected
    for event_id, reason in got.items():
        i = int(event_id[1:])
        user = USERS[i % 12]
        assert reason.startswith(f"label keyed wrongly: key '{user}' has its impressions on "
                                 f"partition {part[user]}, the label came on partition "
                                 f"{1 - part[user]}"), reason

