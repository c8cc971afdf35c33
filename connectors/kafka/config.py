"""Client configuration from :class:`~streamadapt.settings.KafkaSettings`, for both clients.

TLS and SASL options map onto each client's own names; secrets are read from their
:class:`~pydantic.SecretStr` only here, at the moment a client is built.

Delivery: both producers wait for ``acks`` (default ``all``: every in-sync replica) and are
idempotent by default (``enable_idempotence``; only with acks=all), so a retried produce
never writes a record twice. Measured with kafka-python 3.0.12 and confluent-kafka 2.16.1
against tansu 0.6: idempotent producers work (InitProducerId succeeds), but when the broker
restarts with empty storage (tansu's memory storage forgets producer ids) both break for
good: kafka-python fails its producer-epoch bump with a fatal error, librdkafka times every
message out. A real cluster keeps producer state across restarts, so idempotence stays the
default; against a broker that forgets it, set ``enable_idempotence=false``
(``docs/kafka.md``, Delivery settings).

>>> from streamadapt.settings import load_settings
>>> k = load_settings(kafka={"bootstrap_servers": "b:9093", "security_protocol": "SSL",
...                          "ssl_cafile": "/ca.pem"}).kafka
>>> kafka_python_common(k)["ssl_cafile"], confluent_common(k)["ssl.ca.location"]
('/ca.pem', '/ca.pem')
"""

from __future__ import annotations

from typing import Any

from streamadapt.settings import KafkaSettings

__all__ = [
    "kafka_python_common", "kafka_python_consumer", "kafka_python_producer",
    "confluent_common", "confluent_consumer", "confluent_producer", "idempotent",
]


def _secret(v: Any) -> str | None:
    return None if v is None else v.get_secret_value()


def kafka_python_common(k: KafkaSettings) -> dict[str, Any]:
    """Connection, TLS and SASL keyword arguments of kafka-python clients."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers.split(","),
        "security_protocol": k.security_protocol,
        "retry_backoff_ms": int(k.retry_backoff_s * 1000),
        "reconnect_backoff_ms": int(k.retry_backoff_s * 1000),
        "reconnect_backoff_max_ms": int(k.retry_backoff_max_s * 1000),
    }
    if "SSL" in k.security_protocol:
        cfg.update(ssl_cafile=k.ssl_cafile, ssl_certfile=k.ssl_certfile,
                   ssl_keyfile=k.ssl_keyfile, ssl_password=_secret(k.ssl_password),
                   ssl_check_hostname=k.ssl_check_hostname)
    if k.security_protocol.startswith("SASL"):
        cfg.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=_secret(k.sasl_password))
    return cfg


def kafka_python_consumer(k: KafkaSettings, max_poll_records: int) -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` arguments: a group member with manual commits."""
    return {
        **kafka_python_common(k),
        "group_id": k.group_id,
        "client_id": f"streamadapt-{k.group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        "max_poll_interval_ms": k.max_poll_interval_ms,
        "max_poll_records": max_poll_records,
        "fetch_max_wait_ms": k.fetch_max_wait_ms,
        "max_partition_fetch_bytes": max(1 << 20, k.max_record_bytes + 1024),
    }


def idempotent(k: KafkaSettings) -> bool:
    """Whether the producers are idempotent: ``enable_idempotence`` and acks=all (with acks
    1 or 0 it is off, unless set explicitly, which settings validation refuses)."""
    return k.enable_idempotence and k.acks == "all"


def kafka_python_producer(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` arguments: ``acks`` (``all`` by default), retries,
    and idempotence (:func:`idempotent`)."""
    return {
        **kafka_python_common(k),
        "client_id": f"streamadapt-{k.group_id}-producer",
        "acks": k.acks if k.acks == "all" else int(k.acks),
        "retries": 2**31 - 1,
        "enable_idempotence": idempotent(k),
        "linger_ms": k.linger_ms,
        "batch_size": 1 << 16,
        "max_block_ms": int(k.flush_timeout_s * 1000),
        "request_timeout_ms": 30_000,
        "delivery_timeout_ms": max(int(k.flush_timeout_s * 3000), 31_000 + k.linger_ms),
        "max_request_size": max(1 << 20, k.max_record_bytes + 4096),
    }


def confluent_common(k: KafkaSettings) -> dict[str, Any]:
    """Connection, TLS and SASL properties of confluent-kafka (librdkafka) clients."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "security.protocol": k.security_protocol.lower(),
        "retry.backoff.ms": int(k.retry_backoff_s * 1000),
        "reconnect.backoff.ms": int(k.retry_backoff_s * 1000),
        "reconnect.backoff.max.ms": int(k.retry_backoff_max_s * 1000),
    }
    if "SSL" in k.security_protocol:
        opt = {"ssl.ca.location": k.ssl_cafile, "ssl.certificate.location": k.ssl_certfile,
               "ssl.key.location": k.ssl_keyfile, "ssl.key.password": _secret(k.ssl_password)}
        cfg.update({key: v for key, v in opt.items() if v is not None})
        cfg["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_check_hostname else "none"
    if k.security_protocol.startswith("SASL"):
        cfg.update({"sasl.mechanisms": k.sasl_mechanism, "sasl.username": k.sasl_username,
                    "sasl.password": _secret(k.sasl_password)})
    return cfg


def confluent_consumer(k: KafkaSettings) -> dict[str, Any]:
    """confluent-kafka ``Consumer`` properties: a group member with manual commits."""
    return {
        **confluent_common(k),
        "group.id": k.group_id,
        "client.id": f"streamadapt-{k.group_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": k.auto_offset_reset,
        "session.timeout.ms": k.session_timeout_ms,
        "heartbeat.interval.ms": k.heartbeat_interval_ms,
        "max.poll.interval.ms": k.max_poll_interval_ms,
        "partition.assignment.strategy": "range",
        "fetch.wait.max.ms": k.fetch_max_wait_ms,
        "message.max.bytes": max(1 << 20, k.max_record_bytes + 4096),
        "fetch.max.bytes": max(52_428_800, k.max_record_bytes + 4096),
    }


def confluent_producer(k: KafkaSettings) -> dict[str, Any]:
    """confluent-kafka ``Producer`` properties: ``acks`` and idempotence as for
    kafka-python; ``murmur2_random`` lands keys on the same partitions as kafka-python and
    the Java client."""
    return {
        **confluent_common(k),
        "client.id": f"streamadapt-{k.group_id}-producer",
        "acks": k.acks,
        "enable.idempotence": idempotent(k),
        "partitioner": "murmur2_random",
        "linger.ms": k.linger_ms,
        "message.timeout.ms": max(int(k.flush_timeout_s * 3000), 30_000),
        "message.max.bytes": max(1 << 20, k.max_record_bytes + 4096),
    }
