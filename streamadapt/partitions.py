"""Partition-owned state: one pipeline per input partition, restored and checkpointed as
partitions come and go.

Kafka gives every key (a link, a user) to one partition, so the state of the keys of a
partition (their model, their windows, their pending predictions) can live with the
partition. When a consumer group rebalances, the replica that loses a partition checkpoints
its state before letting go; the replica that gains it restores that checkpoint before
reading on. This is the changelog-free form of the partition-scoped state stores of Kafka
Streams (Kleppmann, *Designing Data-Intensive Applications*, ch. 11): the checkpoint store
is the shared medium.

>>> import tempfile
>>> from streamadapt.adapters.naive import LastValue
>>> from streamadapt.checkpoint import CheckpointStore
>>> from streamadapt.events import LinkLoadSample
>>> from streamadapt.pipeline import Pipeline
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> def factory():
...     return Pipeline("forecast", {"naive": LastValue()})
>>> a = PartitionStates(factory, store)
>>> a.assign([("t", 0)])
[]
>>> _ = a.get(("t", 0)).step([LinkLoadSample(event_id="1", link_id="x", timestamp=0, load=7)])
>>> a.advance(("t", 0), 1)
>>> a.revoke([("t", 0)])             # checkpoint, then hand back the offsets to commit
{('t', 0): 1}
>>> b = PartitionStates(factory, store)  # another replica
>>> b.assign([("t", 0)])                 # restores the partition's state
[('t', 0)]
>>> b.get(("t", 0)).windows.state_dict()["keys"]
['x']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from streamadapt.io import TopicPartition
from streamadapt.pipeline import Pipeline, Scores, StepResult

__all__ = ["PartitionStates", "PartitionStore", "merge_results"]

log = logging.getLogger("streamadapt.partitions")


class PartitionStore:
    """What :class:`PartitionStates` needs of a checkpoint store
    (:class:`~streamadapt.checkpoint.CheckpointStore` is one)."""

    def save_partition(self, tp: TopicPartition, state: dict[str, Any], offset: int) -> Any:
        raise NotImplementedError

    def restore_partition(self, tp: TopicPartition) -> tuple[dict[str, Any], int] | None:
        raise NotImplementedError


class PartitionStates:
    """The pipelines of the partitions this replica owns.

    Parameters
    ----------
    factory
        Builds a fresh pipeline (new models, seeded) for a partition with no checkpoint.
    store
        Where partition checkpoints go. None keeps state in memory only: a revoked
        partition's pipeline is parked and reused if the partition comes back to this
        member, but another member starts it afresh.
    """

    def __init__(
        self, factory: Callable[[], Pipeline], store: PartitionStore | Any | None = None
    ) -> None:
        self.factory = factory
        self.store = store
        self.pipelines: dict[TopicPartition, Pipeline] = {}
        #: Next offset to read per owned partition (Kafka's convention).
        self.offsets: dict[TopicPartition, int] = {}
        self._dirty: set[TopicPartition] = set()
        self._parked: dict[TopicPartition, Pipeline] = {}

    def __len__(self) -> int:
        return len(self.pipelines)

    @property
    def pending(self) -> int:
        """Predictions waiting for labels, over all owned partitions."""
        return sum(p.pending for p in self.pipelines.values())

    def get(self, tp: TopicPartition) -> Pipeline:
        """The pipeline of ``tp``, restored or created on first use."""
        pipe = self.pipelines.get(tp)
        if pipe is None:
            self._open(tp)
            pipe = self.pipelines[tp]
        return pipe

    def assign(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Take ownership of ``tps``; returns those whose state came from a checkpoint."""
        return [tp for tp in tps if tp not in self.pipelines and self._open(tp)]

    def advance(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``tp`` has been processed up to (excluding) ``offset``."""
        self.offsets[tp] = offset
        self._dirty.add(tp)

    def checkpoint(self, tps: Iterable[TopicPartition] | None = None) -> int:
        """Checkpoint the owned partitions that changed since their last checkpoint (all
        when ``tps`` is None); returns how many were written."""
        if self.store is None:
            return 0
        chosen = self._dirty if tps is None else self._dirty.intersection(tps)
        written = 0
        for tp in sorted(chosen):
            pipe = self.pipelines.get(tp)
            if pipe is None:
                continue
            self.store.save_partition(tp, pipe.state_dict(), self.offsets[tp])
            written += 1
        self._dirty -= set(chosen)
        return written

    def revoke(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Checkpoint and drop ``tps``; returns their offsets, to commit before letting go."""
        tps = [tp for tp in tps if tp in self.pipelines]
        self.checkpoint(tps)
        out = {tp: self.offsets[tp] for tp in tps if tp in self.offsets}
        for tp in tps:
            pipe = self.pipelines.pop(tp)
            if self.store is None:
                self._parked[tp] = pipe
            self.offsets.pop(tp, None)
            self._dirty.discard(tp)
        return out

    def _open(self, tp: TopicPartition) -> bool:
        if tp in self._parked:
            self.pipelines[tp] = self._parked.pop(tp)
            return True
        pipe = self.factory()
        restored = False
        found = self.store.restore_partition(tp) if self.store is not None else None
        if found is not None:
            t = time.perf_counter()
            state, offset = found
            pipe.load_state_dict(state)
            restored = True
            log.info("restored %s:%d at offset %d in %.3f s", tp[0], tp[1], offset,
                     time.perf_counter() - t)
        self.pipelines[tp] = pipe
        return restored


def merge_results(results: Sequence[StepResult]) -> StepResult:
    """One :class:`~streamadapt.pipeline.StepResult` holding several, in order.

    >>> merge_results([StepResult(expired=1), StepResult(expired=2)]).expired
    3
    """
    if len(results) == 1:
        return results[0]
    out = StepResult()
    parts: dict[str, list[Scores]] = {}
    for r in results:
        out.predictions.extend(r.predictions)
        out.dead_letters.extend(r.dead_letters)
        out.expired += r.expired
        for name, s in r.scores.items():
            parts.setdefault(name, []).append(s)
    for name, ss in parts.items():
        out.scores[name] = Scores(
            [x for s in ss for x in s.xs],
            np.concatenate([s.y_true for s in ss]),
            np.concatenate([s.y_pred for s in ss]),
            np.concatenate([s.timestamps for s in ss]),
            [k for s in ss for k in s.keys],
        )
    return out
