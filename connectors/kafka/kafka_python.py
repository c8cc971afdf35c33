"""The kafka-python client behind the service's source and sink protocols (the default).

:class:`KafkaPythonSource` is a consumer-group member with manual commits: it tells the
service when partitions are assigned or revoked (inside ``poll``, on the service's thread),
so partition state is restored and checkpointed at the right moments, and it can pause and
resume partitions while the sinks are away. :class:`KafkaPythonSink` produces prediction or
dead-letter records and keeps every record until the broker acknowledged it, so a flush
that fails (broker away) is simply retried.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import OffsetAndMetadata

try:  # kafka-python >= 3
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
except ImportError:  # pragma: no cover - kafka-python 2.x
    AsyncConsumerRebalanceListener = None  # type: ignore[assignment,misc]
try:  # kafka-python >= 3
    from kafka.partitioner.sticky import StickyPartitioner
except ImportError:  # pragma: no cover - kafka-python 2.x
    StickyPartitioner = DefaultPartitioner  # type: ignore[assignment,misc]

from connectors.kafka.records import Record, to_records
from streamadapt.events import DeadLetter, Position, Prediction
from streamadapt.flowcontrol import SinkUnavailable, SourceUnavailable
from streamadapt.io import RawRecord, TopicPartition

__all__ = ["KafkaPythonSource", "KafkaPythonSink"]

log = logging.getLogger("connectors.kafka")

Hook = Callable[[set[TopicPartition]], None]
_LOST_GROUP = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError,
               UnknownMemberIdError)
#: Partitioners that put a keyed record on ``murmur2(key) % partitions`` (the Java hash).
_KEY_HASHING = (DefaultPartitioner, StickyPartitioner)
#: Most keys whose partition a sink remembers (emptied when full).
_MAX_CACHED_KEYS = 100_000


class _Listener(ConsumerRebalanceListener):
    """kafka-python 2.x: callbacks run inside ``poll`` on the caller's thread."""

    def __init__(self, source: KafkaPythonSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        if self.source.on_revoke is not None:
            self.source.on_revoke({(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        if self.source.on_assign is not None:
            self.source.on_assign({(tp.topic, tp.partition) for tp in assigned})


if AsyncConsumerRebalanceListener is not None:

    class _AsyncListener(AsyncConsumerRebalanceListener):
        """kafka-python 3.x: callbacks run on the client's I/O thread (while the service
        thread waits in ``poll``), where the blocking commit is refused; commits asked for
        during a revocation are gathered and awaited here."""

        def __init__(self, source: KafkaPythonSource) -> None:
            self.source = source

        async def on_partitions_revoked(self, revoked: Any) -> None:
            src = self.source
            if src.on_revoke is None:
                return
            src._deferred = {}
            try:
                src.on_revoke({(tp.topic, tp.partition) for tp in revoked})
                offsets, src._deferred = src._deferred, None
                if offsets:
                    coordinator = src._consumer._coordinator
                    await coordinator._commit_offsets_sync_async(offsets)
            except KafkaError as exc:
                log.warning("commit on revocation failed (%s); records will be re-read", exc)
            finally:
                src._deferred = None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            if self.source.on_assign is not None:
                self.source.on_assign({(tp.topic, tp.partition) for tp in assigned})

        async def on_partitions_lost(self, lost: Any) -> None:
            """This member was evicted: another may own these partitions already, so
            nothing is checkpointed or committed for them."""
            src = self.source
            gone = {(tp.topic, tp.partition) for tp in lost}
            if src.on_lost is not None:
                src.on_lost(gone)
            elif src.on_revoke is not None:
                src.on_revoke(gone)


class KafkaPythonSource:
    """Consumes ``topics`` as a member of a consumer group, committing only when told.

    Parameters
    ----------
    topics
        Input topics.
    config
        ``KafkaConsumer`` keyword arguments (see :func:`connectors.kafka.config`).
    """

    def __init__(self, topics: Sequence[str], config: Mapping[str, Any]) -> None:
        self.topics = list(topics)
        self.config = dict(config)
        self.on_assign: Hook | None = None
        self.on_revoke: Hook | None = None
        self.on_lost: Hook | None = None
        self._deferred: dict[Any, Any] | None = None
        self._next: dict[TopicPartition, int] = {}
        self._consumer = KafkaConsumer(**self.config)
        listener: Any = (_AsyncListener(self) if AsyncConsumerRebalanceListener is not None
                         else _Listener(self))
        self._consumer.subscribe(self.topics, listener=listener)

    def set_rebalance_listener(self, on_assign: Hook, on_revoke: Hook) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def set_lost_listener(self, on_lost: Hook) -> None:
        """Called instead of the revocation hook when the member was evicted (fenced)."""
        self.on_lost = on_lost

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (an owned partition; also inside the assignment
        callback, before the first fetch)."""
        self._consumer.seek(KafkaTP(*tp), offset)
        self._next.pop(tp, None)

    def committed_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of ``tps`` (those with one)."""
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            try:
                off = self._consumer.committed(KafkaTP(*tp))
            except KafkaError as exc:
                log.warning("committed offset of %s unknown (%s)", tp, exc)
                continue
            if off is not None and off >= 0:
                out[tp] = int(off)
        return out

    def generation(self) -> int:
        """The consumer group's generation this member joined with (-1: none)."""
        try:
            return int(self._consumer.group_metadata().generation_id)
        except (AttributeError, TypeError, ValueError):
            return -1

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        batch = self._consumer.poll(timeout_ms=int(timeout_s * 1000),
                                    max_records=max(1, max_records))
        out: list[RawRecord] = []
        for tp, msgs in batch.items():
            if max_records <= 0 and msgs:  # a keep-alive poll: give the records back
                self._consumer.seek(tp, msgs[0].offset)
                continue
            for msg in msgs:
                ts = msg.timestamp / 1000.0 if msg.timestamp is not None else None
                out.append(RawRecord(msg.value or b"", Position(tp.topic, tp.partition,
                                                                msg.offset), msg.key, ts))
            if msgs:
                self._next[(tp.topic, tp.partition)] = msgs[-1].offset + 1
        return out

    def lag(self) -> int | None:
        """Records behind the high watermark, summed over the owned partitions, from what the
        last fetches reported (no network call); None before anything is known."""
        total, known = 0, False
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            nxt = self._next.get((tp.topic, tp.partition))
            if high is not None and nxt is not None:
                total += max(high - nxt, 0)
                known = True
        return total if known else None

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        owned = self._consumer.assignment()
        chosen = {KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
                  if KafkaTP(t, p) in owned}
        if not chosen:
            return
        if self._deferred is not None:  # inside a revocation: committed by the listener
            self._deferred.update(chosen)
            return
        try:
            self._consumer.commit(chosen)
        except _LOST_GROUP as exc:
            # The group moved on: the new owner reads these records again (at-least-once).
            log.warning("commit refused after a rebalance (%s); records will be re-read", exc)
        except KafkaError as exc:
            raise SourceUnavailable(f"commit failed: {exc!r}") from exc

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, partitions: set[TopicPartition]) -> None:
        self._consumer.pause(*[KafkaTP(t, p) for t, p in partitions])

    def resume(self, partitions: set[TopicPartition]) -> None:
        owned = self._consumer.assignment()
        self._consumer.resume(*[tp for tp in (KafkaTP(t, p) for t, p in partitions)
                                if tp in owned])

    @property
    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaPythonSink:
    """Produces predictions or dead letters to ``topic``; ``flush`` raises
    :class:`~streamadapt.flowcontrol.SinkUnavailable` when not every record was
    acknowledged within ``flush_timeout_s``, keeping the rest for the next flush. A keyed
    record goes to the partition kafka-python's default partitioner picks, hashed once per
    key rather than once per record.

    Parameters
    ----------
    topic
        Output topic.
    config
        ``KafkaProducer`` keyword arguments, or None when ``producer`` is given.
    flush_timeout_s
        How long ``flush`` waits for acknowledgements.
    producer
        A producer to share (predictions and dead letters use one); it is closed by
        whichever sink closes last.
    """

    def __init__(
        self,
        topic: str,
        config: Mapping[str, Any] | None = None,
        flush_timeout_s: float = 10.0,
        producer: KafkaProducer | None = None,
    ) -> None:
        self.topic = topic
        self.config = dict(config or {})
        self.flush_timeout_s = flush_timeout_s
        self.producer = producer if producer is not None else KafkaProducer(**self.config)
        self._users = getattr(self.producer, "_streamadapt_users", 0) + 1
        self.producer._streamadapt_users = self._users  # type: ignore[attr-defined]
        self._inflight: list[tuple[Any, Record]] = []
        self._unsent: list[Record] = []
        # Keyed records go where the producer's own partitioner would put them, hashed once
        # per key instead of once per record (kafka-python's murmur2 is pure Python).
        self._hash_keys = (type(getattr(self.producer, "config", {}).get("partitioner"))
                           in _KEY_HASHING)
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}

    def add(self, records: Sequence[Prediction] | Sequence[DeadLetter]) -> None:
        self._send(to_records(records))

    def _key_partitions(self) -> dict[bytes, int] | None:
        """The cache key -> partition for this batch, emptied when the topic's partitions
        change; None when the producer's partitioner is not kafka-python's default."""
        if not self._hash_keys:
            return None
        parts = sorted(self.producer.partitions_for(self.topic) or ())  # cached metadata
        if not parts:
            return None
        if parts != self._partitions or len(self._partition_of) > _MAX_CACHED_KEYS:
            self._partitions, self._partition_of = parts, {}
        return self._partition_of

    def _send(self, records: list[Record]) -> None:
        send, topic, inflight = self.producer.send, self.topic, self._inflight
        try:
            cache = self._key_partitions()
        except KafkaError as exc:  # metadata unavailable: the broker is away
            log.debug("no metadata for %s (%s); %d records kept for retry", topic, exc,
                      len(records))
            self._unsent.extend(records)
            return
        parts = self._partitions
        for i, rec in enumerate(records):
            value, key, headers = rec
            part = None
            if cache is not None and key is not None:
                part = cache.get(key)
                if part is None:
                    part = cache[key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            try:
                fut = send(topic, value=value, key=key, headers=headers, partition=part)
            except KafkaError as exc:  # metadata unavailable: the broker is away
                log.debug("send failed (%s); kept for retry", exc)
                self._unsent.extend(records[i:])
                return
            except ValueError:  # the partition left the metadata: let the producer pick
                self._partitions, self._partition_of = [], {}
                fut = send(topic, value=value, key=key, headers=headers)
            inflight.append((fut, rec))

    def flush(self) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            self._send(unsent)
        # A timeout raises; the futures below say which records are not acknowledged.
        with contextlib.suppress(KafkaError):
            self.producer.flush(timeout=self.flush_timeout_s)
        failed = [rec for fut, rec in self._inflight if fut.is_done and fut.failed()]
        waiting = [(fut, rec) for fut, rec in self._inflight if not fut.is_done]
        self._inflight = waiting
        self._unsent.extend(failed)
        if failed or waiting or self._unsent:
            raise SinkUnavailable(
                f"{self.topic}: {len(self._unsent)} records failed or unsent, "
                f"{len(waiting)} unacknowledged after {self.flush_timeout_s:g} s"
            )

    @property
    def backlog(self) -> int:
        """Records not yet acknowledged."""
        return len(self._inflight) + len(self._unsent)

    def close(self) -> None:
        users = self.producer._streamadapt_users - 1  # type: ignore[attr-defined]
        self.producer._streamadapt_users = users  # type: ignore[attr-defined]
        if users <= 0:
            self.producer.close(timeout=self.flush_timeout_s)
