"""The service's group behaviour without a broker: partition state restored on assignment
and checkpointed on revocation, readiness, pause/resume and retries while a sink is away,
commit retries, the poll budget, and the checkpoint store's corruption handling."""

from __future__ import annotations

import threading

import orjson
import pytest

from streamadapt.adapters.river_models import RiverLinearForecaster
from streamadapt.checkpoint import CheckpointStore
from streamadapt.events import Position
from streamadapt.flowcontrol import PollBudget, SinkUnavailable, SourceUnavailable
from streamadapt.io import ListSink, RawRecord
from streamadapt.pipeline import Pipeline
from streamadapt.service import Service


def factory() -> Pipeline:
    return Pipeline("forecast", {"m": RiverLinearForecaster()})


def sample(i: int, link: str) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "link_id": link, "timestamp": 60.0 * i,
                         "load": 10.0 + i % 4})


class GroupSource:
    """An in-memory partitioned topic read by one member of a pretend consumer group."""

    def __init__(self, log: dict[int, list[bytes]], owned: set[int], topic: str = "t"):
        self.log, self.topic = log, topic
        self.pos = {p: 0 for p in log}
        self.owned = {(topic, p) for p in owned}
        self.committed: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.pause_calls = 0
        self.pending_assign: set[tuple[str, int]] | None = set(self.owned)
        self.pending_revoke: set[tuple[str, int]] | None = None
        self.on_assign = self.on_revoke = None
        self.fail_commits = 0

    def set_rebalance_listener(self, on_assign, on_revoke):
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def seek(self, tp, offset):
        self.pos[tp[1]] = offset

    def committed_offsets(self, tps):
        return {tp: self.committed[tp] for tp in tps if tp in self.committed}

    def rebalance(self, revoke: set[int], assign: set[int]):
        self.pending_revoke = {(self.topic, p) for p in revoke}
        self.pending_assign = {(self.topic, p) for p in assign}

    def poll(self, max_records, timeout_s):
        if self.pending_revoke:
            self.on_revoke(self.pending_revoke)
            self.owned -= self.pending_revoke
            self.pending_revoke = None
        if self.pending_assign is not None:
            self.owned |= self.pending_assign
            for tp in self.pending_assign:  # resume at the committed offset
                self.pos[tp[1]] = self.committed.get(tp, 0)
            self.on_assign(set(self.pending_assign))
            self.pending_assign = None
        out = []
        for _, p in sorted(self.owned - self.paused):
            while self.pos[p] < len(self.log[p]) and len(out) < max_records:
                out.append(RawRecord(self.log[p][self.pos[p]], Position(self.topic, p,
                                                                        self.pos[p])))
                self.pos[p] += 1
        return out

    def commit(self, offsets):
        if self.fail_commits:
            self.fail_commits -= 1
            raise SourceUnavailable("broker away")
        self.committed.update(offsets)

    def assignment(self):
        return set(self.owned)

    def pause(self, tps):
        self.pause_calls += 1
        self.paused |= set(tps)

    def resume(self, tps):
        self.paused -= set(tps)

    @property
    def finished(self):
        return all(self.pos[p] >= len(self.log[p]) for _, p in self.owned)

    def close(self):
        pass


def two_partitions(n: int) -> dict[int, list[bytes]]:
    return {0: [sample(i, "a") for i in range(n)], 1: [sample(i, "b") for i in range(n)]}


def test_partition_state_moves_to_the_member_that_gains_the_partition(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    log = two_partitions(40)
    a_src = GroupSource(log, {0, 1})
    a = Service(factory(), a_src, ListSink(), ListSink(), batch_size=10, checkpointer=store,
                checkpoint_interval_s=3600, partition_state=True)
    a.run(max_records=60)  # 40 of one partition, 20 of the other
    assert a.health.ready is False  # stopped
    assert a_src.committed[("t", 0)] + a_src.committed[("t", 1)] == 60
    # member B joins: partition 1 moves from A to B
    a_src.rebalance(revoke={1}, assign=set())
    a.run_once()
    assert a.partitions.owned == {("t", 0)}
    assert set(a.partitions.key_part) == {"a"}  # link b's state left with its partition
    _, offsets = store.restore_slot("partition.1")  # checkpointed on revocation
    moved = offsets[("t", 1)]
    assert moved == a_src.committed[("t", 1)]
    b_src = GroupSource(log, set())
    b_src.committed = dict(a_src.committed)  # the broker's committed offsets
    b_src.rebalance(revoke=set(), assign={1})
    b = Service(factory(), b_src, ListSink(), ListSink(), batch_size=10, checkpointer=store,
                partition_state=True, replica_id="b")
    assert b.restore()  # no weights of its own: the group's latest (A's)
    summary = b.run()
    # B continued A's windows for link "b": every prediction it made is scored, including
    # the first one's label joining A's last pending prediction
    assert summary.records == 40 - moved
    assert summary.labelled == summary.records


def test_without_the_checkpoint_the_new_member_starts_cold(tmp_path):
    log = two_partitions(30)
    b_src = GroupSource(log, set())
    b_src.committed = {("t", 1): 20}
    b_src.rebalance(revoke=set(), assign={1})
    b = Service(factory(), b_src, ListSink(), ListSink(), batch_size=10,
                checkpointer=CheckpointStore(tmp_path), partition_state=True)
    summary = b.run()
    assert summary.records == 10 and summary.labelled == 9  # the first has no history


def test_readiness_follows_assignment():
    src = GroupSource(two_partitions(5), set())
    svc = Service(factory(), src, ListSink(), ListSink(), partition_state=True)
    assert not svc.health.ready
    src.rebalance(revoke=set(), assign=set())
    svc.run_once()
    assert not svc.health.ready and svc.health.reason == "no partitions assigned"
    src.rebalance(revoke=set(), assign={0})
    svc.run_once()
    assert svc.health.ready and svc.health.reason.startswith("1 partitions assigned")
    src.rebalance(revoke={0}, assign={0, 1})
    svc.run_once()
    assert svc.health.ready and "2 partitions assigned" in svc.health.reason


class FlakySink(ListSink):
    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("broker away")


def test_a_sink_outage_pauses_partitions_retries_and_commits_after_delivery():
    src = GroupSource(two_partitions(20), {0, 1})
    sink = FlakySink(failures=3)
    svc = Service(factory(), src, sink, ListSink(), batch_size=10, partition_state=True,
                  retry_backoff_s=0.001, retry_backoff_max_s=0.002)
    assert svc.run_once() == 10
    assert sink.flushes == 4 and src.pause_calls == 1 and not src.paused  # resumed
    assert sum(src.committed.values()) == 10
    svc.run()
    assert sum(src.committed.values()) == 40 and len(sink.records) == 40


def test_stop_during_an_outage_commits_nothing():
    src = GroupSource(two_partitions(10), {0, 1})
    stop = threading.Event()
    sink = FlakySink(failures=10**6)
    svc = Service(factory(), src, sink, ListSink(), batch_size=5, partition_state=True,
                  retry_backoff_s=0.001, retry_backoff_max_s=0.002)
    svc._stop = stop
    threading.Timer(0.05, stop.set).start()
    svc.run_once()
    assert src.committed == {}  # read again after a restart: nothing lost


def test_a_failed_commit_is_covered_by_the_next_one():
    src = GroupSource(two_partitions(10), {0})
    src.fail_commits = 1
    svc = Service(factory(), src, ListSink(), ListSink(), batch_size=5,
                  retry_backoff_s=0.001, retry_backoff_max_s=0.002)
    svc.run_once()
    assert src.committed == {}
    svc.run_once()
    assert src.committed == {("t", 0): 10}


def test_poll_budget_cuts_batches_after_a_slow_step():
    budget = PollBudget(batch_size=500, max_poll_interval_s=1.0)
    budget.observe(100, 0.02)
    assert budget.limit(500) == 500
    budget.observe(10, 0.5)  # a burst: 50 ms per record
    assert budget.limit(500) == 10
    for _ in range(400):  # it recovers as the burst ages
        budget.observe(100, 0.02)
    assert budget.limit(500) == 500


def test_service_applies_the_budget():
    src = GroupSource({0: [sample(i, "a") for i in range(100)]}, {0})
    svc = Service(factory(), src, ListSink(), ListSink(), batch_size=50,
                  max_poll_interval_s=1.0)
    svc.budget.observe(10, 0.5)
    assert svc.run_once() == 10


def test_checkpoint_store_skips_corrupt_files_and_keeps_n(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for i in range(5):
        store.save_partition(("t", 0), {"i": i}, 100 + i)
    files = store.files("t.0")
    assert [f.name for f in files] == [f"{n:012d}.ckpt" for n in (3, 4, 5)]
    blob = bytearray(files[-1].read_bytes())
    blob[-10] ^= 0xFF  # a flipped bit in the newest
    files[-1].write_bytes(bytes(blob))
    files[-2].write_bytes(files[-2].read_bytes()[:50])  # a torn second newest
    state, offset = store.restore_partition(("t", 0))
    assert (state["i"], offset) == (2, 102)
    assert store.corrupt == [files[-1], files[-2]]
    (tmp_path / "t.0" / ".tmp-x.part").write_bytes(b"half")  # a crashed write
    assert store.restore_partition(("t", 0))[0]["i"] == 2
    assert store.restore_partition(("t", 1)) is None
    assert store.slots() == ["t.0"]


def test_checkpoint_store_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        CheckpointStore(tmp_path, keep=0)


def test_without_a_store_a_partition_that_comes_back_keeps_its_state():
    src = GroupSource(two_partitions(20), {0, 1})
    svc = Service(factory(), src, ListSink(), ListSink(), batch_size=10,
                  partition_state=True)
    svc.run_once()
    before = svc.pipeline.export_keys(["a"])["windows"]
    src.rebalance(revoke={0, 1}, assign={0, 1})  # the member re-joins its group
    svc.partitions.revoke(src.owned)
    assert svc.pipeline.keys() == set()
    svc.partitions.assign(src.owned)  # parked in memory, taken back
    assert svc.pipeline.export_keys(["a"])["windows"] == before
