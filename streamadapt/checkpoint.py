"""Checkpoints: pipeline state saved together with the offsets it covers.

A checkpoint is one file holding a state dict (the safe format of :mod:`streamadapt.state`:
models, windows, detector and memory state, pending predictions) and the consumed offsets,
behind a SHA-256 checksum. Writes are atomic (a temporary file, ``fsync``, then a rename),
so a crash mid-write leaves the previous checkpoint intact; the last ``keep`` files are
kept, and a checkpoint that fails its checksum or does not load is reported and skipped in
favour of the one before it.

State is stored per *slot*: ``"service"`` for a service that runs one pipeline over all its
input, or one slot per topic partition (``<topic>.<partition>``) when the service keeps
partition-owned state, so that a partition's state can move to another replica of the
consumer group on rebalance (the replicas share the checkpoint directory, e.g. a shared
volume).

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
>>> for n in range(3):
...     _ = store.save({"n": n}, {("events", 0): 10 * n})
>>> state, offsets = store.restore()
>>> state["n"], offsets
(2, {('events', 0): 20})
>>> len(store.files())
2
>>> _ = store.files()[-1].write_bytes(b"torn")   # the newest file is damaged
>>> store.restore()[0]["n"]                       # the previous one is used
1
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from streamadapt import state as state_io
from streamadapt.io import TopicPartition

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CorruptCheckpoint",
    "SERVICE_SLOT",
    "StaleCheckpoint",
    "decode_checkpoint",
    "encode_checkpoint",
    "slot_of",
]

log = logging.getLogger("streamadapt.checkpoint")

#: The slot of a service-wide checkpoint (one pipeline for all partitions).
SERVICE_SLOT = "service"
_MAGIC = b"STREAMADAPT-CKPT-1\n"
_DIGEST = 32
_SLOT_OK = re.compile(r"[^A-Za-z0-9._-]")


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed its checksum or could not be decoded."""


class StaleCheckpoint(RuntimeError):
    """A checkpoint write from an older consumer-group generation than one already stored
    for the same slot (a fenced member): refused."""


class Checkpoint(NamedTuple):
    """One decoded checkpoint."""

    state: dict[str, Any]
    offsets: dict[TopicPartition, int]
    #: The consumer-group generation that wrote it (-1: unknown or no group).
    generation: int
    #: Wall-clock time of the write.
    created: float


def slot_of(tp: TopicPartition) -> str:
    """The slot name of a topic partition (a file-system safe ``<topic>.<partition>``).

    >>> slot_of(("link-load/v1", 3))
    'link-load_v1.3'
    """
    topic, partition = tp
    return f"{_SLOT_OK.sub('_', topic)}.{int(partition)}"


def encode_checkpoint(
    state: Mapping[str, Any],
    offsets: Mapping[TopicPartition, int],
    *,
    generation: int = -1,
    hmac_key: bytes | None = None,
) -> bytes:
    """One checkpoint as bytes (what a store writes): header, digest, body."""
    if hmac_key is not None:
        raise NotImplementedError("signed checkpoints")
    body = state_io.dumps({
        "state": dict(state),
        "offsets": [[str(t), int(p), int(o)] for (t, p), o in sorted(offsets.items())],
        "created": time.time(),
        "generation": int(generation),
    })
    return _MAGIC + hashlib.sha256(body).digest() + body


def decode_checkpoint(blob: bytes, *, hmac_key: bytes | None = None) -> Checkpoint:
    """Read :func:`encode_checkpoint`'s bytes back; raises :class:`CorruptCheckpoint`."""
    state, offsets, data = _decode_body(blob)
    return Checkpoint(state, offsets, int(data.get("generation", -1)),
                      float(data.get("created", 0.0)))


def _encode(state: Mapping[str, Any], offsets: Mapping[TopicPartition, int]) -> bytes:
    return encode_checkpoint(state, offsets)


def _decode(blob: bytes) -> tuple[dict[str, Any], dict[TopicPartition, int]]:
    state, offsets, _ = _decode_body(blob)
    return state, offsets


def _decode_body(blob: bytes) -> tuple[dict[str, Any], dict[TopicPartition, int], dict]:
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _DIGEST:
        raise CorruptCheckpoint("not a streamadapt checkpoint (bad header or truncated)")
    digest = blob[len(_MAGIC): len(_MAGIC) + _DIGEST]
    body = blob[len(_MAGIC) + _DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch")
    try:
        data = state_io.loads(body)
    except Exception as exc:  # any decoding failure means a bad file
        raise CorruptCheckpoint(f"undecodable: {type(exc).__name__}: {exc}") from None
    offsets = {(str(t), int(p)): int(o) for t, p, o in data["offsets"]}
    return data["state"], offsets, data


class CheckpointStore:
    """Keeps the last ``keep`` checkpoints per slot under ``dir``.

    Parameters
    ----------
    dir
        Directory of the store; created when missing. Replicas of one consumer group that
        should hand partition state to each other share it.
    keep
        How many checkpoints to keep per slot (at least 1); older ones are deleted.
    """

    def __init__(self, dir: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.dir = dir
        self.keep = keep
        self._root = Path(dir)
        self._root.mkdir(parents=True, exist_ok=True)
        #: Files found corrupt by the last restore (newest first), for reports and tests.
        self.corrupt: list[Path] = []

    # -- the service-wide checkpointer protocol --------------------------------------------
    def save(self, state: Mapping[str, Any], offsets: Mapping[TopicPartition, int]) -> Path:
        """Save one service-wide checkpoint; returns its path."""
        return self.save_slot(SERVICE_SLOT, state, offsets)

    def restore(self) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest valid service-wide checkpoint, or None."""
        return self.restore_slot(SERVICE_SLOT)

    # -- per partition ----------------------------------------------------------------------
    def save_partition(self, tp: TopicPartition, state: Mapping[str, Any], offset: int) -> Path:
        """Save the state owned by partition ``tp`` with its next offset to read."""
        return self.save_slot(slot_of(tp), state, {tp: offset})

    def restore_partition(self, tp: TopicPartition) -> tuple[dict[str, Any], int] | None:
        """The newest valid checkpoint of partition ``tp``: (state, next offset), or None."""
        found = self.restore_slot(slot_of(tp))
        if found is None:
            return None
        state, offsets = found
        return state, offsets.get(tp, -1)

    # -- slots ------------------------------------------------------------------------------
    def files(self, slot: str = SERVICE_SLOT) -> list[Path]:
        """The checkpoint files of ``slot``, oldest first."""
        d = self._root / slot
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix == ".ckpt")

    def slots(self) -> list[str]:
        """Every slot that holds at least one checkpoint."""
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and self.files(p.name))

    def save_slot(
        self, slot: str, state: Mapping[str, Any], offsets: Mapping[TopicPartition, int]
    ) -> Path:
        """Atomically write a checkpoint into ``slot`` and prune old ones."""
        d = self._root / slot
        d.mkdir(parents=True, exist_ok=True)
        existing = self.files(slot)
        seq = int(existing[-1].stem) + 1 if existing else 1
        blob = _encode(state, offsets)
        final = d / f"{seq:012d}.ckpt"
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(d)
        for old in self.files(slot)[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def restore_slot(self, slot: str) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest checkpoint of ``slot`` that passes its checksum, or None."""
        self.corrupt = []
        for path in reversed(self.files(slot)):
            try:
                return _decode(path.read_bytes())
            except (CorruptCheckpoint, OSError) as exc:
                log.warning("checkpoint %s is unusable (%s); trying the previous one", path, exc)
                self.corrupt.append(path)
        return None


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
