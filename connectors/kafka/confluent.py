"""The confluent-kafka (librdkafka) client behind the same source and sink protocols: the
fast path (several times kafka-python's rate on one core). Install it with
``pip install streamadapt[confluent]``.

Rebalance callbacks run inside ``consume`` on the service's thread, as with kafka-python;
the producer uses the ``murmur2_random`` partitioner so that keys land on the partitions
kafka-python and the Java client would choose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
    from confluent_kafka import TopicPartition as KafkaTP
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "kafka.client 'confluent-kafka' needs the confluent-kafka package: "
        "pip install 'streamadapt[confluent]' (or pip install confluent-kafka)"
    ) from exc

from connectors.kafka.records import Record, to_records
from streamadapt.events import DeadLetter, Position, Prediction
from streamadapt.flowcontrol import SinkUnavailable, SourceUnavailable
from streamadapt.io import RawRecord, TopicPartition

__all__ = ["ConfluentSource", "ConfluentSink"]

log = logging.getLogger("connectors.kafka")

Hook = Callable[[set[TopicPartition]], None]
_LOST_GROUP = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
               KafkaError.REBALANCE_IN_PROGRESS, KafkaError._NO_OFFSET,
               KafkaError._STATE, KafkaError._ASSIGNMENT_LOST}


class ConfluentSource:
    """Consumes ``topics`` as a member of a consumer group, committing only when told.

    Parameters
    ----------
    topics
        Input topics.
    config
        ``Consumer`` properties (see :func:`connectors.kafka.config.confluent_consumer`).
    """

    def __init__(self, topics: Sequence[str], config: Mapping[str, Any]) -> None:
        self.topics = list(topics)
        self.config = dict(config)
        self.on_assign: Hook | None = None
        self.on_revoke: Hook | None = None
        self.on_lost: Hook | None = None
        self._seek_on_assign: dict[TopicPartition, int] | None = None
        self._owned: set[TopicPartition] = set()
        self._next: dict[TopicPartition, int] = {}
        self._consumer = Consumer(self.config, logger=log)
        self._consumer.subscribe(self.topics, on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._lost)

    def _assigned(self, consumer: Any, tps: list[Any]) -> None:
        self._owned = {(tp.topic, tp.partition) for tp in tps}
        if self.on_assign is None:
            return
        self._seek_on_assign = {}
        try:
            self.on_assign(set(self._owned))
            seeks = self._seek_on_assign
        finally:
            self._seek_on_assign = None
        if seeks:  # start the restored partitions at their checkpoints' offsets
            for tp in tps:
                off = seeks.get((tp.topic, tp.partition))
                if off is not None:
                    tp.offset = off
            consumer.assign(tps)

    def _lost(self, consumer: Any, tps: list[Any]) -> None:
        gone = {(tp.topic, tp.partition) for tp in tps}
        if self.on_lost is not None:
            self.on_lost(gone)
        elif self.on_revoke is not None:
            self.on_revoke(gone)
        self._owned -= gone

    def _revoked(self, consumer: Any, tps: list[Any]) -> None:
        gone = {(tp.topic, tp.partition) for tp in tps}
        if self.on_revoke is not None:
            self.on_revoke(gone)
        self._owned -= gone

    def set_rebalance_listener(self, on_assign: Hook, on_revoke: Hook) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def set_lost_listener(self, on_lost: Hook) -> None:
        """Called instead of the revocation hook when the member was evicted (fenced)."""
        self.on_lost = on_lost

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on; inside the assignment callback the offset goes
        into the assignment itself."""
        self._next.pop(tp, None)
        if self._seek_on_assign is not None:
            self._seek_on_assign[tp] = offset
            return
        self._consumer.seek(KafkaTP(tp[0], tp[1], offset))

    def committed_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of ``tps`` (those with one)."""
        try:
            got = self._consumer.committed([KafkaTP(t, p) for t, p in tps], timeout=10)
        except KafkaException as exc:
            log.warning("committed offsets unknown (%s)", exc)
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        # What is already fetched, at once; else wait for the first record only, as
        # kafka-python does (consume(n, t) would wait for n records or the whole timeout).
        n = max(1, max_records)
        msgs = self._consumer.consume(num_messages=n, timeout=0)
        if not msgs:
            msgs = self._consumer.consume(num_messages=1, timeout=timeout_s)
            if msgs and n > 1:
                msgs += self._consumer.consume(num_messages=n - 1, timeout=0)
        out: list[RawRecord] = []
        first: dict[TopicPartition, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            tp = (msg.topic(), msg.partition())
            if max_records <= 0:  # a keep-alive poll: give the records back
                first.setdefault(tp, msg.offset())
                continue
            kind, ts = msg.timestamp()
            out.append(RawRecord(msg.value() or b"", Position(tp[0], tp[1], msg.offset()),
                                 msg.key(), ts / 1000.0 if kind else None))
        for (t, p), off in first.items():
            self._consumer.seek(KafkaTP(t, p, off))
        for rec in out:
            pos = rec.position
            self._next[(pos.source, pos.partition)] = pos.offset + 1
        return out

    def lag(self) -> int | None:
        """Records behind the high watermark, summed over the owned partitions, from the
        client's cached watermarks (no network call); None before anything is known."""
        total, known = 0, False
        for (t, p) in self._owned:
            nxt = self._next.get((t, p))
            if nxt is None:
                continue
            _, high = self._consumer.get_watermark_offsets(KafkaTP(t, p), cached=True)
            if high is not None and high >= 0:
                total += max(high - nxt, 0)
                known = True
        return total if known else None

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        chosen = [KafkaTP(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._owned]
        if not chosen:
            return
        try:
            self._consumer.commit(offsets=chosen, asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code in _LOST_GROUP:
                log.warning("commit refused after a rebalance (%s); records will be re-read",
                            exc)
                return
            raise SourceUnavailable(f"commit failed: {exc!r}") from exc

    def assignment(self) -> set[TopicPartition]:
        return set(self._owned)

    def pause(self, partitions: set[TopicPartition]) -> None:
        self._consumer.pause([KafkaTP(t, p) for t, p in partitions])

    def resume(self, partitions: set[TopicPartition]) -> None:
        self._consumer.resume([KafkaTP(t, p) for t, p in partitions if (t, p) in self._owned])

    @property
    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self._consumer.close()


class ConfluentSink:
    """Produces predictions or dead letters to ``topic``; ``flush`` raises
    :class:`~streamadapt.flowcontrol.SinkUnavailable` when not every record was delivered
    within ``flush_timeout_s``; failed records are produced again on the next flush.

    Parameters
    ----------
    topic
        Output topic.
    config
        ``Producer`` properties, or None when ``producer`` is given.
    flush_timeout_s
        How long ``flush`` waits for delivery reports.
    producer
        A producer to share between the prediction and dead-letter sinks.
    """

    def __init__(
        self,
        topic: str,
        config: Mapping[str, Any] | None = None,
        flush_timeout_s: float = 10.0,
        producer: Any = None,
    ) -> None:
        self.topic = topic
        self.config = dict(config or {})
        self.flush_timeout_s = flush_timeout_s
        self.producer = producer if producer is not None else Producer(self.config, logger=log)
        self._failed: list[Record] = []
        self._queued = 0

    def add(self, records: Sequence[Prediction] | Sequence[DeadLetter]) -> None:
        self._produce(to_records(records))

    def _report(self, err: Any, msg: Any) -> None:
        """Delivery report of one record: a failed one is rebuilt from the message (its
        value, key and headers) and produced again on the next flush."""
        self._queued -= 1
        if err is not None:
            self._failed.append((msg.value(), msg.key(), msg.headers() or []))

    def _produce(self, records: list[Record]) -> None:
        produce, topic, report = self.producer.produce, self.topic, self._report
        for value, key, headers in records:
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers or None,
                            on_delivery=report)
                    break
                except BufferError:  # the local queue is full: serve delivery reports
                    self.producer.poll(0.05)
            self._queued += 1

    def flush(self) -> None:
        if self._failed:
            failed, self._failed = self._failed, []
            self._produce(failed)
        left = self.producer.flush(self.flush_timeout_s)
        if self._failed or left:
            raise SinkUnavailable(
                f"{self.topic}: {len(self._failed)} records failed, {left} undelivered "
                f"after {self.flush_timeout_s:g} s"
            )

    @property
    def backlog(self) -> int:
        """Records not yet delivered."""
        return self._queued + len(self._failed)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.flush_timeout_s)
            self.producer = None  # librdkafka stops once no sink holds it
