"""Through the real broker, with both clients: every input gets a prediction record or a
dead-letter record; malformed, oversized, NaN and wrong-typed messages are dead-lettered
with their reason and source position in headers, and the service keeps going."""

from __future__ import annotations

import pytest
from kafkahelp import TOPICS, ServiceProcess, events, prediction_ids, produce, read_topic

from connectors.broker import create_topics

pytestmark = pytest.mark.kafka

BAD = {
    "malformed": b'{"event_id": "m1", "link_id": ',
    "nan": b'{"event_id": "n1", "link_id": "link-0", "timestamp": 1, "load": NaN}',
    "wrong_type": b'{"event_id": "w1", "link_id": "link-0", "timestamp": 1, "load": "heavy"}',
    "negative": b'{"event_id": "g1", "link_id": "link-0", "timestamp": 1, "load": -4}',
    "not_object": b"[1, 2, 3]",
    "oversized": b'{"event_id": "o1", "link_id": "link-0", "timestamp": 1, "load": 1, '
                 b'"covariates": {"pad": 1}, "x": "' + b"y" * 4000 + b'"}',
}
REASON = {"malformed": "malformed json", "nan": "malformed json",
          "wrong_type": "validation error", "negative": "validation error",
          "not_object": "not an object", "oversized": "oversized"}


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_every_input_gets_a_prediction_or_a_dead_letter(broker, tmp_path, client):
    create_topics(broker.bootstrap, {TOPICS["input"]: 2, TOPICS["output"]: 2,
                                     TOPICS["dead"]: 1})
    good = events(400)
    records: list[tuple[bytes | None, bytes]] = []
    for i, rec in enumerate(good):
        records.append(rec)
        if i % 60 == 30:  # bad records between good ones
            name = list(BAD)[(i // 60) % len(BAD)]
            records.append((b"link-0", BAD[name]))
    records += [(b"link-1", v) for v in BAD.values()]
    produce(broker.bootstrap, TOPICS["input"], records)
    n_bad = len(records) - len(good)

    svc = ServiceProcess(broker.bootstrap, tmp_path, env={
        "STREAMADAPT_KAFKA__CLIENT": client,
        "STREAMADAPT_KAFKA__MAX_RECORD_BYTES": "2048",
        "STREAMADAPT_PIPELINE__BATCH_SIZE": "64",
    }, args=["--limit", str(len(records))])
    assert svc.wait(90) == 0, svc.output()[-3000:]

    preds = read_topic(broker.bootstrap, TOPICS["output"], expect=len(good))
    ids = prediction_ids(preds)
    assert sorted(ids) == sorted(f"e{i}" for i in range(len(good)))  # each exactly once
    assert {p.key for p in preds} == {f"link-{i}".encode() for i in range(6)}

    dead = read_topic(broker.bootstrap, TOPICS["dead"], expect=n_bad)
    assert len(dead) == n_bad
    inputs = {(r.partition, r.offset): r.value
              for r in read_topic(broker.bootstrap, TOPICS["input"], expect=len(records))}
    by_payload = {v: k for k, v in BAD.items()}
    for d in dead:
        h = {k: v.decode() for k, v in d.headers}
        assert h["source_topic"] == TOPICS["input"]
        original = inputs[(int(h["source_partition"]), int(h["source_offset"]))]
        name = by_payload[original]
        assert h["reason"].startswith(REASON[name]), (name, h["reason"])
        if name == "oversized":
            assert original.startswith(d.value) and len(d.value) < len(original)
        else:
            assert d.value == original
    summary = svc.summary()
    assert summary["predictions emitted"] == f"{len(good):,}"
    assert summary["dead letters"] == str(n_bad)
