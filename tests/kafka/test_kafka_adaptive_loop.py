"""The adaptive loop through the real broker with the registered default model and default
settings: the link-failure scenario goes in, the drift monitor (on by default) detects the
failure, Hebbian test-time adaptation is applied to ``liquid``, judged against the shadow,
and the prediction records say which adaptation was in force."""

from __future__ import annotations

import orjson
import pytest
from kafkahelp import TOPICS, ServiceProcess, produce, read_topic

from connectors.broker import create_topics
from streamadapt.datasets import load_dataset
from streamadapt.events import encode

pytestmark = pytest.mark.kafka


def test_default_service_detects_the_failure_and_adapts_liquid(broker, tmp_path):
    stream = load_dataset("linkload", seed=0, n_steps=1200)
    events = list(stream.events)
    create_topics(broker.bootstrap, {TOPICS["input"]: 1, TOPICS["output"]: 1,
                                     TOPICS["dead"]: 1})
    produce(broker.bootstrap, TOPICS["input"], [(e.link_id.encode(), encode(e))
                                                for e in events])
    svc = ServiceProcess(broker.bootstrap, tmp_path, args=["--limit", str(len(events))])
    assert svc.wait(240) == 0, svc.output()[-3000:]
    table = svc.summary()
    assert table.get("events") == f"{len(events):,}", table
    detections = int(table["drift detections"].split()[0].replace(",", ""))
    applied = table["adaptations applied"]
    assert detections >= 1 and "tta" in applied, table
    kept, rolled, reset = (int(v) for v in
                           table["adaptations kept / rolled back / reset"].split(" / "))
    assert kept + rolled + reset >= 1, table  # at least one adaptation was judged
    assert "judged mae: adapted vs shadow" in table
    assert table["actions skipped (no hook)"] == "0"  # liquid has every default hook

    preds = read_topic(broker.bootstrap, TOPICS["output"], expect=len(events), timeout_s=60)
    tagged = [p for p in preds if "tta" in orjson.loads(p.value)["adaptations"]]
    assert tagged, "no prediction record was made under test-time adaptation"
    assert len(tagged) < len(events)  # in force only while an adaptation is judged
