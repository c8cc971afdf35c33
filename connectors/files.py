"""File replay: CSV, JSONL or Parquet rows turned into events through a column mapping.

The format comes from the extension (``.csv``, ``.jsonl``/``.ndjson``/``.json``,
``.parquet``/``.pq``; a trailing ``.gz`` is read through gzip for the text formats) or is
named explicitly. Rows are read in chunks and turned into events one at a time, so a large
file is never held in memory.

Mapping (:class:`ColumnMap`):

* forecast: ``target`` -> ``load``, ``key`` -> ``link_id`` (the file's stem when no key
  column is given), ``time`` -> ``timestamp``, each ``numeric`` column -> a covariate.
* ctr: ``target`` -> ``label`` (0/1, also ``1.0``, ``true``/``false``, ``yes``/``no``; an
  empty value means no inline label), ``key`` -> ``user_id``, ``item`` -> ``item_id``,
  ``categorical`` and ``numeric`` columns -> the impression's fields. ``key`` and ``item``
  are optional, for binary event streams that have no users or items (fraud, churn,
  alarms): without the column every impression gets :data:`~streamadapt.events.NO_ID`
  (``"-"``), one constant, so models learn from the categorical and numeric fields and
  never from a per-row identity. With the column, an empty value is a bad row.

``time`` values may be numbers (unix seconds), numeric strings, ISO 8601 datetimes (a
datetime without a zone is taken as UTC) or Parquet timestamps; with no ``time`` column the
row number is the timestamp. The event id is the ``id`` column's value or
``<file stem>-<row>``. Rows are numbered from 1 (the CSV header is not a row); the row
number is the dead letter's position offset.

A row that cannot become a valid event becomes a :class:`~streamadapt.events.DeadLetter`
with the reason; it never stops the replay. A mapped column that the file lacks fails at
start, naming it and listing the file's columns.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "loads.csv")
>>> _ = open(path, "w").write("t,link,mbps\\n0,a,1.5\\n60,a,oops\\n120,a,2.5\\n")
>>> cols = ColumnMap("forecast", target="mbps", time="t", key="link")
>>> out = list(file_stream(path, cols).events)
>>> [type(e).__name__ for e in out], out[1].position.offset
(['LinkLoadSample', 'DeadLetter', 'LinkLoadSample'], 2)
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from streamadapt.datasets import Stream
from streamadapt.events import NO_ID, TASKS, DeadLetter, Event, Position, decode_one

__all__ = ["ColumnMap", "FORMATS", "detect_format", "file_columns", "read_events",
           "file_stream"]

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


@dataclass(frozen=True)
class ColumnMap:
    """Which file column feeds which event field (see the module docstring)."""

    task: str
    target: str
    time: str | None = None
    key: str | None = None
    item: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    id: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid choices: {', '.join(TASKS)}")
        if self.task == "forecast" and (self.item or self.categorical):
            raise ValueError("--item and --categorical are ctr columns; a forecast file maps "
                             "--target, --time, --key, --numeric and --id")

    def columns(self) -> dict[str, str]:
        """Flag -> column name of every mapped column."""
        out = {"--target": self.target}
        for flag, col in (("--time", self.time), ("--key", self.key), ("--item", self.item),
                          ("--id", self.id)):
            if col:
                out[flag] = col
        for flag, cols in (("--categorical", self.categorical), ("--numeric", self.numeric)):
            for c in cols:
                out[f"{flag} {c}"] = c
        return out


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """The file's format: ``fmt`` if given, else from the extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its extension "
                         f"{ext!r}; pass --format, one of: {', '.join(FORMATS)}")
    return _EXTENSIONS[ext]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115


def file_columns(path: str | Path, fmt: str | None = None) -> list[str]:
    """The column names of a file (for JSONL: the keys of its first JSON object line)."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with _open_text(path) as fh:
        if fmt == "csv":
            return next(csv.reader(fh), [])
        for line in fh:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return list(obj)
    return []


def _rows(path: Path, fmt: str, chunk_size: int) -> Iterator[tuple[int, Any]]:
    """``(row number, row)``; a row is a dict, or the raw bytes of a line that is not one."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    with _open_text(path) as fh:
        if fmt == "csv":
            for n, row in enumerate(csv.DictReader(fh), start=1):
                yield n, row
            return
        n = 0
        for line in fh:
            if not line.strip():
                continue
            n += 1
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield n, line.encode()
                continue
            yield n, obj if isinstance(obj, dict) else line.encode()


def _timestamp(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return _timestamp(parsed)
    raise ValueError(f"{value!r} is neither unix seconds nor an ISO 8601 datetime")


def _label(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    try:
        number = float(text)
    except ValueError:
        return value  # left for validation to reject, naming the value
    return int(number) if number in (0.0, 1.0) else value


def _text(value: Any) -> Any:
    return value if value is None else str(value)


def _record(row: dict[str, Any], n: int, cols: ColumnMap, stem: str) -> dict[str, Any]:
    event_id = _text(row.get(cols.id)) if cols.id else f"{stem}-{n}"
    ts = _timestamp(row.get(cols.time)) if cols.time else float(n)
    numeric = {c: row.get(c) for c in cols.numeric}
    if cols.task == "forecast":
        return {"kind": "link_load", "event_id": event_id,
                "link_id": _text(row.get(cols.key)) if cols.key else stem,
                "timestamp": ts, "load": row.get(cols.target), "covariates": numeric}
    return {"kind": "impression", "event_id": event_id,
            "user_id": _text(row.get(cols.key)) if cols.key else NO_ID,
            "item_id": _text(row.get(cols.item)) if cols.item else NO_ID, "timestamp": ts,
            "categorical": {c: "" if row.get(c) is None else str(row.get(c))
                            for c in cols.categorical},
            "numeric": numeric, "label": _label(row.get(cols.target))}


def _check_columns(path: Path, fmt: str, cols: ColumnMap) -> None:
    have = file_columns(path, fmt)
    present = set(have)
    for flag, col in cols.columns().items():
        if col not in present:
            raise ValueError(f"column {col!r} ({flag.split()[0]}) is not in {str(path)!r}; "
                             f"its columns: {', '.join(have) or '(none)'}")


def read_events(
    path: str | Path, cols: ColumnMap, fmt: str | None = None, chunk_size: int = 8192
) -> Iterator[Event | DeadLetter]:
    """Validated events, or dead letters for rows that fail, in file order.

    The columns are checked before anything is yielded: a missing one raises
    ``ValueError`` when this function is called, not on first iteration.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    _check_columns(path, fmt, cols)
    stem = path.name.split(".")[0] or "file"
    return _events(path, fmt, cols, stem, chunk_size)


def _events(path: Path, fmt: str, cols: ColumnMap, stem: str,
            chunk_size: int) -> Iterator[Event | DeadLetter]:
    source = str(path)
    for n, row in _rows(path, fmt, chunk_size):
        pos = Position(source, 0, n)
        if not isinstance(row, dict):
            yield DeadLetter(row, "malformed json: not a JSON object line", pos)
            continue
        try:
            record = _record(row, n, cols, stem)
        except ValueError as exc:
            yield DeadLetter(_payload(row), f"bad timestamp: column {cols.time!r}: {exc}", pos)
            continue
        out = decode_one(record, task=cols.task, position=pos)
        if isinstance(out, DeadLetter):
            out.payload = _payload(row)  # the row as read, not the record built from it
        yield out


def _payload(row: dict[Any, Any]) -> bytes:
    return orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)


def file_stream(
    path: str | Path, cols: ColumnMap, fmt: str | None = None, chunk_size: int = 8192
) -> Stream:
    """A :class:`~streamadapt.datasets.Stream` replaying a file (see :func:`read_events`)."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    events = read_events(path, cols, fmt, chunk_size)
    n = None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        n = pq.ParquetFile(path).metadata.num_rows
    return Stream(name=path.name, task=cols.task, events=events, n_events=n,
                  info={"source": str(path), "format": fmt,
                        "columns": asdict(cols)})
