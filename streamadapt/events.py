"""Event schemas: what flows into and out of the service.

Every record that enters the service is validated against one of these pydantic models. A
record that fails validation becomes a :class:`DeadLetter` carrying the reason and the
record's source position; it never reaches a model and never stops the stream.

Timestamps are unix seconds (float). Identifiers are strings.

>>> s = LinkLoadSample(event_id="e1", link_id="A-B", timestamp=0.0, load=3.5)
>>> s.load
3.5
>>> decode_one(b'{"event_id": "e2", "link_id": "A-B", "timestamp": 1, "load": -1}',
...            task="forecast").reason.split(":")[0]
'validation error'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DeadLetter",
    "Event",
    "Impression",
    "Label",
    "LinkLoadSample",
    "NO_ID",
    "Position",
    "Prediction",
    "Task",
    "TASKS",
    "decode_many",
    "decode_one",
]

Task = Literal["forecast", "ctr"]
TASKS: tuple[str, ...] = ("forecast", "ctr")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
_ID = Annotated[str, Field(min_length=1, max_length=256)]
#: The ``user_id`` / ``item_id`` of an impression from a stream that has no users or items
#: (fraud, churn, alarms): the same constant on every event, so models see one shared token
#: rather than a per-event identity, and the report leaves such impressions out of gAUC.
NO_ID = "-"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class LinkLoadSample(_Event):
    """One load measurement of one network link.

    The label of the forecast made at this sample is the load of the link's next sample.
    """

    kind: Literal["link_load"] = "link_load"
    event_id: _ID
    link_id: _ID
    timestamp: FiniteFloat
    load: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    covariates: dict[str, FiniteFloat] = Field(default_factory=dict)


class Impression(_Event):
    """One recommendation shown to a user; ``label`` is the click (0/1) when known inline.

    A binary event stream without users or items sends :data:`NO_ID` as ``user_id`` and/or
    ``item_id``; both fields stay required, so a record that lost one is a dead letter.
    """

    kind: Literal["impression"] = "impression"
    event_id: _ID
    user_id: _ID
    item_id: _ID
    timestamp: FiniteFloat
    categorical: dict[str, str] = Field(default_factory=dict)
    numeric: dict[str, FiniteFloat] = Field(default_factory=dict)
    label: Literal[0, 1] | None = None


class Label(_Event):
    """A label that arrives after its event, joined to the prediction by ``event_id``."""

    kind: Literal["label"] = "label"
    event_id: _ID
    label: FiniteFloat
    timestamp: FiniteFloat
    #: The key of the impression (its ``user_id``). Over Kafka a label is produced with this
    #: key, so it lands on its impression's partition (see docs/kafka.md, keying contract).
    key: _ID | None = None


@dataclass(slots=False)
class Prediction:
    """What the service emits for each input event.

    A plain dataclass rather than a pydantic model: the pipeline builds one per event on the
    hot path and guarantees its numbers are finite (a model's non-finite output is replaced
    by a fallback, see :class:`~streamadapt.pipeline.Pipeline`). Serialise with
    :func:`encode` or ``orjson.dumps(p.__dict__)``.
    """

    event_id: str
    key: str
    timestamp: float
    base_prediction: float
    prediction: float
    model_version: str
    adaptations: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Prediction:
        """Read back a record written by :func:`encode` (consumers, tests)."""
        data = orjson.loads(raw)
        data["adaptations"] = tuple(data.get("adaptations", ()))
        return cls(**data)


Event = LinkLoadSample | Impression | Label


@dataclass(frozen=True, slots=True)
class Position:
    """Where a raw record came from: a topic/file, a partition, an offset or line number."""

    source: str = ""
    partition: int = 0
    offset: int = -1


@dataclass(slots=True)
class DeadLetter:
    """A record the service could not use, with why and where it came from."""

    payload: bytes
    reason: str
    position: Position = field(default_factory=Position)

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": self.payload.decode("utf-8", errors="replace"),
            "reason": self.reason,
            "source": self.position.source,
            "partition": self.position.partition,
            "offset": self.position.offset,
        }


_BY_KIND: dict[str, type[_Event]] = {
    "link_load": LinkLoadSample,
    "impression": Impression,
    "label": Label,
}
_ALLOWED: dict[str, tuple[str, ...]] = {
    "forecast": ("link_load",),
    "ctr": ("impression", "label"),
}
MAX_RECORD_BYTES = 1 << 20


def _infer_kind(data: dict[str, Any], task: str) -> str:
    kind = data.get("kind")
    if isinstance(kind, str):
        return kind
    if task == "forecast":
        return "link_load"
    return "impression" if "item_id" in data else "label"


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<record>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_one(
    raw: bytes | str | dict[str, Any],
    *,
    task: str,
    position: Position | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Event | DeadLetter:
    """Decode and validate one raw record (JSON bytes or an already-parsed mapping).

    Returns the event, or a :class:`DeadLetter` whose reason starts with one of
    ``"oversized"``, ``"malformed json"``, ``"not an object"``, ``"unknown kind"``,
    ``"wrong kind for task"`` or ``"validation error"``.
    """
    if task not in _ALLOWED:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    pos = position or Position()
    if isinstance(raw, dict):
        data: Any = raw
        payload = b""
    else:
        payload = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(payload) > max_bytes:
            return DeadLetter(
                payload[:1024], f"oversized: {len(payload)} bytes > limit {max_bytes}", pos
            )
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return DeadLetter(payload, f"malformed json: {exc}", pos)
    if not isinstance(data, dict):
        return DeadLetter(payload or orjson.dumps(data), "not an object: expected a JSON object",
                          pos)
    kind = _infer_kind(data, task)
    if kind not in _BY_KIND:
        return DeadLetter(
            payload or orjson.dumps(data, default=str),
            f"unknown kind {kind!r}; valid choices: {', '.join(_BY_KIND)}",
            pos,
        )
    if kind not in _ALLOWED[task]:
        return DeadLetter(
            payload or orjson.dumps(data, default=str),
            f"wrong kind for task: {kind!r} in a {task!r} stream; expected "
            f"{' or '.join(_ALLOWED[task])}",
            pos,
        )
    try:
        return _BY_KIND[kind].model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        return DeadLetter(
            payload or orjson.dumps(data, default=str), f"validation error: {_short(exc)}", pos
        )


def decode_many(
    values: Sequence[bytes],
    positions: Sequence[Position] | None = None,
    *,
    task: str,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[Event | DeadLetter]:
    """Decode and validate a batch of raw JSON records: the same result as
    :func:`decode_one` on each, record by record, at about half its cost.

    A record takes the fast path when it is ``bytes`` within ``max_bytes``, parses with
    orjson into an object and passes the compiled validator of its kind (pydantic-core's
    schema of the event model, called directly: the same checks as
    :meth:`~pydantic.BaseModel.model_validate`, so the event is identical, fields set
    included). Anything else (oversized, malformed, not an object, an unknown kind or one
    the task does not take, a failed check) goes through :func:`decode_one` itself, so its
    :class:`DeadLetter` carries exactly the reason ``decode_one`` gives.

    Parameters
    ----------
    values
        The raw records (JSON bytes).
    positions
        Each record's source position, for its dead letter; ``Position()`` when None.
    task
        ``"forecast"`` or ``"ctr"``: which kinds of events are valid.
    max_bytes
        Larger records are dead-lettered as oversized.

    Returns
    -------
    list
        One event or dead letter per record, in order.

    Examples
    --------
    >>> out = decode_many([b'{"event_id": "e1", "link_id": "A-B", "timestamp": 0, "load": 2}',
    ...                    b'{"event_id": "e2"'], task="forecast")
    >>> out[0].load, out[1].reason.split(":")[0]
    (2.0, 'malformed json')
    """
    if task not in _ALLOWED:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    if positions is not None and len(positions) != len(values):
        raise ValueError(f"decode_many got {len(values)} values but {len(positions)} "
                         "positions; give one position per value")
    validators = {k: _BY_KIND[k].__pydantic_validator__.validate_python for k in _ALLOWED[task]}
    forecast = task == "forecast"
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    out: list[Event | DeadLetter] = []
    append = out.append
    for i, value in enumerate(values):
        if type(value) is bytes and len(value) <= max_bytes:
            try:
                data = loads(value)
            except decode_error:
                data = None
            if type(data) is dict:
                kind = data.get("kind")
                if type(kind) is not str:  # as _infer_kind
                    kind = ("link_load" if forecast
                            else "impression" if "item_id" in data else "label")
                validate = validators.get(kind)
                if validate is not None:
                    try:
                        append(validate(data))
                        continue
                    except ValidationError:
                        pass
        pos = positions[i] if positions is not None else None
        append(decode_one(value, task=task, position=pos, max_bytes=max_bytes))
    return out


def encode(event: BaseModel | Prediction) -> bytes:
    """Serialise an event or a prediction record as compact JSON bytes."""
    if isinstance(event, Prediction):
        return orjson.dumps(event.__dict__)
    return orjson.dumps(event.model_dump(mode="json"))
