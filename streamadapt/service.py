"""The service loop: poll a micro-batch, decode, run the pipeline step, produce, checkpoint,
then commit.

:class:`Service` sees only the protocols of :mod:`streamadapt.io`, so the same loop runs
the embedded default (an in-memory stream), file replay and Kafka. Ordering gives
at-least-once delivery: a batch's offsets are committed only after its predictions and dead
letters are flushed to their sinks and its state is checkpointed; after a crash the batch is
read again, and its duplicates carry the same event ids.

A malformed record never stops the loop: it becomes a dead letter with its reason and
source position, and its offset still advances.

With a consumer-group source and ``partition_state`` the service also follows the group
(:mod:`streamadapt.partitions`): the replica keeps one pipeline (one set of weights) for
all its partitions, and each partition's key state is restored on assignment and
checkpointed (then committed) on revocation; readiness means partitions assigned and state
restored. A restored partition is sought back to its checkpoint's offset and the records
up to the committed offset are **replayed**: learned and joined again, so that every label
is learned exactly once, but not emitted again (their predictions and dead letters went out
before the crash). A partition lost by a fenced member is dropped without a checkpoint.

Over Kafka, a :class:`~streamadapt.events.Label` must carry its impression's key (in its
``key`` field or as the record key) and come on the impression's partition number of a
co-partitioned labels topic; one that names a key whose impressions are on another
partition, or no key at all, becomes a dead letter saying so (docs/kafka.md).
While a sink cannot deliver, the partitions are paused and the flush retried with backoff;
the batch size is budgeted against ``max_poll_interval`` (:mod:`streamadapt.flowcontrol`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from streamadapt import metrics as m
from streamadapt.events import DeadLetter, Event, Impression, Label, LinkLoadSample, decode_many
from streamadapt.flowcontrol import Backoff, PollBudget, SinkUnavailable, SourceUnavailable
from streamadapt.http import Health
from streamadapt.io import Sink, Source, TopicPartition
from streamadapt.partitions import ReplicaState
from streamadapt.pipeline import Pipeline, StepResult
from streamadapt.summary import Accountant, RunSummary

__all__ = ["Service", "RunSummary", "Checkpointer", "SinkUnavailable", "SourceUnavailable"]

log = logging.getLogger("streamadapt.service")


class Checkpointer(Protocol):
    """Stores the pipeline state together with the offsets it covers."""

    def save(self, state: dict[str, Any], offsets: Mapping[TopicPartition, int]) -> None: ...

    def restore(self) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None: ...


class Service:
    """Wires a :class:`~streamadapt.io.Source`, a :class:`~streamadapt.pipeline.Pipeline`
    and the sinks into the poll loop.

    Parameters
    ----------
    pipeline
        The pure step (models, label joins, monitor): the replica's one set of weights.
    source
        Raw records. A source may also offer ``set_rebalance_listener(on_assign,
        on_revoke)`` (partition state follows the group's assignment, readiness follows
        it), ``pause(partitions)`` and ``resume(partitions)`` (backpressure).
    sink
        Where prediction records go.
    dead_letters
        Where dead letters go.
    batch_size
        Most records per poll.
    poll_timeout_s
        How long a poll waits for records.
    checkpointer
        Optional; saves the pipeline state with the offsets before each commit, at most once
        per ``checkpoint_interval_s`` (0: every batch). With ``partition_state`` it must
        also offer ``save_slot``/``restore_slot``/``slots``
        (:class:`~streamadapt.checkpoint.CheckpointStore` and the Kafka state store do).
    health
        Liveness/readiness state shared with the HTTP server.
    max_record_bytes
        Larger records are dead-lettered as oversized.
    on_batch
        Called after each batch with ``(result, summary)`` (progress bars).
    partition_state
        Key state follows its partitions across the group's members
        (:class:`~streamadapt.partitions.ReplicaState`); weights stay with the replica and
        are averaged with the other replicas' through the checkpoint store.
    replica_id
        This replica's name in the checkpoint store (partition state only).
    weight_sync
        ``"average"``, ``"deltas"`` or ``"off"``: how the replicas' weights follow each
        other at each checkpoint (partition state only; :mod:`streamadapt.partitions`).
    max_poll_interval_s
        The consumer's poll deadline (Kafka's ``max.poll.interval.ms``): the batch size is
        cut so that the slowest step seen so far, scaled to the batch, takes at most half
        of it. None: no budget.
    retry_backoff_s, retry_backoff_max_s
        First and longest wait between retries when a sink or the source is unavailable
        (exponential backoff with jitter).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        source: Source,
        sink: Sink,
        dead_letters: Sink,
        *,
        batch_size: int = 256,
        poll_timeout_s: float = 0.5,
        checkpointer: Checkpointer | None = None,
        checkpoint_interval_s: float = 30.0,
        health: Health | None = None,
        max_record_bytes: int = 1 << 20,
        on_batch: Callable[[StepResult, RunSummary], None] | None = None,
        partition_state: bool = False,
        replica_id: str = "replica",
        weight_sync: str = "average",
        max_poll_interval_s: float | None = None,
        retry_backoff_s: float = 0.2,
        retry_backoff_max_s: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.pipeline = pipeline
        self.source = source
        self.sink = sink
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.checkpointer = checkpointer
        self.checkpoint_interval_s = checkpoint_interval_s
        self.health = health or Health()
        self.max_record_bytes = max_record_bytes
        self.on_batch = on_batch
        self.max_poll_interval_s = max_poll_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.summary = RunSummary(task=pipeline.task)
        self.budget = PollBudget(batch_size, max_poll_interval_s)
        self.partitions: ReplicaState | None = None
        if partition_state:
            gen = getattr(source, "generation", None)
            self.partitions = ReplicaState(pipeline, checkpointer, replica_id=replica_id,
                                           weight_sync=weight_sync, generation=gen)
        self._offsets: dict[TopicPartition, int] = {}
        # restored partitions: checkpoint offset, until the committed offset is looked up
        self._replay_check: dict[TopicPartition, int] = {}
        #: Per partition, the offset up to which records are replayed (not emitted).
        self.replay_until: dict[TopicPartition, int] = {}
        self._uncommitted = False
        self._last_checkpoint = 0.0
        self._accountant = Accountant(self.summary, pipeline.primary)
        self._stop: threading.Event | None = None
        self._group_aware = hasattr(source, "set_rebalance_listener")
        if self._group_aware:
            source.set_rebalance_listener(self._on_assign, self._on_revoke)  # type: ignore[attr-defined]
            if hasattr(source, "set_lost_listener"):
                source.set_lost_listener(self._on_lost)
        m.PENDING_LABELS.set_function(self._pending)

    def _pending(self) -> float:
        if self.partitions is not None:
            return float(self.partitions.pending)
        return float(self.pipeline.pending)

    # -- rebalance -------------------------------------------------------------------------
    def _on_assign(self, tps: set[TopicPartition]) -> None:
        """Called by the source when the group hands it partitions: restore their state and
        seek them back to their checkpoints' offsets."""
        restored: dict[TopicPartition, int] = {}
        if self.partitions is not None:
            restored = self.partitions.assign(sorted(tps))
        seek = getattr(self.source, "seek", None)
        for tp, offset in restored.items():
            if seek is not None and offset >= 0:
                seek(tp, offset)
                self._replay_check[tp] = offset
                self._offsets[tp] = offset
        owned = self.source.assignment()
        self.health.ready = bool(owned)
        self.health.reason = (
            f"{len(owned)} partitions assigned, {len(restored)} restored from checkpoints"
            if owned else "no partitions assigned"
        )
        log.info("assigned %s; restored %s", sorted(tps), sorted(restored))

    def _on_revoke(self, tps: set[TopicPartition]) -> None:
        """Called by the source before partitions go to another member: checkpoint their
        state and commit their offsets while this member still owns them."""
        offsets: dict[TopicPartition, int] = {}
        if self.partitions is not None:
            offsets = self.partitions.revoke(sorted(tps))
        elif self.checkpointer is not None and tps:
            self.checkpoint_now()
        offsets.update({tp: o for tp, o in self._offsets.items() if tp in tps})
        if offsets:
            self._commit(offsets, attempts=2)
        self._forget(tps)
        self.health.ready = False
        self.health.reason = "rebalancing"
        if tps:
            log.info("revoked %s; committed %s", sorted(tps), offsets)

    def _on_lost(self, tps: set[TopicPartition]) -> None:
        """Called by the source when partitions were taken away (this member was fenced):
        their state is dropped without a checkpoint or a commit, since another member may
        already own them."""
        if self.partitions is not None:
            self.partitions.revoke(sorted(tps), lost=True)
        self._forget(tps)
        self.health.ready = False
        self.health.reason = "partitions lost; rejoining"
        if tps:
            log.warning("lost %s (fenced); their state was dropped, not checkpointed",
                        sorted(tps))

    def _forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._offsets.pop(tp, None)
            self._replay_check.pop(tp, None)
            self.replay_until.pop(tp, None)

    def _resolve_replay(self) -> None:
        """Look up the committed offsets of freshly restored partitions: the records between
        the checkpoint and them are replayed silently."""
        check, self._replay_check = self._replay_check, {}
        committed_of = getattr(self.source, "committed_offsets", None)
        if committed_of is None:
            return
        committed = committed_of(set(check))
        for tp, offset in check.items():
            c = committed.get(tp)
            if c is not None and c > offset:
                self.replay_until[tp] = c
                log.info("replaying %s:%d from %d to %d", tp[0], tp[1], offset, c)

    # -- the loop --------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the last service-wide checkpoint, if any, into the pipeline; True when one
        was loaded. With partition state, load the replica's weights (its own, else the
        group's newest); key state comes on assignment."""
        if self.checkpointer is None:
            return False
        if self.partitions is not None:
            return self.partitions.start() is not None
        found = self.checkpointer.restore()
        if found is None:
            return False
        state, offsets = found
        self.pipeline.load_state_dict(state)
        self._offsets.update(offsets)
        return True

    def run(
        self, stop: threading.Event | None = None, max_records: int | None = None
    ) -> RunSummary:
        """Poll until the source is finished, ``stop`` is set or ``max_records`` are read;
        the batch in flight is always finished, checkpointed and committed."""
        stop = stop or threading.Event()
        self._stop = stop
        # Objects alive now (models, settings, clients) live as long as the loop: moving them
        # out of the collector's generations keeps full collections from rescanning them,
        # which otherwise shows up as latency spikes of a few hundred milliseconds.
        gc.freeze()
        start = time.perf_counter()
        if not self._group_aware:
            self.health.ready = True
            self.health.reason = "running"
        try:
            while not stop.is_set():
                if max_records is not None and self.summary.records >= max_records:
                    break
                n = self.batch_size
                if max_records is not None:
                    n = min(n, max_records - self.summary.records)
                processed = self.run_once(n)
                if processed == 0 and self.source.finished:
                    break
            if self._uncommitted:
                self._commit(dict(self._offsets), attempts=3)
        finally:
            self.summary.seconds = time.perf_counter() - start
            self.health.ready = False
            self.health.reason = "stopped"
        return self.summary

    def run_once(self, max_records: int | None = None) -> int:
        """One turn of the loop; returns how many records it read."""
        t0 = time.perf_counter()
        n = self.budget.limit(max_records or self.batch_size)
        raw = self.source.poll(n, self.poll_timeout_s)
        t1 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="poll").observe(t1 - t0)
        self._beat()
        lag = getattr(self.source, "lag", None)  # optional: partitioned sources report it
        if lag is not None and (behind := lag()) is not None:
            m.CONSUMER_LAG.set(behind)
        if self._replay_check:
            self._resolve_replay()
        if not raw:
            return 0
        events: list[Event] = []
        groups: list[int] = []  # each event's partition number: its clock group
        dead: list[DeadLetter] = []
        task = self.pipeline.task
        offsets = self._offsets
        parts = self.partitions
        replay = self.replay_until
        silent: set[str] = set()  # event ids of replayed records: not emitted again
        silent_dead = 0
        if parts is not None:
            for rec in raw:
                pos = rec.position
                tp = (pos.source, pos.partition)
                if tp not in offsets and tp in parts.owned:
                    parts.begin(tp, pos.offset)
                    offsets[tp] = pos.offset
        decoded = decode_many([rec.value for rec in raw], [rec.position for rec in raw],
                              task=task, max_bytes=self.max_record_bytes)
        for rec, out in zip(raw, decoded, strict=True):
            pos = rec.position
            tp = (pos.source, pos.partition)
            replaying = bool(replay) and pos.offset < replay.get(tp, -1)
            if parts is not None and not isinstance(out, DeadLetter):
                out = self._route(out, rec, tp)
            if isinstance(out, DeadLetter):
                if replaying:
                    silent_dead += 1
                else:
                    dead.append(out)
            else:
                events.append(out)
                groups.append(pos.partition)
                if replaying:
                    silent.add(out.event_id)
            offsets[tp] = pos.offset + 1
        if parts is not None:
            for tp in {(r.position.source, r.position.partition) for r in raw}:
                if tp in offsets:
                    parts.observe(tp, (), offsets[tp])
            for tp in [tp for tp, end in replay.items() if offsets.get(tp, 0) >= end]:
                del replay[tp]
        n_replayed = len(silent) + silent_dead
        if n_replayed:
            m.REPLAYED_RECORDS.inc(n_replayed)
        t2 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="decode").observe(t2 - t1)
        result = self.pipeline.step(events, groups)
        if silent:
            result.predictions = [p for p in result.predictions if p.event_id not in silent]
        dead.extend(result.dead_letters)
        t3 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="step").observe(t3 - t2)
        if result.predictions:
            self.sink.add(result.predictions)
        if dead:
            self.dead_letters.add(dead)
        if not self._deliver():
            return len(raw)  # stopped while the sinks were away: nothing is committed
        t4 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="produce").observe(t4 - t3)
        self._maybe_checkpoint()
        t5 = time.perf_counter()
        self._commit(dict(offsets))
        t6 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="commit").observe(t6 - t5)
        self.budget.observe(len(raw), t6 - t1)
        self._accountant.add(len(raw), len(events), result, dead)
        if self.on_batch is not None:
            self.on_batch(result, self.summary)
        return len(raw)

    def _route(self, event: Event, rec: Any, tp: TopicPartition) -> Event | DeadLetter:
        """Note which partition a key's state belongs to; check a label's key against its
        impression's partition (the keying contract)."""
        if isinstance(event, LinkLoadSample):
            self.partitions.key_part[event.link_id] = tp[1]  # type: ignore[union-attr]
        elif isinstance(event, Impression):
            self.partitions.key_part[event.user_id] = tp[1]  # type: ignore[union-attr]
        elif isinstance(event, Label):
            key = event.key
            if key is None and rec.key:
                key = rec.key.decode("utf-8", "replace")
                event = event.model_copy(update={"key": key})
            if key is None:
                return DeadLetter(rec.value, "label without key: produce each label with its "
                                  "impression's key (user_id) as the record key or in "
                                  "'key'", rec.position)
            owner = self.pipeline.pending_key(event.event_id) or key
            part = self.partitions.part_of(owner) if self.partitions is not None else None
            if part is not None and part != tp[1]:  # (else the pipeline checks at the join)
                return DeadLetter(rec.value, f"label keyed wrongly: key {owner!r} has its "
                                  f"impressions on partition {part}, the label came on "
                                  f"partition {tp[1]}; produce labels with the impression's "
                                  "key on a topic with as many partitions", rec.position)
        return event

    def _beat(self) -> None:
        self.health.beat()
        m.HEARTBEAT.set(self.health.heartbeat)

    # -- unavailability: retries with backoff, partitions paused meanwhile ---------------------
    def _deliver(self) -> bool:
        """Flush both sinks; while they cannot deliver, pause the source's partitions (so
        polling keeps the group membership without fetching more), back off and retry.
        False when stopped before delivery succeeded."""
        backoff = Backoff(self.retry_backoff_s, self.retry_backoff_max_s)
        paused: set[TopicPartition] = set()
        try:
            while True:
                try:
                    self.sink.flush()
                    self.dead_letters.flush()
                    return True
                except SinkUnavailable as exc:
                    if not paused and hasattr(self.source, "pause"):
                        paused = set(self.source.assignment())
                        self.source.pause(paused)  # type: ignore[attr-defined]
                    self.health.reason = f"sink unavailable, retrying: {exc}"
                    log.warning("sink unavailable (%s); retry in %.2f s", exc, backoff.peek)
                    if self._stop is not None and self._stop.is_set():
                        return False
                    backoff.sleep(self._stop)
                    self.source.poll(0, 0.0)  # keeps the consumer in its group
                    self._beat()
        finally:
            if paused and hasattr(self.source, "resume"):
                self.source.resume(paused)  # type: ignore[attr-defined]
                self.health.reason = "running"

    def _commit(self, offsets: Mapping[TopicPartition, int], attempts: int = 1) -> bool:
        """Commit with up to ``attempts`` tries; a failed commit is retried with the next
        batch's (larger) offsets, so nothing is lost, at worst read again."""
        if not offsets:
            return True
        backoff = Backoff(self.retry_backoff_s, self.retry_backoff_max_s)
        for i in range(attempts):
            try:
                self.source.commit(offsets)
                self._uncommitted = False
                return True
            except SourceUnavailable as exc:
                log.warning("commit failed (%s), try %d of %d", exc, i + 1, attempts)
                if i + 1 < attempts:
                    backoff.sleep(self._stop)
        self._uncommitted = True
        return False

    def _maybe_checkpoint(self) -> None:
        if self.checkpointer is None:
            return
        now = time.time()
        if now - self._last_checkpoint < self.checkpoint_interval_s:
            return
        t = time.perf_counter()
        try:
            if self.partitions is not None:
                self.partitions.checkpoint()
                m.WEIGHT_SYNC_REPLICAS.set(len(self.partitions.peers))
            else:
                self.checkpointer.save(self.pipeline.state_dict(), dict(self._offsets))
        except OSError as exc:  # a full or lost volume must not stop serving
            log.error("checkpoint failed: %s", exc)
            m.CHECKPOINTS.labels(outcome="failed").inc()
            return
        self._last_checkpoint = now
        m.CHECKPOINTS.labels(outcome="ok").inc()
        m.CHECKPOINT_LAST_SUCCESS.set(now)
        m.STAGE_DURATION.labels(stage="checkpoint").observe(time.perf_counter() - t)

    def checkpoint_now(self) -> None:
        """Checkpoint regardless of the interval (shutdown)."""
        self._last_checkpoint = 0.0
        self._maybe_checkpoint()

    def close(self) -> None:
        """Flush and close the sinks and the source (idempotent)."""
        for part in (self.sink, self.dead_letters):
            try:
                part.flush()
            except SinkUnavailable as exc:
                log.error("closing with undelivered records (%s); their offsets were not "
                          "committed, so they are read again on restart", exc)
            finally:
                part.close()
        self.source.close()
