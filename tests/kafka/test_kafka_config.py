"""Client configuration from settings (TLS, SASL, secrets) and the output record layout,
for both clients; no broker needed."""

from __future__ import annotations

from connectors.kafka import config
from connectors.kafka.records import dead_letter_record, prediction_record
from streamadapt.events import DeadLetter, Position, Prediction
from streamadapt.settings import load_settings


def sasl_settings():
    return load_settings(kafka={
        "bootstrap_servers": "b1:9093,b2:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc",
        "sasl_password": "s3cret", "ssl_cafile": "/etc/ca.pem",
        "max_poll_interval_ms": 120_000,
    }).kafka


def test_sasl_ssl_maps_onto_both_clients():
    k = sasl_settings()
    kp = config.kafka_python_consumer(k, max_poll_records=128)
    assert kp["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert (kp["security_protocol"], kp["sasl_mechanism"], kp["sasl_plain_username"],
            kp["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "svc", "s3cret")
    assert kp["ssl_cafile"] == "/etc/ca.pem" and kp["enable_auto_commit"] is False
    assert kp["max_poll_records"] == 128 and kp["max_poll_interval_ms"] == 120_000
    ck = config.confluent_consumer(k)
    assert (ck["security.protocol"], ck["sasl.mechanisms"], ck["sasl.username"],
            ck["sasl.password"]) == ("sasl_ssl", "SCRAM-SHA-512", "svc", "s3cret")
    assert ck["ssl.ca.location"] == "/etc/ca.pem" and ck["enable.auto.commit"] is False
    assert config.kafka_python_producer(k)["enable_idempotence"] is False
    cp = config.confluent_producer(k)
    assert cp["enable.idempotence"] is False and cp["partitioner"] == "murmur2_random"


def test_the_password_never_shows_in_settings():
    k = sasl_settings()
    assert "s3cret" not in repr(k) and "s3cret" not in str(k.model_dump())


def test_plaintext_sends_no_tls_or_sasl_options():
    k = load_settings().kafka
    assert not any(key.startswith(("ssl", "sasl")) for key in config.kafka_python_common(k))
    assert not any(key.startswith(("ssl", "sasl")) for key in config.confluent_common(k))


def test_record_layout():
    p = Prediction(event_id="e1", key="A-B", timestamp=3.0, base_prediction=1.0,
                   prediction=1.5, model_version="1")
    value, key, headers = prediction_record(p)
    assert key == b"A-B" and headers == []
    assert Prediction.from_json(value) == p
    value, key, headers = dead_letter_record(
        DeadLetter(b"\xff{", "malformed json: x", Position("events", 3, 41)))
    assert value == b"\xff{" and key is None
    assert dict(headers) == {"reason": b"malformed json: x", "source_topic": b"events",
                             "source_partition": b"3", "source_offset": b"41"}
