"""The service loop over in-memory sources: every input accounted for, offsets committed
after outputs, health endpoints, clean stop."""

import json
import threading
import urllib.error
import urllib.request

import orjson

from streamadapt.adapters.river_models import RiverLinearForecaster
from streamadapt.events import DeadLetter, Prediction
from streamadapt.http import Health, HealthServer
from streamadapt.io import IterableSource, ListSink
from streamadapt.pipeline import Pipeline
from streamadapt.service import Service


def records(n_good: int, bad_every: int = 0) -> list[bytes]:
    out = []
    for i in range(n_good):
        out.append(orjson.dumps({"event_id": f"e{i}", "link_id": f"l{i % 3}",
                                 "timestamp": 60.0 * i, "load": 10.0 + i % 5}))
        if bad_every and i % bad_every == 0:
            out.append(b'{"event_id": "bad", "link_id": "x", "timestamp": 0, "load": -3}')
    return out


def make_service(recs, batch_size=32, **kw):
    source = IterableSource(recs, name="mem")
    sink, dlq = ListSink(), ListSink()
    pipe = Pipeline("forecast", {"m": RiverLinearForecaster()})
    return Service(pipe, source, sink, dlq, batch_size=batch_size, **kw), source, sink, dlq


def test_every_input_gets_a_prediction_or_a_dead_letter():
    recs = records(500, bad_every=50)
    svc, source, sink, dlq = make_service(recs)
    summary = svc.run()
    assert summary.records == len(recs) == 510
    assert len(sink.records) == 500 and all(isinstance(r, Prediction) for r in sink.records)
    assert len(dlq.records) == 10 and all(isinstance(r, DeadLetter) for r in dlq.records)
    assert {r.event_id for r in sink.records} == {f"e{i}" for i in range(500)}
    assert all(d.reason.startswith("validation error: load") for d in dlq.records)
    assert source.committed == {("mem", 0): len(recs)}  # next offset to read
    assert summary.labelled == 497  # every prediction but the last of each link


def test_commit_happens_after_outputs_are_flushed():
    order = []

    class Recording(ListSink):
        def flush(self):
            order.append("flush")

    class Src(IterableSource):
        def commit(self, offsets):
            order.append("commit")
            super().commit(offsets)

    pipe = Pipeline("forecast", {"m": RiverLinearForecaster()})
    svc = Service(pipe, Src(records(10)), Recording(), Recording(), batch_size=5)
    svc.run()
    assert order[:3] == ["flush", "flush", "commit"]


def test_stop_event_finishes_the_batch_in_flight():
    stop = threading.Event()
    svc, source, sink, _ = make_service(records(1000), batch_size=100)

    def on_batch(result, summary):
        if summary.batches == 2:
            stop.set()

    svc.on_batch = on_batch
    summary = svc.run(stop)
    assert summary.records == 200 and len(sink.records) == 200
    assert source.committed == {("mem", 0): 200}


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_endpoints_report_liveness_readiness_and_metrics():
    health = Health(max_heartbeat_age_s=30)
    with HealthServer(health, port=0) as server:
        code, body = _get(server.url + "/readyz")
        assert code == 503 and json.loads(body)["status"] == "not ready"
        svc, *_ = make_service(records(100, bad_every=10), health=health)
        svc.run()
        assert _get(server.url + "/healthz")[0] == 200
        health.heartbeat -= 60  # a stalled loop
        code, body = _get(server.url + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "stalled"
        code, body = _get(server.url + "/metrics")
        text = body.decode()
        assert code == 200
        assert 'streamadapt_events_total{outcome="predicted"}' in text
        assert 'streamadapt_dead_letters_total{reason="validation_error"}' in text
        assert _get(server.url + "/nope")[0] == 404


def test_consumer_lag_reported_by_the_source_reaches_the_metric():
    from streamadapt import metrics

    class Lagging(IterableSource):
        def lag(self):
            return 1234

    pipe = Pipeline("forecast", {"m": RiverLinearForecaster()})
    svc = Service(pipe, Lagging(records(10)), ListSink(), ListSink(), batch_size=5)
    svc.run_once()
    assert metrics.CONSUMER_LAG._value.get() == 1234
