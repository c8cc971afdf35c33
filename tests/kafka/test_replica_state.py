"""Replica state without a broker: one set of weights for every owned partition, key
state that moves with its partition, replay from a checkpoint's offsets to the committed
ones (learned once, not emitted again), and the keying contract of click labels."""

from __future__ import annotations

import orjson
import pytest
from test_service_flow import GroupSource

from streamadapt.adapters.liquid import LiquidForecaster
from streamadapt.adapters.river_models import RiverLinearForecaster, RiverLogReg
from streamadapt.checkpoint import CheckpointStore
from streamadapt.events import Impression, Label, LinkLoadSample, Position
from streamadapt.io import ListSink, RawRecord
from streamadapt.pipeline import Pipeline
from streamadapt.service import Service


def forecast_log(n: int) -> dict[int, list[bytes]]:
    """Two partitions, two links each, loads with a trend so the model keeps learning."""
    out: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(n):
        for p, links in ((0, ("a", "b")), (1, ("c", "d"))):
            for j, link in enumerate(links):
                out[p].append(orjson.dumps({
                    "event_id": f"{link}{i}", "link_id": link, "timestamp": 60.0 * i,
                    "load": 10.0 + (i % 7) * (j + 1) + 0.01 * i}))
    return out


def linear() -> Pipeline:
    return Pipeline("forecast", {"m": RiverLinearForecaster()})


def test_one_set_of_weights_learns_from_every_owned_partition():
    src = GroupSource(forecast_log(20), {0, 1})
    svc = Service(linear(), src, ListSink(), ListSink(), batch_size=16, partition_state=True)
    svc.run()
    assert svc.partitions.key_part == {"a": 0, "b": 0, "c": 1, "d": 1}
    assert svc.pipeline.labels_learned == 4 * 19  # every label of both partitions


def test_kill_restore_replays_to_the_committed_offsets_and_matches_an_uninterrupted_run(
    tmp_path,
):
    log = forecast_log(60)
    # the run without a crash
    clean_sink = ListSink()
    clean = Service(linear(), GroupSource(log, {0, 1}), clean_sink, ListSink(),
                    batch_size=10, partition_state=True)
    clean.run()
    expected = {p.event_id: p.prediction for p in clean_sink.records}

    store = CheckpointStore(tmp_path)
    a_src, a_sink = GroupSource(log, {0, 1}), ListSink()
    a = Service(linear(), a_src, a_sink, ListSink(), batch_size=10, checkpointer=store,
                checkpoint_interval_s=3600, partition_state=True, replica_id="pod")
    for _ in range(5):
        a.run_once()
    a.checkpoint_now()
    at_checkpoint = dict(a_src.committed)
    for _ in range(4):  # learned, emitted and committed, but in no checkpoint
        a.run_once()
    # kill -9: no revocation, no checkpoint; the broker keeps the committed offsets
    b_src, b_sink = GroupSource(log, set()), ListSink()
    b_src.committed = dict(a_src.committed)
    b_src.rebalance(revoke=set(), assign={0, 1})
    b = Service(linear(), b_src, b_sink, ListSink(), batch_size=10, checkpointer=store,
                partition_state=True, replica_id="pod")
    assert b.restore()
    b.run()
    replayed = sum(a_src.committed[tp] - at_checkpoint.get(tp, 0) for tp in a_src.committed)
    assert replayed > 0
    emitted = [p.event_id for p in a_sink.records + b_sink.records]
    assert len(emitted) == len(set(emitted)) == len(expected)  # each prediction once
    for p in b_sink.records:  # the restored model is the uninterrupted one, exactly
        assert p.prediction == expected[p.event_id]
    assert b.pipeline.labels_learned == clean.pipeline.labels_learned
    assert b.pipeline.pending == clean.pipeline.pending


def test_liquid_learns_every_label_once_across_a_restore(tmp_path):
    log = forecast_log(40)
    store = CheckpointStore(tmp_path)

    def pipe() -> Pipeline:
        return Pipeline("forecast", {"liquid": LiquidForecaster(hidden=8, seed=0)})

    a_src = GroupSource(log, {0, 1})
    a = Service(pipe(), a_src, ListSink(), ListSink(), batch_size=8, checkpointer=store,
                checkpoint_interval_s=3600, partition_state=True)
    for _ in range(6):
        a.run_once()
    a.checkpoint_now()
    for _ in range(5):
        a.run_once()
    b_src = GroupSource(log, set())
    b_src.committed = dict(a_src.committed)
    b_src.rebalance(revoke=set(), assign={0, 1})
    b = Service(pipe(), b_src, ListSink(), ListSink(), batch_size=8, checkpointer=store,
                partition_state=True)
    assert b.restore()
    b.run()
    assert b.pipeline.labels_learned == 4 * 39
    # the hidden state of each link came back with its partition
    assert set(b.pipeline.models["liquid"]._links.slot_of) == {"a", "b", "c", "d"}


def impression(i: int, user: str, t: float) -> bytes:
    return orjson.dumps({"kind": "impression", "event_id": f"i{i}", "user_id": user,
                         "item_id": f"m{i % 3}", "timestamp": t,
                         "categorical": {"genre": "x" if i % 2 else "y"}})


def label(i: int, key: str | None, t: float, y: int = 1) -> bytes:
    body = {"kind": "label", "event_id": f"i{i}", "label": y, "timestamp": t}
    if key is not None:
        body["key"] = key
    return orjson.dumps(body)


def ctr() -> Pipeline:
    return Pipeline("ctr", {"m": RiverLogReg()}, label_grace_s=60.0)


class TwoTopics:
    """Impressions on topic ``imp`` and labels on topic ``lab``, co-partitioned, read by
    one member of a pretend consumer group (partition numbers are assigned together)."""

    def __init__(self, imp: dict[int, list[bytes]], lab: dict[int, list[bytes]], owned):
        self.log = {**{("imp", p): v for p, v in imp.items()},
                    **{("lab", p): v for p, v in lab.items()}}
        self.pos = dict.fromkeys(self.log, 0)
        self.committed: dict = {}
        self.owned: set = set()
        self.pending_assign: set[int] | None = set(owned)
        self.pending_revoke: set[int] | None = None
        self.on_assign = self.on_revoke = None

    def _tps(self, parts):
        return {tp for tp in self.log if tp[1] in parts}

    def set_rebalance_listener(self, on_assign, on_revoke):
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def rebalance(self, revoke, assign):
        self.pending_revoke, self.pending_assign = set(revoke), set(assign)

    def seek(self, tp, offset):
        self.pos[tp] = offset

    def committed_offsets(self, tps):
        return {tp: self.committed[tp] for tp in tps if tp in self.committed}

    def poll(self, max_records, timeout_s):
        if self.pending_revoke:
            gone = self._tps(self.pending_revoke)
            self.on_revoke(gone)
            self.owned -= gone
            self.pending_revoke = None
        if self.pending_assign is not None:
            new = self._tps(self.pending_assign)
            self.owned |= new
            for tp in new:
                self.pos[tp] = self.committed.get(tp, 0)
            self.on_assign(new)
            self.pending_assign = None
        out = []
        for tp in sorted(self.owned):  # labels after impressions, a few at a time
            take = 0
            while self.pos[tp] < len(self.log[tp]) and len(out) < max_records and take < 4:
                out.append(RawRecord(self.log[tp][self.pos[tp]], Position(*tp, self.pos[tp]),
                                     None))
                self.pos[tp] += 1
                take += 1
        return out

    def commit(self, offsets):
        self.committed.update(offsets)

    def assignment(self):
        return set(self.owned)

    @property
    def finished(self):
        return all(self.pos[tp] >= len(self.log[tp]) for tp in self.owned)

    def close(self):
        pass


def test_a_label_read_before_its_impression_waits_for_it():
    pipe = ctr()
    first = pipe.step([Label(event_id="i1", label=1, timestamp=10.0, key="u")])
    assert not first.dead_letters and pipe.pending == 0
    second = pipe.step([Impression(event_id="i1", user_id="u", item_id="m",
                                   timestamp=5.0)])
    assert len(second.scores["m"]) == 1 and second.scores["m"].y_true.tolist() == [1.0]
    late = pipe.step([Label(event_id="zz", label=0, timestamp=11.0, key="u")])
    assert not late.dead_letters  # waits until impressions pass its time + grace
    gone = pipe.step([Impression(event_id="i9", user_id="u", item_id="m", timestamp=80.0)])
    assert [d.reason.split(":")[0] for d in gone.dead_letters] == ["orphan label"]


def test_click_state_moves_with_its_partition_and_every_keyed_label_joins(tmp_path):
    # user u0 on partition 0, u1 on partition 1; labels 30 s after their impressions
    imp = {0: [impression(i, "u0", 10.0 * i) for i in range(0, 40, 2)],
           1: [impression(i, "u1", 10.0 * i) for i in range(1, 40, 2)]}
    lab = {0: [label(i, "u0", 10.0 * i + 30) for i in range(0, 40, 2)],
           1: [label(i, "u1", 10.0 * i + 30) for i in range(1, 40, 2)]}
    store = CheckpointStore(tmp_path)
    a_src = TwoTopics(imp, lab, {0, 1})
    a_dead = ListSink()
    a = Service(ctr(), a_src, ListSink(), a_dead, batch_size=7, checkpointer=store,
                checkpoint_interval_s=3600, partition_state=True, replica_id="a")
    a.run_once()
    a.run_once()
    assert a.pipeline.pending > 0
    # partition 1 (impressions and labels) moves to member B with its pending impressions
    a_src.rebalance(revoke={1}, assign=set())
    a.run_once()
    assert all(k == "u0" for k in a.partitions.key_part)
    b_src = TwoTopics(imp, lab, set())
    b_src.committed = dict(a_src.committed)
    b_src.rebalance(revoke=set(), assign={1})
    b_dead = ListSink()
    b = Service(ctr(), b_src, ListSink(), b_dead, batch_size=7, checkpointer=store,
                partition_state=True, replica_id="b")
    b.restore()
    b.run()
    a.run()
    assert a_dead.records == [] and b_dead.records == []  # zero orphans
    assert a.pipeline.labels_learned + b.pipeline.labels_learned == 40
    assert a.pipeline.pending == b.pipeline.pending == 0


@pytest.mark.parametrize("key, reason", [
    ("u1", "label keyed wrongly: key 'u1' has its impressions on partition 1, the label "
           "came on partition 0"),
    (None, "label without key"),
])
def test_a_label_that_breaks_the_keying_contract_is_a_dead_letter(key, reason):
    imp = {0: [impression(0, "u0", 0.0)], 1: [impression(1, "u1", 0.0)]}
    lab = {0: [label(1, key, 5.0)], 1: []}
    src = TwoTopics(imp, lab, {0, 1})
    dead = ListSink()
    svc = Service(ctr(), src, ListSink(), dead, batch_size=10, partition_state=True)
    svc.run()
    assert len(dead.records) == 1 and dead.records[0].reason.startswith(reason)
    assert dead.records[0].position.partition == 0
    assert svc.pipeline.pending == 2  # the impressions still wait for a well-keyed label


def test_label_key_is_part_of_the_label_schema():
    assert Label(event_id="e", label=1, timestamp=0, key="u").key == "u"
    assert Label(event_id="e", label=1, timestamp=0).key is None
    assert LinkLoadSample(event_id="e", link_id="l", timestamp=0, load=1).link_id == "l"


class Counter(RiverLinearForecaster):
    """A forecaster whose one shared weight counts the labels it learned."""

    def __init__(self) -> None:
        super().__init__()
        import torch

        self._net = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self._net.weight.zero_()

    def _learn_many(self, xs, ys) -> None:
        import torch

        with torch.no_grad():
            self._net.weight += len(xs)


@pytest.mark.parametrize("method", ["deltas", "average", "off"])
def test_replicas_exchange_their_updates_through_the_store(tmp_path, method):
    from streamadapt.partitions import ReplicaState

    store = CheckpointStore(tmp_path)

    def replica(name: str) -> ReplicaState:
        rs = ReplicaState(Pipeline("forecast", {"m": Counter()}), store, replica_id=name,
                          weight_sync=method)
        rs.start()
        return rs

    def learn(rs: ReplicaState, n: int) -> None:
        rs.pipeline.models["m"].learn_many(
            [rs.pipeline.windows.push("k", float(i), 1.0) for i in range(n)], [1.0] * n)

    a, b = replica("a"), replica("b")
    a.checkpoint()
    b.checkpoint()  # each sees the other for the first time
    learn(a, 8)
    learn(b, 2)
    a.checkpoint()  # a publishes its 8
    b.checkpoint()  # b adds a's 8 (deltas) or takes the mean (average)
    w = float(b.pipeline.models["m"].shared_weights()["weight"])
    assert w == {"deltas": 10.0, "average": 5.0, "off": 2.0}[method]
    if method == "average":
        return
    a.checkpoint()  # a adds b's 2 once; b's merge of a's updates is not sent back
    a.checkpoint()
    b.checkpoint()
    wa = float(a.pipeline.models["m"].shared_weights()["weight"])
    wb = float(b.pipeline.models["m"].shared_weights()["weight"])
    assert (wa, wb) == ((10.0, 10.0) if method == "deltas" else (8.0, 2.0))
