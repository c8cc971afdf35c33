"""The service loop: poll a micro-batch, decode, run the pipeline step, produce, checkpoint,
then commit.

:class:`Service` sees only the protocols of :mod:`streamadapt.io`, so the same loop runs
the embedded default (an in-memory stream), file replay and Kafka. Ordering gives
at-least-once delivery: a batch's offsets are committed only after its predictions and dead
letters are flushed to their sinks and its state is checkpointed; after a crash the batch is
read again, and its duplicates carry the same event ids.

A malformed record never stops the loop: it becomes a dead letter with its reason and
source position, and its offset still advances.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamadapt import metrics as m
from streamadapt.events import DeadLetter, Event, decode_one
from streamadapt.http import Health
from streamadapt.io import Sink, Source, TopicPartition
from streamadapt.pipeline import Pipeline, StepResult

__all__ = ["Service", "RunSummary", "Checkpointer"]

log = logging.getLogger("streamadapt.service")


class Checkpointer(Protocol):
    """Stores the pipeline state together with the offsets it covers."""

    def save(self, state: dict[str, Any], offsets: Mapping[TopicPartition, int]) -> None: ...

    def restore(self) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None: ...


@dataclass
class RunSummary:
    """Counts and prequential error of one run, for the end-of-run table."""

    task: str
    events: int = 0
    records: int = 0
    predictions: int = 0
    labelled: int = 0
    dead_letters: int = 0
    expired: int = 0
    batches: int = 0
    seconds: float = 0.0
    abs_error: float = 0.0
    sq_error: float = 0.0
    log_loss: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    def add_scores(self, y: np.ndarray, p: np.ndarray) -> None:
        self.labelled += len(y)
        if self.task == "forecast":
            e = y - p
            self.abs_error += float(np.abs(e).sum())
            self.sq_error += float((e * e).sum())
        else:
            q = np.clip(p, 1e-7, 1 - 1e-7)
            self.log_loss += float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.labelled, 1)
        if self.task == "forecast":
            return {"mae": self.abs_error / n, "rmse": math.sqrt(self.sq_error / n)}
        return {"logloss": self.log_loss / n}

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _Rolling:
    """Exponentially weighted mean over events, updated once per batch."""

    def __init__(self, half_life_events: float = 500.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life_events)
        self.value = math.nan

    def update(self, values: np.ndarray) -> float:
        if len(values):
            w = self.decay ** len(values)
            mean = float(values.mean())
            self.value = mean if math.isnan(self.value) else w * self.value + (1 - w) * mean
        return self.value


class Service:
    """Wires a :class:`~streamadapt.io.Source`, a :class:`~streamadapt.pipeline.Pipeline`
    and the sinks into the poll loop.

    Parameters
    ----------
    pipeline
        The pure step (models, label joins, monitor).
    source
        Raw records.
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
        per ``checkpoint_interval_s`` (0: every batch).
    health
        Liveness/readiness state shared with the HTTP server.
    max_record_bytes
        Larger records are dead-lettered as oversized.
    on_batch
        Called after each batch with ``(result, summary)`` (progress bars).
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
    ) -> None:
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
        self.summary = RunSummary(task=pipeline.task)
        self._offsets: dict[TopicPartition, int] = {}
        self._last_checkpoint = 0.0
        self._err = {"mae": _Rolling(), "rmse": _Rolling(), "logloss": _Rolling()}
        m.PENDING_LABELS.set_function(lambda: float(self.pipeline.pending))

    # -- the loop --------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the last checkpoint, if any, into the pipeline; True when one was loaded."""
        if self.checkpointer is None:
            return False
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
        start = time.perf_counter()
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
        finally:
            self.summary.seconds = time.perf_counter() - start
            self.health.reason = "stopped"
        return self.summary

    def run_once(self, max_records: int | None = None) -> int:
        """One turn of the loop; returns how many records it read."""
        t0 = time.perf_counter()
        raw = self.source.poll(max_records or self.batch_size, self.poll_timeout_s)
        t1 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="poll").observe(t1 - t0)
        self.health.beat()
        m.HEARTBEAT.set(self.health.heartbeat)
        if not raw:
            return 0
        events: list[Event] = []
        dead: list[DeadLetter] = []
        task = self.pipeline.task
        offsets = self._offsets
        for rec in raw:
            out = decode_one(rec.value, task=task, position=rec.position,
                             max_bytes=self.max_record_bytes)
            (dead if isinstance(out, DeadLetter) else events).append(out)
            pos = rec.position
            offsets[(pos.source, pos.partition)] = pos.offset + 1
        t2 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="decode").observe(t2 - t1)
        result = self.pipeline.step(events)
        dead.extend(result.dead_letters)
        t3 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="step").observe(t3 - t2)
        if result.predictions:
            self.sink.add(result.predictions)
        if dead:
            self.dead_letters.add(dead)
        self.sink.flush()
        self.dead_letters.flush()
        t4 = time.perf_counter()
        m.STAGE_DURATION.labels(stage="produce").observe(t4 - t3)
        self._maybe_checkpoint()
        t5 = time.perf_counter()
        self.source.commit(dict(offsets))
        m.STAGE_DURATION.labels(stage="commit").observe(time.perf_counter() - t5)
        self._account(len(raw), len(events), result, dead)
        if self.on_batch is not None:
            self.on_batch(result, self.summary)
        return len(raw)

    def _maybe_checkpoint(self) -> None:
        if self.checkpointer is None:
            return
        now = time.time()
        if now - self._last_checkpoint < self.checkpoint_interval_s:
            return
        t = time.perf_counter()
        self.checkpointer.save(self.pipeline.state_dict(), dict(self._offsets))
        self._last_checkpoint = now
        m.CHECKPOINT_LAST_SUCCESS.set(now)
        m.STAGE_DURATION.labels(stage="checkpoint").observe(time.perf_counter() - t)

    def checkpoint_now(self) -> None:
        """Checkpoint regardless of the interval (shutdown)."""
        self._last_checkpoint = 0.0
        self._maybe_checkpoint()

    # -- accounting ----------------------------------------------------------------------------
    def _account(
        self, n_raw: int, n_events: int, result: StepResult, dead: list[DeadLetter]
    ) -> None:
        s = self.summary
        s.batches += 1
        s.records += n_raw
        s.events += n_events
        s.predictions += len(result.predictions)
        s.dead_letters += len(dead)
        s.expired += result.expired
        m.EVENTS.labels(outcome="predicted").inc(len(result.predictions))
        m.PREDICTIONS.inc(len(result.predictions))
        m.EVENTS.labels(outcome="expired").inc(result.expired)
        if dead:
            m.EVENTS.labels(outcome="dead_letter").inc(len(dead))
            for d in dead:
                reason = m.dead_letter_reason(d.reason)
                m.DEAD_LETTERS.labels(reason=reason).inc()
                s.dead_letter_reasons[reason] = s.dead_letter_reasons.get(reason, 0) + 1
        scores = result.scores.get(self.pipeline.primary)
        if scores is not None and len(scores):
            m.EVENTS.labels(outcome="labelled").inc(len(scores))
            s.add_scores(scores.y_true, scores.y_pred)
            e = scores.y_true - scores.y_pred
            if self.pipeline.task == "forecast":
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="mae").set(
                    self._err["mae"].update(np.abs(e)))
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="rmse").set(
                    math.sqrt(self._err["rmse"].update(e * e)))
            else:
                q = np.clip(scores.y_pred, 1e-7, 1 - 1e-7)
                ll = -(scores.y_true * np.log(q) + (1 - scores.y_true) * np.log(1 - q))
                m.PREQUENTIAL_ERROR.labels(model="adapted", metric="logloss").set(
                    self._err["logloss"].update(ll))

    def close(self) -> None:
        """Flush and close the sinks and the source (idempotent)."""
        for part in (self.sink, self.dead_letters):
            try:
                part.flush()
            finally:
                part.close()
        self.source.close()
