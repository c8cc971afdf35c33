"""Replica state: one set of weights per replica, the state of each key with its partition.

Kafka gives every key (a link, a user) to one partition, and a consumer group gives every
partition to one replica. A replica runs **one** pipeline for all the partitions it owns,
so its models learn from all of them (one model per partition would train each on a
fraction of the stream). What belongs to a key (its window, its hidden state, its pending
predictions and waiting labels) is saved per partition *number* and moves with it: the
partitions with one number across co-partitioned input topics (impressions and their
labels) form one unit, like a Kafka Streams task.

Checkpoints (at most one per interval, and on revocation) write

* ``partition.<p>``: the key state of partition number ``p`` and the next offset of each of
  its input partitions;
* ``weights.<replica>``: the replica's pipeline without key state (model weights, detector
  and monitor state, error memories) with the offsets of every owned partition.

A replica starts from its own latest weights, else from the newest weights any replica of
the group wrote, never from scratch when there are some. On assignment it loads each
partition's key state and the service seeks the partition back to the checkpoint's offset
and replays up to the committed offset (learning again what the state has not learned,
without emitting again; see :class:`~streamadapt.service.Service`).

Across replicas, weights are kept together through the store at each checkpoint
(``weight_sync``; each replica keeps its own optimizer state and error memory):

* ``"average"`` (the default): each shared parameter becomes the mean over the replicas
  (federated averaging).
* ``"deltas"``: a replica publishes the sum of its own updates since it started (its
  *local delta*: what it learned, without what it took from others) and adds to its
  weights each other replica's local delta that it has not added yet, as if one model had
  taken all the steps. A replica's first interval of learning stays local.
* ``"off"``: each replica learns alone.

Measured on MovieLens with 2 replicas (``benchmarks/kafka_scale.py``, docs/kafka.md), the
mean was closer to one model than the summed updates, at every sync interval tried (the
summed steps of two Adam optimizers overshoot on the parameters both update), so it is the
default.
Other replicas' weights older than ``sync_max_age_s`` are left out (a replica that is
gone). Both methods need no leader election and no extra topic, and a replica alone
simply learns locally.

>>> import tempfile
>>> from streamadapt.adapters.naive import LastValue
>>> from streamadapt.checkpoint import CheckpointStore
>>> from streamadapt.events import LinkLoadSample
>>> from streamadapt.pipeline import Pipeline
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> a = ReplicaState(Pipeline("forecast", {"naive": LastValue()}), store, replica_id="a")
>>> a.start(), a.assign([("t", 0)])
(None, {})
>>> _ = a.pipeline.step([LinkLoadSample(event_id="1", link_id="x", timestamp=0, load=7)])
>>> a.observe(("t", 0), ["x"], 1)
>>> a.checkpoint()                   # partition 0's keys, and a's weights
1
>>> a.revoke([("t", 0)])             # checkpoint, then hand back the offsets to commit
{('t', 0): 1}
>>> sorted(a.pipeline.keys())        # the key left with its partition
[]
>>> b = ReplicaState(Pipeline("forecast", {"naive": LastValue()}), store, replica_id="b")
>>> b.start()                        # starts from the group's latest weights
'weights.a'
>>> b.assign([("t", 0)])             # restores the partition's keys: seek to offset 1
{('t', 0): 1}
>>> sorted(b.pipeline.keys())
['x']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from streamadapt.checkpoint import StaleCheckpoint
from streamadapt.io import TopicPartition
from streamadapt.pipeline import Pipeline

__all__ = ["WEIGHT_SYNC", "ReplicaState", "partition_slot", "weights_slot"]

log = logging.getLogger("streamadapt.partitions")

WEIGHTS_PREFIX = "weights."
#: How the replicas' weights follow each other (see the module docstring).
WEIGHT_SYNC = ("deltas", "average", "off")


def partition_slot(partition: int) -> str:
    """The checkpoint slot of partition number ``partition``'s key state.

    >>> partition_slot(3)
    'partition.3'
    """
    return f"partition.{int(partition)}"


def weights_slot(replica_id: str) -> str:
    """The checkpoint slot of a replica's weights.

    >>> weights_slot("pod-1")
    'weights.pod-1'
    """
    return WEIGHTS_PREFIX + replica_id


class ReplicaState:
    """The pipeline of one replica and the partitions it owns.

    Parameters
    ----------
    pipeline
        The replica's pipeline: its weights learn from every owned partition.
    store
        Where checkpoints go (:class:`~streamadapt.checkpoint.CheckpointStore` or the
        Kafka state store); None keeps state in memory only: a revoked partition's key
        state is parked and taken back if the partition comes back to this member, but
        another member starts it afresh.
    replica_id
        This replica's name in the store (the pod name); stable across restarts when it
        can be, so that a restarted replica finds its own weights first.
    weight_sync
        ``"deltas"``, ``"average"`` or ``"off"``: how the shared weights follow the other
        replicas' at each checkpoint (see the module docstring).
    sync_max_age_s
        Other replicas' weights older than this are left out (a replica that is gone).
    generation
        Returns the consumer group's current generation (-1: unknown), written into each
        checkpoint so that a fenced member's late write is refused.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        store: Any | None = None,
        replica_id: str = "replica",
        weight_sync: str = "average",
        sync_max_age_s: float = 300.0,
        generation: Callable[[], int] | None = None,
    ) -> None:
        if weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"unknown weight_sync {weight_sync!r}; valid choices: "
                             f"{', '.join(WEIGHT_SYNC)}")
        self.pipeline = pipeline
        self.store = store
        self.replica_id = replica_id
        self.weight_sync = weight_sync
        self.sync_max_age_s = sync_max_age_s
        self.generation = generation or (lambda: -1)
        #: Input partitions owned now.
        self.owned: set[TopicPartition] = set()
        #: Next offset to read per owned partition (Kafka's convention).
        self.offsets: dict[TopicPartition, int] = {}
        #: Which partition number each key's state belongs to.
        self.key_part: dict[str, int] = {}
        #: Replicas synchronised with at the last checkpoint.
        self.peers: list[str] = []
        # deltas: the weights after the last sync, this replica's summed local updates,
        # and each peer's summed updates already added here
        self._since: dict[str, torch.Tensor] = {}
        self._cum: dict[str, torch.Tensor] = {}
        self._applied: dict[str, dict[str, torch.Tensor]] = {}
        self._loaded: set[int] = set()
        self._restored: dict[int, dict[TopicPartition, int]] = {}
        self._dirty: set[int] = set()
        self._parked: dict[int, tuple[dict[str, Any], dict[TopicPartition, int]]] = {}

    @property
    def pending(self) -> int:
        return self.pipeline.pending

    # -- the replica ------------------------------------------------------------------------
    def start(self) -> str | None:
        """Load the replica's own latest weights, else the newest of the group; returns the
        slot loaded from, or None (fresh weights)."""
        if self.store is None:
            return None
        own = weights_slot(self.replica_id)
        slots = [s for s in self.store.slots() if s.startswith(WEIGHTS_PREFIX)]
        chosen = None
        if own in slots:
            chosen = own
        else:
            newest = -1.0
            for s in slots:
                found = self.store.restore_slot_full(s)
                if found is not None and found.created > newest:
                    chosen, newest = s, found.created
        if chosen is None:
            return None
        found = self.store.restore_slot_full(chosen)
        if found is None:
            return None
        self.pipeline.load_state_dict(found.state["pipeline"])
        self.pipeline.drop_keys()  # keys come with their partitions
        deltas = found.state.get("deltas")
        if chosen == own and deltas is not None:  # its own sync bookkeeping goes on
            self._cum = dict(deltas["cum"])
            self._since = dict(deltas["since"])
            self._applied = {p: dict(d) for p, d in deltas["applied"].items()}
        log.info("weights from %s", chosen)
        return chosen

    def observe(self, tp: TopicPartition, keys: Iterable[str], offset: int) -> None:
        """Record that the events of ``tp`` up to (excluding) ``offset`` were processed and
        that ``keys`` came on it."""
        p = tp[1]
        kp = self.key_part
        for k in keys:
            kp[k] = p
        self.offsets[tp] = offset
        self._dirty.add(p)

    def begin(self, tp: TopicPartition, offset: int) -> None:
        """The first record of a partition with no checkpoint is at ``offset``: checkpoint
        its partition now, so that after a crash the records from there on are replayed
        into the weights (they are in no checkpoint yet)."""
        self.offsets[tp] = offset
        if self.store is not None:
            self._save_partitions({tp[1]})

    def part_of(self, key: str) -> int | None:
        """The partition number whose state holds ``key``, if known."""
        return self.key_part.get(key)

    # -- the group ----------------------------------------------------------------------------
    def assign(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Take ownership of ``tps`` and load their partitions' key state; returns the
        checkpoint offset of each partition restored (where to seek back to)."""
        out: dict[TopicPartition, int] = {}
        for tp in sorted(set(tps) - self.owned):
            self.owned.add(tp)
            p = tp[1]
            if p not in self._loaded:
                self._loaded.add(p)
                self._restored[p] = self._load_partition(p)
            off = self._restored.get(p, {}).get(tp)
            if off is not None:
                out[tp] = off
                self.offsets[tp] = off
        return out

    def revoke(
        self, tps: Iterable[TopicPartition], lost: bool = False
    ) -> dict[TopicPartition, int]:
        """Let ``tps`` go: checkpoint their partitions' key state (not when ``lost``: a
        fenced member writes nothing) and drop it; returns their offsets to commit."""
        tps = sorted(set(tps) & self.owned)
        parts = {tp[1] for tp in tps}
        if not lost and self.store is not None and tps:
            self._save_partitions(parts)
            self._save_weights()  # consistent with the partitions' state just written
        out = {tp: self.offsets[tp] for tp in tps if tp in self.offsets}
        for tp in tps:
            self.owned.discard(tp)
            self.offsets.pop(tp, None)
        still = {tp[1] for tp in self.owned}
        for p in parts - still:
            keys = [k for k, q in self.key_part.items() if q == p]
            if self.store is None and not lost:
                state = {"keys": keys, "key_state": self.pipeline.export_keys(keys, group=p)}
                self._parked[p] = (state, {tp: o for tp, o in out.items() if tp[1] == p})
            self.pipeline.drop_keys(keys, group=p)
            for k in keys:
                del self.key_part[k]
            self._loaded.discard(p)
            self._restored.pop(p, None)
            self._dirty.discard(p)
        return out

    def checkpoint(self) -> int:
        """Write the changed partitions' key state and the replica's weights, then average
        with the other replicas; returns how many partitions were written."""
        if self.store is None:
            return 0
        written = self._save_partitions(set(self._dirty))
        self._prune()
        if self.weight_sync == "deltas":
            self._sync_deltas()
        self._save_weights()
        if self.weight_sync == "average":
            self.sync()
        return written

    def _shared(self) -> dict[str, torch.Tensor]:
        """Every shared parameter of the pipeline's models, by ``<model>/<name>``."""
        return {f"{name}/{k}": v for name, m in self.pipeline.models.items()
                for k, v in m.shared_weights().items()}

    def _save_weights(self) -> None:
        pipe = self.pipeline
        state: dict[str, Any] = {"pipeline": pipe.state_dict(include_keys=False)}
        if self.weight_sync == "average":
            state["shared"] = {name: {k: v.detach().clone()
                                      for k, v in m.shared_weights().items()}
                               for name, m in pipe.models.items()}
        elif self.weight_sync == "deltas":
            state["deltas"] = {"cum": dict(self._cum), "since": dict(self._since),
                               "applied": {p: dict(d) for p, d in self._applied.items()}}
        self._save(weights_slot(self.replica_id), state, dict(self.offsets),
                   self.generation())

    def _peers(self) -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        own = weights_slot(self.replica_id)
        out = []
        for s in self.store.slots():
            if not s.startswith(WEIGHTS_PREFIX) or s == own:
                continue
            found = self.store.restore_slot_full(s)
            if found is not None and now - found.created <= self.sync_max_age_s:
                out.append((s[len(WEIGHTS_PREFIX):], found.state))
        return out

    def _sync_deltas(self) -> None:
        """Add this replica's updates since the last sync to its local delta, then add each
        peer's local delta not added yet."""
        params = self._shared()
        with torch.no_grad():
            for k, v in params.items():
                base = self._since.get(k)
                if base is not None and base.shape == v.shape:
                    self._cum[k] = self._cum.get(k, torch.zeros_like(v)) + (v - base)
                else:  # first sight (a network built lazily): nothing to share yet
                    self._cum.setdefault(k, torch.zeros_like(v))
            peers = self._peers()
            self.peers = [p for p, _ in peers]
            for peer, state in peers:
                cum = state.get("deltas", {}).get("cum", {})
                done = self._applied.setdefault(peer, {})
                for k, v in params.items():
                    theirs = cum.get(k)
                    if theirs is None or tuple(theirs.shape) != tuple(v.shape):
                        continue
                    theirs = torch.as_tensor(theirs, dtype=v.dtype)
                    seen = done.get(k)
                    if seen is None:  # a peer seen for the first time: from now on
                        done[k] = theirs.clone()
                        continue
                    v.add_(theirs - seen)
                    done[k] = theirs.clone()
            self._since = {k: v.detach().clone() for k, v in params.items()}

    def sync(self) -> list[str]:
        """Average the shared weights with the other replicas' recent ones; returns the
        replicas averaged with."""
        others = [(p, st.get("shared", {})) for p, st in self._peers()]
        self.peers = [p for p, _ in others]
        if not others:
            return []
        with torch.no_grad():
            for name, m in self.pipeline.models.items():
                for pname, param in m.shared_weights().items():
                    vals = [param]
                    for _, sh in others:
                        v = sh.get(name, {}).get(pname)
                        if v is not None and tuple(v.shape) == tuple(param.shape):
                            vals.append(torch.as_tensor(v, dtype=param.dtype))
                    if len(vals) > 1:
                        param.copy_(torch.stack([v.detach() for v in vals]).mean(0))
        return self.peers

    # -- internals ----------------------------------------------------------------------------
    def _load_partition(self, p: int) -> dict[TopicPartition, int]:
        t = time.perf_counter()
        if self.store is None:
            found = self._parked.pop(p, None)
        else:
            found = self.store.restore_slot(partition_slot(p))
        if found is None:
            return {}
        state, offsets = found
        self.pipeline.import_keys(state["key_state"])
        for k in state["keys"]:
            self.key_part[k] = p
        log.info("restored partition %d (%d keys) in %.3f s", p, len(state["keys"]),
                 time.perf_counter() - t)
        return dict(offsets)

    def _save_partitions(self, parts: set[int]) -> int:
        if self.store is None or not parts:
            return 0
        gen = self.generation()
        written = 0
        for p in sorted(parts):
            offsets = {tp: o for tp, o in self.offsets.items() if tp[1] == p}
            if not offsets:
                continue
            keys = [k for k, q in self.key_part.items() if q == p]
            state = {"keys": keys, "key_state": self.pipeline.export_keys(keys, group=p)}
            if self._save(partition_slot(p), state, offsets, gen):
                written += 1
            self._dirty.discard(p)
        return written

    def _save(self, slot: str, state: dict[str, Any], offsets: dict[TopicPartition, int],
              generation: int) -> bool:
        try:
            self.store.save_slot(slot, state, offsets, generation=generation)
        except StaleCheckpoint as exc:
            log.warning("checkpoint of %s refused: %s", slot, exc)
            return False
        return True

    def _prune(self) -> None:
        """Forget the partition of keys the pipeline no longer holds state for."""
        live = self.pipeline.keys()
        for name in self.pipeline.models:
            part = self.pipeline.models[name].export_keys(list(self.key_part))
            if part is not None:
                live.update(part["keys"])
        if len(live) < len(self.key_part):
            self.key_part = {k: p for k, p in self.key_part.items() if k in live}
