"""Client configuration from settings (TLS, SASL, secrets, delivery), the output record
layout and the choice of checkpoint store, for both clients; no broker needed, except to
check that idempotent producers work against the real one."""

from __future__ import annotations

import pytest

from connectors.kafka import config
from connectors.kafka.records import dead_letter_record, prediction_record
from streamadapt.events import DeadLetter, Position, Prediction
from streamadapt.settings import SettingsError, load_settings


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
    assert config.kafka_python_producer(k)["enable_idempotence"] is True
    cp = config.confluent_producer(k)
    assert cp["enable.idempotence"] is True and cp["partitioner"] == "murmur2_random"


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


def test_delivery_defaults_to_acks_all_and_idempotence_on_both_clients():
    k = load_settings().kafka
    kp, cp = config.kafka_python_producer(k), config.confluent_producer(k)
    assert (kp["acks"], kp["enable_idempotence"]) == ("all", True)
    assert (cp["acks"], cp["enable.idempotence"]) == ("all", True)


@pytest.mark.parametrize(("acks", "kafka_python", "confluent"),
                         [("all", "all", "all"), ("1", 1, "1"), ("0", 0, "0"), (1, 1, "1"),
                          (-1, "all", "all")])
def test_acks_reach_both_producers(acks, kafka_python, confluent):
    k = load_settings(kafka={"acks": acks}).kafka
    assert config.kafka_python_producer(k)["acks"] == kafka_python
    assert config.confluent_producer(k)["acks"] == confluent
    # Idempotence needs acks=all: with 1 or 0 it is off unless asked for explicitly.
    on = confluent == "all"
    assert config.kafka_python_producer(k)["enable_idempotence"] is on
    assert config.confluent_producer(k)["enable.idempotence"] is on
    k = load_settings(kafka={"acks": acks, "enable_idempotence": False}).kafka
    assert config.kafka_python_producer(k)["enable_idempotence"] is False
    assert config.confluent_producer(k)["enable.idempotence"] is False


@pytest.mark.parametrize(("kafka", "names"), [
    ({"acks": "2"}, ["kafka.acks = '2'", "'all', '1' or '0'"]),
    ({"acks": "leader"}, ["kafka.acks = 'leader'"]),
    ({"enable_idempotence": "sometimes"}, ["kafka.enable_idempotence = 'sometimes'"]),
    ({"acks": "1", "enable_idempotence": True}, ["enable_idempotence=true needs acks='all'",
                                                "acks='1'", "enable_idempotence=false"]),
])
def test_bad_delivery_settings_fail_naming_the_field(kafka, names):
    with pytest.raises(SettingsError) as err:
        load_settings(kafka=kafka)
    for name in names:
        assert name in str(err.value)


def test_the_kafka_state_store_needs_kafka_and_names_the_field(monkeypatch):
    from connectors.commands.run import build_store
    from connectors.kafka.statestore import KafkaStateStore
    from streamadapt.checkpoint import CheckpointStore

    s = load_settings(checkpoint={"store": "kafka"}, kafka={"group_id": "g"})
    with pytest.raises(SettingsError, match=r"checkpoint.store = 'kafka'.*--kafka.*'dir'"):
        build_store(s, kafka=False)
    store = build_store(s, kafka=True)  # connects on first use only: no broker needed here
    assert isinstance(store, KafkaStateStore) and store.topic == "g.state"
    assert store.keep == s.checkpoint.keep
    s = load_settings(checkpoint={"store": "kafka", "topic": "ckpt",
                                  "hmac_key": "0123456789abcdef"})
    assert build_store(s, kafka=True).topic == "ckpt"
    assert build_store(s, kafka=True).hmac_key == b"0123456789abcdef"  # signs and verifies
    assert build_store(load_settings(), kafka=True) is None  # dir store without a dir
    assert isinstance(build_store(load_settings(checkpoint={"dir": "/tmp/x"})), CheckpointStore)
    with pytest.raises(SettingsError, match="checkpoint.store = 's3'"):
        load_settings(checkpoint={"store": "s3"})


def test_run_refuses_the_kafka_store_without_kafka(monkeypatch, capsys):
    from connectors.cli import main

    monkeypatch.setenv("STREAMADAPT_CHECKPOINT__STORE", "kafka")
    assert main(["run", "--limit", "10", "--no-progress", "--model", "last-value"]) == 2
    assert "checkpoint.store = 'kafka'" in capsys.readouterr().err.replace("\n", "")


@pytest.mark.kafka
@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_idempotent_producers_work_against_the_broker(broker, client):
    """The producers built from the default settings (acks=all, idempotent) get a producer
    id from the broker (InitProducerId) and deliver, with both clients."""
    from connectors.broker import create_topics

    create_topics(broker.bootstrap, {"t": 1})
    k = load_settings(kafka={"bootstrap_servers": broker.bootstrap}).kafka
    if client == "kafka-python":
        from kafka import KafkaProducer

        p = KafkaProducer(**config.kafka_python_producer(k))
        futures = [p.send("t", value=b"%d" % i) for i in range(200)]
        p.flush(30)
        assert all(f.succeeded() for f in futures)
        assert p._transaction_manager.producer_id_and_epoch.producer_id >= 0
        p.close()
    else:
        from confluent_kafka import Producer

        errors: list = []
        p = Producer({**config.confluent_producer(k), "error_cb": errors.append})
        delivered: list = []
        for i in range(200):
            p.produce("t", value=b"%d" % i, on_delivery=lambda e, m: delivered.append(e))
        assert p.flush(30) == 0
        assert delivered == [None] * 200 and errors == []
