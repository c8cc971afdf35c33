"""Checkpoints: pipeline state saved together with the offsets it covers.

A checkpoint is one file holding a state dict (the safe format of :mod:`streamadapt.state`:
models, windows, detector and memory state, pending predictions) and the consumed offsets,
behind a SHA-256 checksum or, when the store has a key, an HMAC-SHA256 signature. Writes
are atomic (a temporary file, ``fsync``, then a rename), so a crash mid-write leaves the
previous checkpoint intact; the last ``keep`` files are kept, and a checkpoint that fails
its checksum, its signature or the state allow-list is reported and skipped in favour of
the one before it (or a fresh start).

State is stored per *slot*: ``"service"`` for a service that runs one pipeline over all its
input, or one slot per topic partition (``<topic>.<partition>``) when the service keeps
partition-owned state, so that a partition's state can move to another replica of the
consumer group on rebalance (the replicas share the checkpoint directory, e.g. a shared
volume). A checkpoint records the consumer-group generation of its writer; a write from an
older generation than the newest checkpoint of its slot is refused
(:class:`StaleCheckpoint`), so a member the group has fenced out cannot overwrite the
state of the member that took its partitions over.

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

Signed checkpoints and generation fencing:

>>> signed = CheckpointStore(tempfile.mkdtemp(), hmac_key=b"0123456789abcdef")
>>> _ = signed.save_partition(("events", 0), {"n": 1}, 5, generation=3)
>>> signed.restore_slot_full("events.0").generation
3
>>> signed.save_partition(("events", 0), {"n": 0}, 4, generation=2)
Traceback (most recent call last):
...
streamadapt.checkpoint.StaleCheckpoint: slot 'events.0': generation 2 is older than ...
>>> CheckpointStore(signed.dir).restore_partition(("events", 0)) is None  # no key: refused
True
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import SecretBytes, SecretStr

from streamadapt import metrics as m
from streamadapt import state as state_io
from streamadapt.io import TopicPartition

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CorruptCheckpoint",
    "SERVICE_SLOT",
    "StaleCheckpoint",
    "UntrustedCheckpoint",
    "decode_checkpoint",
    "encode_checkpoint",
    "slot_of",
]

log = logging.getLogger("streamadapt.checkpoint")

#: The slot of a service-wide checkpoint (one pipeline for all partitions).
SERVICE_SLOT = "service"
#: Header of a checkpoint behind a SHA-256 checksum (no key).
_MAGIC = b"STREAMADAPT-CKPT-1\n"
#: Header of a checkpoint signed with HMAC-SHA256; the signature covers header and body.
_SIGNED_MAGIC = b"STREAMADAPT-CKPT-HMAC-1\n"
_DIGEST = 32
_SLOT_OK = re.compile(r"[^A-Za-z0-9._-]")
_SLOT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_KEY_HINT = "hmac_key (STREAMADAPT_CHECKPOINT__HMAC_KEY)"


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed its checksum or could not be decoded."""


class UntrustedCheckpoint(CorruptCheckpoint):
    """A checkpoint refused on trust: unsigned while a key is configured, signed with
    another key (or altered), signed while no key is configured, or holding state that
    names something off the allow-list of :mod:`streamadapt.state`."""


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


def _check_key(key: bytes | None) -> bytes | None:
    if key is None:
        return None
    if not isinstance(key, bytes):
        raise TypeError(f"hmac_key must be bytes or None, got {type(key).__name__}")
    if not key:
        raise ValueError("hmac_key must not be empty; pass None for unsigned checkpoints")
    return key


def _sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _SIGNED_MAGIC + body, hashlib.sha256).digest()


def encode_checkpoint(
    state: Mapping[str, Any],
    offsets: Mapping[TopicPartition, int],
    *,
    generation: int = -1,
    hmac_key: bytes | None = None,
) -> bytes:
    """One checkpoint as bytes (what a store writes): header, digest, body.

    Without ``hmac_key`` the digest is a SHA-256 checksum of the body (it detects damage,
    not forgery); with one it is an HMAC-SHA256 signature of header and body, under a
    header of its own, which only a holder of the key can produce.

    >>> blob = encode_checkpoint({"n": 1}, {("t", 0): 3}, generation=7, hmac_key=b"k" * 16)
    >>> blob.startswith(_SIGNED_MAGIC), decode_checkpoint(blob, hmac_key=b"k" * 16).generation
    (True, 7)
    """
    key = _check_key(hmac_key)
    body = state_io.dumps({
        "state": dict(state),
        "offsets": [[str(t), int(p), int(o)] for (t, p), o in sorted(offsets.items())],
        "created": time.time(),
        "generation": int(generation),
    })
    if key is None:
        return _MAGIC + hashlib.sha256(body).digest() + body
    return _SIGNED_MAGIC + _sign(key, body) + body


def decode_checkpoint(blob: bytes, *, hmac_key: bytes | None = None) -> Checkpoint:
    """Read :func:`encode_checkpoint`'s bytes back.

    Raises :class:`UntrustedCheckpoint` when the blob is unsigned while ``hmac_key`` is
    given, signed with another key (or altered), signed while no key is given, or when its
    state holds a pickle that names anything off the allow-list of :mod:`streamadapt.state`
    (nothing of it runs); :class:`CorruptCheckpoint` when it is damaged or undecodable.

    >>> blob = encode_checkpoint({"n": 1}, {("t", 0): 3}, hmac_key=b"k" * 16)
    >>> decode_checkpoint(blob, hmac_key=b"x" * 16)
    Traceback (most recent call last):
    ...
    streamadapt.checkpoint.UntrustedCheckpoint: signature does not match the configured key ...
    >>> decode_checkpoint(encode_checkpoint({}, {}), hmac_key=b"k" * 16)
    Traceback (most recent call last):
    ...
    streamadapt.checkpoint.UntrustedCheckpoint: unsigned checkpoint refused: a key is ...
    """
    state, offsets, data = _decode_body(_verified_body(bytes(blob), _check_key(hmac_key)))
    return Checkpoint(state, offsets, int(data.get("generation", -1)),
                      float(data.get("created", 0.0)))


def _encode(state: Mapping[str, Any], offsets: Mapping[TopicPartition, int]) -> bytes:
    return encode_checkpoint(state, offsets)


def _decode(blob: bytes) -> tuple[dict[str, Any], dict[TopicPartition, int]]:
    found = decode_checkpoint(blob)
    return found.state, found.offsets


def _verified_body(blob: bytes, key: bytes | None) -> bytes:
    """The body of a checkpoint whose header, digest and key rules hold."""
    if blob.startswith(_SIGNED_MAGIC):
        if key is None:
            raise UntrustedCheckpoint(
                f"signed checkpoint refused: a key is needed to verify it and none is "
                f"configured; set the key it was signed with as {_KEY_HINT}")
        if len(blob) < len(_SIGNED_MAGIC) + _DIGEST:
            raise CorruptCheckpoint("truncated signed checkpoint")
        sig = blob[len(_SIGNED_MAGIC): len(_SIGNED_MAGIC) + _DIGEST]
        body = blob[len(_SIGNED_MAGIC) + _DIGEST:]
        if not hmac.compare_digest(sig, _sign(key, body)):
            raise UntrustedCheckpoint(
                "signature does not match the configured key (signed with another key, or "
                "altered after signing)")
        return body
    if blob.startswith(_MAGIC) and len(blob) >= len(_MAGIC) + _DIGEST:
        if key is not None:
            raise UntrustedCheckpoint(
                "unsigned checkpoint refused: a key is configured, so every checkpoint must "
                "be signed with it")
        digest = blob[len(_MAGIC): len(_MAGIC) + _DIGEST]
        body = blob[len(_MAGIC) + _DIGEST:]
        if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
            raise CorruptCheckpoint("checksum mismatch")
        return body
    raise CorruptCheckpoint("not a streamadapt checkpoint (bad header or truncated)")


def _decode_body(body: bytes) -> tuple[dict[str, Any], dict[TopicPartition, int], dict]:
    try:
        data = state_io.loads(body)
    except Exception as exc:  # any decoding failure means a bad file
        raise CorruptCheckpoint(f"undecodable: {type(exc).__name__}: {exc}") from None
    try:
        state = data["state"]
        if not isinstance(state, dict):
            raise TypeError(f"state is a {type(state).__name__}, not a dict")
        offsets = {(str(t), int(p)): int(o) for t, p, o in data["offsets"]}
    except Exception as exc:  # a body of the wrong shape
        raise CorruptCheckpoint(f"malformed: {type(exc).__name__}: {exc}") from None
    try:
        state_io.check_state(state)
    except state_io.UnsafeStateError as exc:
        raise UntrustedCheckpoint(f"state refused: {exc}") from None
    except pickle.UnpicklingError as exc:
        raise CorruptCheckpoint(f"state does not load: {exc}") from None
    return state, offsets, data


def _key_bytes(key: bytes | str | SecretStr | SecretBytes | None) -> bytes | None:
    if isinstance(key, SecretStr | SecretBytes):
        key = key.get_secret_value()
    if isinstance(key, str):
        key = key.encode()
    return _check_key(key)


class CheckpointStore:
    """Keeps the last ``keep`` checkpoints per slot under ``dir``.

    Parameters
    ----------
    dir
        Directory of the store; created when missing. Replicas of one consumer group that
        should hand partition state to each other share it.
    keep
        How many checkpoints to keep per slot (at least 1); older ones are deleted.
    hmac_key
        Signs every checkpoint written with HMAC-SHA256, and makes every checkpoint read
        prove it was signed with this key: unsigned ones and ones signed with another key
        are refused. None (the default): checkpoints carry a SHA-256 checksum, and signed
        ones are refused, since they cannot be verified. A ``str`` or a pydantic secret is
        taken as its UTF-8 bytes. Replicas that share a directory need the same key.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        keep: int = 3,
        hmac_key: bytes | str | SecretStr | SecretBytes | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.dir = dir
        self.keep = keep
        self._key = _key_bytes(hmac_key)
        self._root = Path(dir)
        self._root.mkdir(parents=True, exist_ok=True)
        #: Files refused or found corrupt by the last restore (newest first), for reports
        #: and tests.
        self.corrupt: list[Path] = []
        # (path, mtime, size) -> the file's generation, or None for a file that is not valid
        self._generations: dict[tuple[Path, int, int], int | None] = {}

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.dir)!r}, keep={self.keep}, signed={self.signed})"

    @property
    def signed(self) -> bool:
        """Whether checkpoints are signed (and must be) with a key."""
        return self._key is not None

    # -- the service-wide checkpointer protocol --------------------------------------------
    def save(self, state: Mapping[str, Any], offsets: Mapping[TopicPartition, int],
             generation: int = -1) -> Path:
        """Save one service-wide checkpoint; returns its path."""
        return self.save_slot(SERVICE_SLOT, state, offsets, generation=generation)

    def restore(self) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest valid service-wide checkpoint, or None."""
        return self.restore_slot(SERVICE_SLOT)

    # -- per partition ----------------------------------------------------------------------
    def save_partition(self, tp: TopicPartition, state: Mapping[str, Any], offset: int,
                       generation: int = -1) -> Path:
        """Save the state owned by partition ``tp`` with its next offset to read."""
        return self.save_slot(slot_of(tp), state, {tp: offset}, generation=generation)

    def restore_partition(self, tp: TopicPartition) -> tuple[dict[str, Any], int] | None:
        """The newest valid checkpoint of partition ``tp``: (state, next offset), or None."""
        found = self.restore_slot(slot_of(tp))
        if found is None:
            return None
        state, offsets = found
        return state, offsets.get(tp, -1)

    # -- slots ------------------------------------------------------------------------------
    def files(self, slot: str = SERVICE_SLOT) -> list[Path]:
        """The checkpoint files of ``slot`` (``<sequence number>.ckpt``), oldest first."""
        d = self._slot_dir(slot)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix == ".ckpt" and p.stem.isdigit())

    def slots(self) -> list[str]:
        """Every slot that holds at least one checkpoint."""
        return sorted(p.name for p in self._root.iterdir()
                      if p.is_dir() and _SLOT_NAME.fullmatch(p.name) and self.files(p.name))

    def save_slot(
        self, slot: str, state: Mapping[str, Any], offsets: Mapping[TopicPartition, int],
        generation: int = -1,
    ) -> Path:
        """Atomically write a checkpoint into ``slot`` and prune old ones.

        ``generation`` is the writer's consumer-group generation (-1: unknown). When it is
        0 or more and lower than the generation of the newest valid checkpoint of the slot
        (the newest that records one: a checkpoint of unknown generation claims nothing),
        nothing is written and :class:`StaleCheckpoint` is raised.
        """
        gen = int(generation)
        d = self._slot_dir(slot)
        if gen >= 0:
            newest = self._newest_generation(slot)
            if newest is not None and newest[1] > gen:
                raise StaleCheckpoint(
                    f"slot {slot!r}: generation {gen} is older than generation {newest[1]} "
                    f"of {newest[0].name}; a newer member of the group owns this state, "
                    "nothing written")
        d.mkdir(parents=True, exist_ok=True)
        existing = self.files(slot)
        seq = int(existing[-1].stem) + 1 if existing else 1
        blob = encode_checkpoint(state, offsets, generation=gen, hmac_key=self._key)
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
        self._remember(final, gen)
        for old in self.files(slot)[: -self.keep]:
            old.unlink(missing_ok=True)
        live = set(self.files(slot))
        for k in [k for k in self._generations if k[0].parent == d and k[0] not in live]:
            del self._generations[k]
        return final

    def restore_slot(self, slot: str) -> tuple[dict[str, Any], dict[TopicPartition, int]] | None:
        """The newest valid checkpoint of ``slot`` as ``(state, offsets)``, or None."""
        found = self.restore_slot_full(slot)
        return None if found is None else (found.state, found.offsets)

    def restore_slot_full(self, slot: str) -> Checkpoint | None:
        """The newest valid checkpoint of ``slot`` (with its generation and time), or None.

        A checkpoint that is refused (signature, key, state allow-list) or damaged is
        logged, counted in ``streamadapt_checkpoints_total{outcome="refused"|"corrupt"}``,
        listed in :attr:`corrupt` and skipped for the one before it; when none is left the
        result is None, a fresh start.
        """
        self.corrupt = []
        for path in reversed(self.files(slot)):
            try:
                found = decode_checkpoint(path.read_bytes(), hmac_key=self._key)
            except UntrustedCheckpoint as exc:
                log.error("checkpoint %s refused: %s; trying the previous one", path, exc)
                m.CHECKPOINTS.labels(outcome="refused").inc()
            except (CorruptCheckpoint, OSError) as exc:
                log.warning("checkpoint %s is unusable (%s); trying the previous one", path,
                            exc)
                m.CHECKPOINTS.labels(outcome="corrupt").inc()
            else:
                self._remember(path, found.generation)
                return found
            self.corrupt.append(path)
            self._remember(path, None)
        if self.corrupt:
            log.error("slot %s has no usable checkpoint (%d refused or damaged): starting "
                      "fresh", slot, len(self.corrupt))
        return None

    # -- internals --------------------------------------------------------------------------
    def _slot_dir(self, slot: str) -> Path:
        if not isinstance(slot, str) or not _SLOT_NAME.fullmatch(slot):
            raise ValueError(f"bad slot name {slot!r}: use letters, digits, '.', '_' and '-', "
                             "not starting with '.' (slot_of() makes one from a partition)")
        return self._root / slot

    def _cache_key(self, path: Path) -> tuple[Path, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return path, st.st_mtime_ns, st.st_size

    def _remember(self, path: Path, generation: int | None) -> None:
        key = self._cache_key(path)
        if key is not None:
            self._generations[key] = generation

    def _newest_generation(self, slot: str) -> tuple[Path, int] | None:
        """The newest valid checkpoint of ``slot`` that records a generation (0 or more),
        and that generation; only files this store has not written or read before are
        decoded."""
        for path in reversed(self.files(slot)):
            key = self._cache_key(path)
            if key is None:
                continue
            if key not in self._generations:
                try:
                    gen: int | None = decode_checkpoint(path.read_bytes(),
                                                        hmac_key=self._key).generation
                except (CorruptCheckpoint, OSError):
                    gen = None
                self._generations[key] = gen
            gen = self._generations[key]
            if gen is not None and gen >= 0:
                return path, gen
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
