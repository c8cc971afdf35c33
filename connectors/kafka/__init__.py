"""Kafka connectors: a consumer-group source with manual commits, a prediction sink and a
dead-letter sink, with two interchangeable clients.

``settings.kafka.client`` picks ``kafka-python`` (the default, pure Python) or
``confluent-kafka`` (librdkafka, the fast path); both implement the source and sink
protocols of :mod:`streamadapt.io` and the optional rebalance, pause and resume hooks the
service uses. The core package never imports this one.

:func:`open_state_store` builds the Kafka-native checkpoint store
(:class:`~connectors.kafka.statestore.KafkaStateStore`, ``checkpoint.store=kafka``): a
compacted topic of the same cluster, so replicas need no shared volume.
"""

from __future__ import annotations

import logging
from typing import Any

from streamadapt.settings import Settings

__all__ = ["open_kafka", "open_state_store", "state_topic", "CLIENTS"]

#: Supported values of ``settings.kafka.client``.
CLIENTS = ("kafka-python", "confluent-kafka")


def open_kafka(settings: Settings) -> tuple[Any, Any, Any]:
    """(source, prediction sink, dead-letter sink) for ``settings.kafka``."""
    from connectors.kafka import config

    for name in ("kafka", "confluent_kafka"):  # the clients are chatty at INFO
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    k = settings.kafka
    if k.client == "kafka-python":
        from kafka import KafkaProducer

        from connectors.kafka.kafka_python import KafkaPythonSink, KafkaPythonSource

        source: Any = KafkaPythonSource(
            k.input_topics, config.kafka_python_consumer(k, settings.pipeline.batch_size))
        producer = KafkaProducer(**config.kafka_python_producer(k))
        sink: Any = KafkaPythonSink(k.output_topic, producer=producer,
                                    flush_timeout_s=k.flush_timeout_s)
        dead: Any = KafkaPythonSink(k.dead_letter_topic, producer=producer,
                                    flush_timeout_s=k.flush_timeout_s)
    elif k.client == "confluent-kafka":
        from connectors.kafka.confluent import ConfluentSink, ConfluentSource, Producer

        source = ConfluentSource(k.input_topics, config.confluent_consumer(k))
        producer = Producer(config.confluent_producer(k))
        sink = ConfluentSink(k.output_topic, producer=producer, flush_timeout_s=k.flush_timeout_s)
        dead = ConfluentSink(k.dead_letter_topic, producer=producer,
                             flush_timeout_s=k.flush_timeout_s)
    else:  # settings validation makes this unreachable
        raise ValueError(f"unknown kafka client {k.client!r}; valid choices: {', '.join(CLIENTS)}")
    return source, sink, dead


def state_topic(settings: Settings) -> str:
    """The topic of the Kafka state store: ``checkpoint.topic``, else ``<group_id>.state``."""
    return settings.checkpoint.topic or f"{settings.kafka.group_id}.state"


def open_state_store(settings: Settings, hmac_key: bytes | None = None) -> Any:
    """The Kafka state store of ``settings``: its topic (:func:`state_topic`), the
    connection, TLS and SASL settings of ``settings.kafka`` (always through kafka-python,
    whichever client serves the stream), ``checkpoint.keep`` checkpoints per slot held for
    fallback, the producers' idempotence setting, and ``kafka.flush_timeout_s`` as the
    longest a write waits for its acknowledgement."""
    from connectors.kafka import config
    from connectors.kafka.statestore import KafkaStateStore

    k = settings.kafka
    return KafkaStateStore(
        state_topic(settings), config.kafka_python_common(k), keep=settings.checkpoint.keep,
        hmac_key=hmac_key, enable_idempotence=k.enable_idempotence,
        timeout_s=k.flush_timeout_s,
    )
