"""The shapes of the I/O edges, as protocols the core can name without importing a client.

Sources and sinks live in :mod:`connectors` (Kafka, files) or are built from the core's
generators; the service loop (:mod:`streamadapt.service`) only sees these protocols.

Offsets follow Kafka's convention: a committed offset is the *next* record to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from streamadapt.events import DeadLetter, Position, Prediction

__all__ = ["RawRecord", "Source", "Sink", "TopicPartition", "ListSink", "IterableSource"]

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class RawRecord:
    """One undecoded record and where it came from."""

    value: bytes
    position: Position
    key: bytes | None = None
    #: When the record was produced (unix seconds), if the source knows.
    timestamp: float | None = None


@runtime_checkable
class Source(Protocol):
    """A stream of raw records with committable positions."""

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to ``max_records`` records; an empty list when none came within the timeout."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record that everything before each offset is fully processed."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this source currently reads."""
        ...

    @property
    def finished(self) -> bool:
        """True when a finite source has delivered its last record."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Where predictions or dead letters go. ``flush`` returns once all are delivered."""

    def add(self, records: Sequence[Prediction] | Sequence[DeadLetter]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ListSink:
    """An in-memory sink that keeps everything it is given (tests, the embedded run)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.records: list[Prediction | DeadLetter] = []
        self.count = 0

    def add(self, records: Sequence[Prediction] | Sequence[DeadLetter]) -> None:
        self.count += len(records)
        if self.keep:
            self.records.extend(records)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class IterableSource:
    """A finite source over an iterable of encoded records (one partition, offsets from 0).

    ``on_assign`` is accepted for symmetry with partitioned sources and called once on the
    first poll.
    """

    def __init__(
        self,
        records: Iterable[bytes],
        name: str = "memory",
        on_assign: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        self.name = name
        self._it = iter(records)
        self._offset = 0
        self._finished = False
        self.committed: dict[TopicPartition, int] = {}
        self._on_assign = on_assign

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self._on_assign is not None:
            self._on_assign(self.assignment())
            self._on_assign = None
        out: list[RawRecord] = []
        for value in self._it:
            out.append(RawRecord(value, Position(self.name, 0, self._offset)))
            self._offset += 1
            if len(out) >= max_records:
                break
        else:
            self._finished = True
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {(self.name, 0)}

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        self._finished = True
