"""Baselines of ``benchmarks/kafka_e2e.py``: (a) each client's raw consume+produce rate and
(b) the per-event River loop users write with kafka-python."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from streamadapt.features import ForecastInput, lag_features

#: No stage runs longer than this.
STAGE_TIMEOUT_S = 600.0


# -- stage (a): the client's ceiling ------------------------------------------------------------
def raw_kafka_python(bootstrap: str, src: str, dst: str, n: int, batch: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer

    c = KafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"raw-{dst}",
                      enable_auto_commit=False, auto_offset_reset="earliest",
                      session_timeout_ms=6000, heartbeat_interval_ms=1000,
                      max_poll_records=batch)
    p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=1,
                      linger_ms=5, batch_size=1 << 16)
    done, t0 = 0, None
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while done < n and time.monotonic() < deadline:
        got = c.poll(timeout_ms=500, max_records=batch)
        if not got:
            continue
        t0 = t0 or time.perf_counter()
        for msgs in got.values():
            for m in msgs:
                p.send(dst, value=m.value, key=m.key)
            done += len(msgs)
        p.flush()
        c.commit()
    dt = time.perf_counter() - t0
    c.close()
    p.close()
    return {"events": done, "seconds": dt, "events_per_s": done / dt}


def raw_confluent(bootstrap: str, src: str, dst: str, n: int, batch: int) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{dst}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    c.subscribe([src])
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False,
                  "partitioner": "murmur2_random", "acks": 1})
    done, t0 = 0, None
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while done < n and time.monotonic() < deadline:
        msgs = c.consume(batch, 0.5)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        t0 = t0 or time.perf_counter()
        for m in msgs:
            p.produce(dst, value=m.value(), key=m.key())
        done += len(msgs)
        p.flush()
        c.commit(asynchronous=False)
    dt = time.perf_counter() - t0
    c.close()
    return {"events": done, "seconds": dt, "events_per_s": done / dt}


# -- stage (b): the per-event loop users write today ----------------------------------------------
def river_loop(bootstrap: str, src: str, dst: str, n: int,
               errors: dict[str, float] | None = None) -> dict[str, Any]:
    """Predict each record, then learn it once the link's next sample brings its label
    (predict before learn). The prequential absolute error of each prediction goes into
    ``errors`` (event id -> error) when given; ``mae`` and ``scored`` are returned."""
    import json as stdjson

    from kafka import KafkaConsumer, KafkaProducer

    from streamadapt.adapters.river_models import RiverLinearForecaster

    model = RiverLinearForecaster()._model  # the same river pipeline as river-linear
    c = KafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"loop-{dst}",
                      enable_auto_commit=True, auto_offset_reset="earliest",
                      session_timeout_ms=6000, heartbeat_interval_ms=1000)
    p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=1,
                      linger_ms=5)
    windows: dict[str, deque[tuple[float, float]]] = {}
    last_x: dict[str, dict[str, float]] = {}
    last_pred: dict[str, tuple[str, float]] = {}  # link -> (event id, prediction)
    errors = {} if errors is None else errors
    done, t0 = 0, None
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while done < n and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=500).values():
            t0 = t0 or time.perf_counter()
            for m in msgs:
                ev = stdjson.loads(m.value)
                link, load, ts = ev["link_id"], ev["load"], ev["timestamp"]
                if link in last_x:
                    eid, y_prev = last_pred[link]
                    errors[eid] = abs(load - y_prev)
                    model.learn_one(last_x[link], load)
                w = windows.setdefault(link, deque(maxlen=12))
                dt = ts - w[-1][0] if w else 0.0
                w.append((ts, load))
                x = lag_features(ForecastInput(link, ts, tuple(v for _, v in w),
                                               (dt,), {}, ev["event_id"]), 12)
                y = model.predict_one(x)
                last_x[link] = x
                last_pred[link] = (ev["event_id"], y)
                p.send(dst, key=m.key, value=stdjson.dumps(
                    {"event_id": ev["event_id"], "key": link, "prediction": y}).encode())
                done += 1
    p.flush()
    dt = time.perf_counter() - t0
    c.close()
    p.close()
    mae = sum(errors.values()) / len(errors) if errors else None
    return {"events": done, "seconds": dt, "events_per_s": done / dt, "mae": mae,
            "scored": len(errors)}
