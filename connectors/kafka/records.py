"""Kafka record layout of the service's outputs, shared by both clients.

* A prediction record: the JSON of :class:`~streamadapt.events.Prediction`, keyed by its
  link or user (``Prediction.key``), so all predictions of a key land on one partition.
* A dead-letter record: the original payload unchanged, with headers ``reason``,
  ``source_topic``, ``source_partition`` and ``source_offset`` (the offset as decimal text).

>>> from streamadapt.events import DeadLetter, Position
>>> d = DeadLetter(b"{", "malformed json", Position("t", 2, 9))
>>> value, key, headers = dead_letter_record(d)
>>> value, key, dict(headers)["source_offset"]
(b'{', None, b'9')
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from streamadapt.events import DeadLetter, Prediction

__all__ = ["Record", "prediction_record", "dead_letter_record", "to_records", "DEAD_LETTER_HEADERS"]

Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
#: Header names of a dead-letter record.
DEAD_LETTER_HEADERS = ("reason", "source_topic", "source_partition", "source_offset")


def prediction_record(p: Prediction) -> Record:
    """(value, key, headers) of a prediction."""
    return orjson.dumps(p.__dict__), p.key.encode(), []


def dead_letter_record(d: DeadLetter) -> Record:
    """(value, key, headers) of a dead letter."""
    pos = d.position
    headers = [
        ("reason", d.reason.encode()),
        ("source_topic", pos.source.encode()),
        ("source_partition", str(pos.partition).encode()),
        ("source_offset", str(pos.offset).encode()),
    ]
    return d.payload, None, headers


def to_records(items: Sequence[Prediction] | Sequence[DeadLetter]) -> list[Record]:
    """Records of a batch of predictions or dead letters, in one pass: the same records as
    :func:`prediction_record` and :func:`dead_letter_record` give one by one.

    >>> p = Prediction("e", "A-B", 0.5, 1.0, 2.0, "m:1")
    >>> to_records([p]) == [prediction_record(p)]
    True
    """
    dumps = orjson.dumps
    return [(dumps(x.__dict__), x.key.encode(), []) if type(x) is Prediction
            else dead_letter_record(x) if isinstance(x, DeadLetter) else prediction_record(x)
            for x in items]
