"""A Kafka-native state store: checkpoints in a compacted topic of the cluster itself.

:class:`KafkaStateStore` has the interface of
:class:`~streamadapt.checkpoint.CheckpointStore`, so the service uses either, but it needs
no volume shared between replicas: like the changelog topics of Kafka Streams and Quix
Streams, the state lives in one topic (``<group_id>.state`` by default), created on first
use with ``cleanup.policy=compact``.

Layout
------
A checkpoint is the bytes of :func:`~streamadapt.checkpoint.encode_checkpoint`, cut into
chunks of at most ``chunk_bytes`` (512 KiB: a record may not exceed the broker's
``max.message.bytes``, 1 MiB by default). Chunk ``i`` of slot ``s`` is one record keyed
``s/i``; its headers carry the checkpoint id, the chunk index and count, the SHA-256 digest
of the whole checkpoint and the writer's consumer-group generation. Every record goes to
partition 0, so offsets give one write order across slots and chunks.

Restore
-------
The store reads its topic with a plain consumer (no group, partition 0 assigned by hand)
from the beginning to the end offset, keeps what it read and, on later calls, reads only
the new tail. Per slot it holds the chunks of the last ``keep`` checkpoints it saw, and a
restore takes, among the complete ones (every chunk present under one id, digest
matching, decodable), the newest by (generation, write order). A torn write (a writer
killed between chunks) is incomplete, so the previous complete checkpoint is used while
the log still holds it; once compaction has replaced its first chunks by the torn
write's, none is left and the slot restores as None (a fresh start).

Stale chunks
------------
Compaction keeps the last record per key, so when a checkpoint has fewer chunks than the
one before it, the keys past its last chunk still hold chunks of the older checkpoint.
Those can never form a complete checkpoint again (their first chunks were replaced), so
restore ignores them; after a successful save the store also writes tombstones (null
values) for those keys, so that compaction removes them.

Fencing
-------
A save with a generation (>= 0) older than that of the slot's newest valid checkpoint
that records one (the tail is read right before writing) raises
:class:`~streamadapt.checkpoint.StaleCheckpoint` and writes nothing: a member fenced out
of the group cannot overwrite the state of the partition's new owner. Only verified
checkpoints fence (with a key, signed with it), so records forged into the topic cannot
lock a slot. Two writers racing past that check are still ordered by generation on
restore.

Writes use acks=all and wait for the acknowledgement; a write or read that fails raises
:class:`StateStoreUnavailable`, an :class:`OSError`, which the service counts as a failed
checkpoint while it keeps serving.

>>> records = chunk_records("events.0", b"x" * 10, checkpoint_id="c1", generation=4,
...                         chunk_bytes=4)
>>> [(key, len(value)) for value, key, _ in records]
[(b'events.0/0', 4), (b'events.0/1', 4), (b'events.0/2', 2)]
>>> dict(records[2][2])["chunks"], dict(records[2][2])["generation"]
(b'3', b'4')
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamadapt import metrics as m
from streamadapt.checkpoint import (
    SERVICE_SLOT,
    Checkpoint,
    CorruptCheckpoint,
    StaleCheckpoint,
    UntrustedCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
    slot_of,
)
from streamadapt.io import TopicPartition

__all__ = ["KafkaStateStore", "StateStoreUnavailable", "chunk_records", "CHUNK_BYTES",
           "TOPIC_CONFIG"]

log = logging.getLogger("connectors.kafka.statestore")

#: Default largest chunk of a checkpoint, in bytes (half the broker's default record limit).
CHUNK_BYTES = 512 << 10
#: Topic configuration asked for when the store creates its topic. A short segment lets
#: compaction (which never touches the active segment) clean up within an hour.
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "3600000"}
_HEADERS = ("checkpoint_id", "chunk", "chunks", "digest", "generation")
_POLL_RECORDS = 100_000

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


class StateStoreUnavailable(OSError):
    """The state topic could not be read or written (broker away, timeout, refused)."""


def chunk_records(
    slot: str, blob: bytes, *, checkpoint_id: str, generation: int = -1,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[Record]:
    """The records of one checkpoint: (value, key, headers) per chunk, keyed ``<slot>/<i>``."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes!r}")
    pieces = [blob[i:i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    digest = hashlib.sha256(blob).hexdigest().encode()
    common = [("checkpoint_id", checkpoint_id.encode()), ("chunks", str(len(pieces)).encode()),
              ("digest", digest), ("generation", str(int(generation)).encode())]
    return [(piece, f"{slot}/{i}".encode(), [("chunk", str(i).encode()), *common])
            for i, piece in enumerate(pieces)]


@dataclass
class _Entry:
    """The chunks of one checkpoint seen so far."""

    checkpoint_id: str
    generation: int
    chunks: int
    digest: str
    offset: int  # of its newest record: the write order
    parts: dict[int, bytes] = field(default_factory=dict)
    bad: str | None = None
    valid: bool | None = None  # None: not checked yet

    @property
    def complete(self) -> bool:
        return self.bad is None and len(self.parts) == self.chunks


@dataclass
class _Slot:
    entries: dict[str, _Entry] = field(default_factory=dict)  # oldest first
    keys: set[int] = field(default_factory=set)  # chunk keys holding a value
    own: set[str] = field(default_factory=set)  # ids of checkpoints this store wrote

    def ranked(self) -> list[_Entry]:
        """Its checkpoints, newest first by (generation, write order)."""
        return sorted(self.entries.values(), key=lambda e: (e.generation, e.offset),
                      reverse=True)


class KafkaStateStore:
    """Checkpoints in a compacted Kafka topic; the interface of
    :class:`~streamadapt.checkpoint.CheckpointStore`.

    Parameters
    ----------
    topic
        The state topic (one per consumer group, e.g. ``<group_id>.state``); created with
        one partition and ``topic_config`` when missing.
    config
        kafka-python connection arguments shared by its admin client, producer and
        consumer (``bootstrap_servers``, TLS, SASL: see
        :func:`connectors.kafka.config.kafka_python_common`).
    keep
        Checkpoints held in memory per slot, the newest of which is restored; the older
        ones are the fallback when a newer one is torn or does not decode.
    chunk_bytes
        Largest record value; must stay below the topic's ``max.message.bytes``.
    hmac_key
        Signs checkpoints when written and makes every checkpoint read prove it was signed
        with it (:func:`~streamadapt.checkpoint.decode_checkpoint`); a ``str`` or a
        pydantic secret is taken as its UTF-8 bytes. None: unsigned, behind a checksum.
    enable_idempotence
        Idempotent producer (always acks=all).
    timeout_s
        How long a write waits for its acknowledgement, and a read without progress
        before it gives up.
    replication_factor
        Of the topic when the store creates it; -1: the broker's default.
    topic_config
        Topic configuration asked for at creation (a broker may ignore it).
    """

    def __init__(
        self,
        topic: str,
        config: Mapping[str, Any],
        *,
        keep: int = 3,
        chunk_bytes: int = CHUNK_BYTES,
        hmac_key: bytes | str | Any | None = None,
        enable_idempotence: bool = True,
        timeout_s: float = 30.0,
        replication_factor: int = -1,
        topic_config: Mapping[str, str] | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes!r}")
        self.topic = topic
        self.config = dict(config)
        self.keep = keep
        self.chunk_bytes = chunk_bytes
        if hasattr(hmac_key, "get_secret_value"):
            hmac_key = hmac_key.get_secret_value()
        self.hmac_key: bytes | None = (hmac_key.encode() if isinstance(hmac_key, str)
                                       else hmac_key)
        self.enable_idempotence = enable_idempotence
        self.timeout_s = timeout_s
        self.replication_factor = replication_factor
        self.topic_config = dict(TOPIC_CONFIG if topic_config is None else topic_config)
        #: What the last restore found unusable and skipped, newest first (descriptions).
        self.corrupt: list[str] = []
        self._slots: dict[str, _Slot] = {}
        self._producer: Any = None
        self._consumer: Any = None
        self._tp: Any = None

    def __repr__(self) -> str:
        return f"KafkaStateStore(topic={self.topic!r}, signed={self.hmac_key is not None})"

    # -- the service-wide checkpointer protocol --------------------------------------------
    def save(self, state: Mapping[str, Any], offsets: Mapping[TopicPartition, int]) -> str:
        """Save one service-wide checkpoint; returns where it went."""
        return self.save_slot(SERVICE_SLOT, state, offsets)

    def restore(self) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest valid service-wide checkpoint, or None."""
        return self.restore_slot(SERVICE_SLOT)

    # -- per partition ----------------------------------------------------------------------
    def save_partition(self, tp: TopicPartition, state: Mapping[str, Any], offset: int,
                       generation: int = -1) -> str:
        """Save the state owned by partition ``tp`` with its next offset to read."""
        return self.save_slot(slot_of(tp), state, {tp: offset}, generation)

    def restore_partition(self, tp: TopicPartition) -> tuple[dict[str, Any], int] | None:
        """The newest valid checkpoint of partition ``tp``: (state, next offset), or None."""
        found = self.restore_slot_full(slot_of(tp))
        return None if found is None else (found.state, found.offsets.get(tp, -1))

    # -- slots ------------------------------------------------------------------------------
    def slots(self) -> list[str]:
        """Every slot with at least one complete checkpoint."""
        self._catch_up()
        return sorted(name for name, s in self._slots.items()
                      if any(e.complete for e in s.entries.values()))

    def save_slot(self, slot: str, state: Mapping[str, Any],
                  offsets: Mapping[TopicPartition, int], generation: int = -1) -> str:
        """Write a checkpoint into ``slot``; returns ``<topic>@<offset of its first chunk>``.

        Raises :class:`~streamadapt.checkpoint.StaleCheckpoint` (nothing written) when
        ``generation`` is below the newest generation stored for the slot, and
        :class:`StateStoreUnavailable` when the write is not acknowledged.
        """
        generation = int(generation)
        self._catch_up()
        s = self._slots.setdefault(slot, _Slot())
        if generation >= 0:
            newest = self._fence(s)
            if newest is not None and newest > generation:
                raise StaleCheckpoint(
                    f"slot {slot!r}: generation {generation} is older than generation "
                    f"{newest} already stored in topic {self.topic!r}; a newer member of the "
                    "group owns this state, nothing written")
        blob = encode_checkpoint(state, offsets, generation=generation, hmac_key=self.hmac_key)
        cid = uuid.uuid4().hex
        records = chunk_records(slot, blob, checkpoint_id=cid, generation=generation,
                                chunk_bytes=self.chunk_bytes)
        s.own.add(cid)  # valid by construction, whenever it is read back
        try:
            first = self._write(records)
        except StateStoreUnavailable:
            s.own.discard(cid)
            raise
        stale = sorted(i for i in s.keys if i >= len(records))
        if stale:  # chunks of an older, longer checkpoint: let compaction drop them
            try:
                self._write([(None, f"{slot}/{i}".encode(), []) for i in stale])
            except StateStoreUnavailable as exc:
                log.warning("tombstones of %d stale chunks of %s not written (%s)",
                            len(stale), slot, exc)
        return f"{self.topic}@{first}"

    def restore_slot(self, slot: str) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest valid checkpoint of ``slot``: (state, offsets), or None."""
        found = self.restore_slot_full(slot)
        return None if found is None else (found.state, found.offsets)

    def restore_slot_full(self, slot: str) -> Checkpoint | None:
        """The newest valid checkpoint of ``slot`` by (generation, write order), or None;
        what was skipped on the way is listed in :attr:`corrupt`."""
        self._catch_up()
        self.corrupt = []
        s = self._slots.get(slot)
        if s is None:
            return None
        for e in s.ranked():
            where = f"{self.topic}@{e.offset} {slot} checkpoint {e.checkpoint_id}"
            try:
                found = self._decode(e)
            except UntrustedCheckpoint as exc:
                log.error("checkpoint %s refused: %s; trying the previous one", where, exc)
                m.CHECKPOINTS.labels(outcome="refused").inc()
                self.corrupt.append(f"{where}: {exc}")
            except CorruptCheckpoint as exc:
                log.warning("checkpoint %s is unusable (%s); trying the previous one", where,
                            exc)
                m.CHECKPOINTS.labels(outcome="corrupt").inc()
                self.corrupt.append(f"{where}: {exc}")
            else:
                return found
        if self.corrupt:
            log.error("slot %s has no usable checkpoint in topic %s (%d refused or damaged): "
                      "starting fresh", slot, self.topic, len(self.corrupt))
        return None

    def close(self) -> None:
        """Close the clients (idempotent); the cache is kept."""
        producer, consumer, self._producer, self._consumer = (self._producer, self._consumer,
                                                              None, None)
        if producer is not None:
            producer.close(timeout=self.timeout_s)
        if consumer is not None:
            consumer.close()

    # -- reading ------------------------------------------------------------------------------
    def _decode(self, e: _Entry) -> Checkpoint:
        """The checkpoint of ``e``; raises :class:`~streamadapt.checkpoint.CorruptCheckpoint`
        (torn, digest mismatch, damaged) or its kin UntrustedCheckpoint (signature, key,
        state allow-list)."""
        if not e.complete:
            raise CorruptCheckpoint(e.bad or f"torn: {len(e.parts)} of {e.chunks} chunks")
        blob = b"".join(e.parts[i] for i in range(e.chunks))
        if hashlib.sha256(blob).hexdigest() != e.digest:
            e.valid = False
            raise CorruptCheckpoint("digest mismatch")
        try:
            found = decode_checkpoint(blob, hmac_key=self.hmac_key)
        except CorruptCheckpoint:
            e.valid = False
            raise
        e.valid = True
        return found

    def _fence(self, s: _Slot) -> int | None:
        """The generation of the slot's newest valid checkpoint that records one (>= 0)."""
        for e in s.ranked():
            if e.generation < 0:
                continue  # a checkpoint of unknown generation claims nothing
            if e.valid is None and e.checkpoint_id in s.own and e.complete:
                e.valid = True
            if e.valid is None and e.complete:
                try:
                    self._decode(e)
                except CorruptCheckpoint as exc:
                    log.debug("checkpoint %s of %s does not fence: %s", e.checkpoint_id,
                              self.topic, exc)
            if e.valid:
                return e.generation
        return None

    def _catch_up(self) -> None:
        """Read the topic from where the last read ended to its end offset."""
        from kafka.errors import KafkaError

        self._open()
        c, tp = self._consumer, self._tp
        wait_ms = int(self.timeout_s * 1000)
        deadline = time.monotonic() + self.timeout_s
        try:
            end = c.end_offsets([tp], timeout_ms=wait_ms)[tp]
            while c.position(tp, timeout_ms=wait_ms) < end:
                if time.monotonic() > deadline:
                    raise StateStoreUnavailable(
                        f"reading state topic {self.topic!r}: stuck at offset "
                        f"{c.position(tp)} of {end} for {self.timeout_s:g} s")
                got = c.poll(timeout_ms=200, max_records=_POLL_RECORDS).get(tp, [])
                for rec in got:
                    self._apply(rec.key, rec.value, rec.headers, rec.offset)
                if got:  # a long topic may take longer, as long as it moves
                    deadline = time.monotonic() + self.timeout_s
            # Records already fetched past a short end offset (some brokers report the start
            # of the last batch + 1) are taken now rather than on the next call.
            for rec in c.poll(timeout_ms=0, max_records=_POLL_RECORDS).get(tp, []):
                self._apply(rec.key, rec.value, rec.headers, rec.offset)
        except KafkaError as exc:
            raise StateStoreUnavailable(f"reading state topic {self.topic!r}: {exc!r}") from exc

    def _apply(self, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]] | None, offset: int) -> None:
        """Take one record of the topic into the cache."""
        slot, _, index = (key or b"").decode(errors="replace").rpartition("/")
        if not slot or not index.isdigit():
            log.warning("record %s@%d has an unexpected key %r; ignored", self.topic, offset, key)
            return
        i = int(index)
        s = self._slots.setdefault(slot, _Slot())
        if value is None:  # a tombstone: the key's chunk is gone
            s.keys.discard(i)
            return
        s.keys.add(i)
        h = {k: v.decode(errors="replace") for k, v in headers or []}
        try:
            cid, n, gen, digest = (h["checkpoint_id"], int(h["chunks"]), int(h["generation"]),
                                   h["digest"])
        except (KeyError, ValueError):
            log.warning("record %s@%d (%s) lacks the headers %s; ignored", self.topic, offset,
                        key, ", ".join(_HEADERS))
            return
        e = s.entries.get(cid)
        if e is None:
            e = s.entries[cid] = _Entry(cid, gen, n, digest, offset)
            while len(s.entries) > self.keep:
                s.own.discard(s.entries.pop(next(iter(s.entries))).checkpoint_id)
        if (n, gen, digest) != (e.chunks, e.generation, e.digest) or not 0 <= i < n:
            e.bad = f"chunk {i} disagrees with the checkpoint's headers"
        e.parts[i] = value
        e.offset = max(e.offset, offset)

    # -- writing ------------------------------------------------------------------------------
    def _write(self, records: list[Record]) -> int:
        """Produce ``records`` to partition 0 and wait for every acknowledgement; returns
        the first offset. Own records that directly follow what was read are cached now
        instead of being read back."""
        from kafka.errors import KafkaError

        self._open()
        futures = []
        try:
            for value, key, headers in records:
                futures.append(self._producer.send(self.topic, value=value, key=key,
                                                   headers=headers, partition=0))
            self._producer.flush(timeout=self.timeout_s)
        except KafkaError as exc:
            raise StateStoreUnavailable(f"writing to state topic {self.topic!r}: {exc!r}") from exc
        failed = [f.exception for f in futures if not f.is_done or f.failed()]
        if failed:
            raise StateStoreUnavailable(
                f"writing to state topic {self.topic!r}: {len(failed)} of {len(futures)} "
                f"records not acknowledged within {self.timeout_s:g} s ({failed[0]!r})")
        offsets = [f.value.offset for f in futures]
        try:
            at = self._consumer.position(self._tp)
        except KafkaError:
            at = None
        if at == offsets[0] and offsets == list(range(at, at + len(offsets))):
            for (value, key, headers), off in zip(records, offsets, strict=True):
                self._apply(key, value, headers, off)
            self._consumer.seek(self._tp, offsets[-1] + 1)
        return offsets[0]

    # -- set-up -------------------------------------------------------------------------------
    def _open(self) -> None:
        """Create the topic when missing and the clients, on first use."""
        if self._consumer is not None:
            return
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.errors import KafkaError

        limit = self.chunk_bytes + (64 << 10)
        try:
            self._ensure_topic()
            producer = KafkaProducer(
                **{"client_id": "streamadapt-state", **self.config}, acks="all",
                enable_idempotence=self.enable_idempotence, retries=2**31 - 1,
                linger_ms=0, max_request_size=max(1 << 20, limit),
                request_timeout_ms=30_000,
                delivery_timeout_ms=max(int(self.timeout_s * 1000), 30_000) + 1_000,
                max_block_ms=int(self.timeout_s * 1000))
            consumer = KafkaConsumer(
                **{"client_id": "streamadapt-state", **self.config}, group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=max(8 << 20, limit),
                # A fetch waiting at the broker holds up the end-offset request queued behind
                # it on the connection: a short wait keeps each tail read to milliseconds.
                fetch_max_wait_ms=10)
        except KafkaError as exc:
            raise StateStoreUnavailable(f"state topic {self.topic!r}: {exc!r}") from exc
        deadline = time.monotonic() + self.timeout_s
        while 0 not in (consumer.partitions_for_topic(self.topic) or set()):
            if time.monotonic() > deadline:  # the metadata of a new topic takes a moment
                consumer.close()
                producer.close(timeout=0)
                raise StateStoreUnavailable(f"state topic {self.topic!r} has no partition 0 "
                                            f"after {self.timeout_s:g} s")
            time.sleep(0.1)
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        self._producer, self._consumer, self._tp = producer, consumer, tp

    def _ensure_topic(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import (
            InvalidConfigurationError,
            PolicyViolationError,
            TopicAlreadyExistsError,
        )

        admin = KafkaAdminClient(**{"client_id": "streamadapt-state", **self.config})
        try:
            if self.topic not in set(admin.list_topics()):
                for configs in (self.topic_config, {}):
                    try:
                        admin.create_topics([NewTopic(self.topic, 1, self.replication_factor,
                                                      topic_configs=configs)])
                        log.info("created state topic %s (%s)", self.topic, configs or
                                 "the broker's default configuration")
                        break
                    except TopicAlreadyExistsError:  # another replica was first
                        break
                    except (InvalidConfigurationError, PolicyViolationError) as exc:
                        if not configs:
                            raise
                        log.warning("the broker refused %s for state topic %s (%s); creating "
                                    "it with its defaults", configs, self.topic, exc)
            policy = _cleanup_policy(admin, self.topic)
            if policy is not None and "compact" not in policy:
                log.warning("state topic %s has cleanup.policy=%s, not compact: old "
                            "checkpoints may be deleted by retention", self.topic, policy)
        finally:
            admin.close()


def _cleanup_policy(admin: Any, topic: str) -> str | None:
    """The topic's ``cleanup.policy`` as the broker reports it, or None when it does not
    (kafka-python 3's answer layout; any other answer counts as not reported)."""
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError

    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entry = found["topic"][topic].get("cleanup.policy")
    except (KafkaError, KeyError, TypeError, AttributeError):
        return None
    if entry is None:
        return None
    return str(entry.get("value") if isinstance(entry, dict) else entry)
