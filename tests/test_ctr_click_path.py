"""The fast click path equals the step-by-step one it replaced.

``CtrNet`` learns with hand-written gradients, a flat Adam and numpy sparse updates; the
reference here is what it did before: per chunk of ``step_size`` events, the torch module's
forward, ``loss.backward()`` and the four torch optimizers (Adam, SparseAdam, SGD, SGD).
Both start from the same weights and see the same events; predictions and weights must
agree within 1e-5 (float32 rounding: over 20 000 ``clicks`` events the largest gap
measured was 1.2e-7 in probability), and the numeric statistics, step count and click rate
exactly. The LSH sketch's packed-bit hashing and its reuse of the last keys' buckets
must give exactly what the plain formula gives.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from streamadapt import state as state_io
from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.adapters.reloop2 import ReLoop2
from streamadapt.datasets.clicks import click_stream
from streamadapt.events import NO_ID, Impression
from streamadapt.memory.sketch import LSHSketch
from streamadapt.state import optimizer_state

TOL = 1e-5


class Reference:
    """The autograd learning step over ``net``'s own module and tables."""

    def __init__(self, net: CtrNet) -> None:
        self.net = net
        dcn = net._net
        self.opts: list[tuple[torch.optim.Optimizer, float]] = [
            (torch.optim.Adam(net._dense_params(), lr=net.lr), net.lr),
            (torch.optim.SparseAdam([dcn.emb.weight], lr=net.lr), net.lr)]
        if dcn.fm is not None:
            self.opts.append((torch.optim.SGD([dcn.fm.weight], lr=net.fm_lr), net.fm_lr))
        if dcn.pairs is not None:
            self.opts.append((torch.optim.SGD([dcn.pairs.weight], lr=net.pair_lr),
                              net.pair_lr))

    def learn_many(self, xs: list[Impression], ys: np.ndarray) -> None:
        k = self.net.step_size
        for i in range(0, len(xs), k):
            self.step(xs[i:i + k], np.asarray(ys[i:i + k], dtype=np.float64))

    def step(self, xs: list[Impression], ys: np.ndarray) -> None:
        net, dcn = self.net, self.net._net
        if net._num:
            net._update_stats(np.array([[x.numeric.get(f, math.nan) for f in net._num]
                                        for x in xs], dtype=np.float64))
        idx, num, present = net._encode(xs)
        logit, _, _ = dcn(idx, num, present)
        target = torch.from_numpy((ys >= 0.5).astype(np.float32))
        net._update_rate(float(target.mean()), len(ys))
        loss = nn.functional.binary_cross_entropy_with_logits(logit, target)
        for opt, _ in self.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            return
        for table in (dcn.fm, dcn.pairs):
            if table is not None and table.weight.grad is not None:
                table.weight.grad.mul_(len(ys))
        f = net._lr_factor()
        for opt, lr in self.opts:
            opt.param_groups[0]["lr"] = lr * f
            opt.step()
        net._t += 1


def _events(n: int, seed: int = 0) -> list[Impression]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        numeric = {"price": float(rng.normal(3, 2))}
        if i % 5:
            numeric["age"] = float(rng.integers(18, 80))  # missing now and then
        out.append(Impression(
            event_id=f"e{i}", user_id=NO_ID if i % 11 == 0 else f"u{rng.integers(40)}",
            item_id=f"i{rng.integers(25)}", timestamp=1.7e9 + 600.0 * i,
            categorical={"g": "abc"[int(rng.integers(3))], "h": str(rng.integers(6))},
            numeric=numeric, label=int(rng.random() < 0.3)))
    return out


def _weights(net: CtrNet) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net._net.state_dict().items()}


def _assert_same(fast: CtrNet, ref: CtrNet, xs: list[Impression]) -> None:
    np.testing.assert_allclose(fast.predict_many(xs), ref.predict_many(xs), rtol=0, atol=TOL)
    wf, wr = _weights(fast), _weights(ref)
    for name in wr:
        np.testing.assert_allclose(wf[name], wr[name], rtol=0, atol=TOL, err_msg=name)
    np.testing.assert_array_equal(fast._stats, ref._stats)
    assert fast._t == ref._t and fast._rate == ref._rate


@pytest.mark.parametrize("params", [
    {},
    {"time_fields": True, "deep": (16, 8), "n_cross": 3, "step_size": 3},
    {"deep": (), "n_cross": 0, "fm_dim": 0, "key": "last"},
    {"pair_lr": 0.0, "warmup": 5, "decay": 20, "lr": 0.01},
    {"deep": (1200,)},  # products past OpenBLAS's one-thread size: torch multiplies
])
def test_fast_learning_equals_the_autograd_steps(params):
    xs = _events(600)
    ys = np.array([x.label for x in xs], dtype=float)
    fast, ref = CtrNet(seed=3, **params), CtrNet(seed=3, **params)
    fast.predict_many(xs[:1])
    ref.predict_many(xs[:1])
    reference = Reference(ref)
    for i in range(0, 600, 100):  # batches that are no multiple of step_size too
        fast.learn_many(xs[i:i + 100], ys[i:i + 100])
        reference.learn_many(xs[i:i + 100], ys[i:i + 100])
    _assert_same(fast, ref, xs)


def test_fast_learning_on_the_clicks_stream():
    xs = list(click_stream(seed=1, n_events=3000).events)
    ys = np.array([x.label for x in xs], dtype=float)
    fast, ref = CtrNet(seed=0), CtrNet(seed=0)
    fast.predict_many(xs[:1])
    ref.predict_many(xs[:1])
    reference = Reference(ref)
    for i in range(0, 3000, 256):
        np.testing.assert_allclose(fast.predict_many(xs[i:i + 256]),
                                   ref.predict_many(xs[i:i + 256]), rtol=0, atol=TOL)
        fast.learn_many(xs[i:i + 256], ys[i:i + 256])
        reference.learn_many(xs[i:i + 256], ys[i:i + 256])
    _assert_same(fast, ref, xs)


def test_a_state_of_the_torch_optimizers_continues_identically():
    """A checkpoint whose optimizer states the torch optimizers wrote (as every
    ``ctr-net-v4`` state before the fast path) loads and learns on as they would."""
    xs = _events(400, seed=1)
    ys = np.array([x.label for x in xs], dtype=float)
    ref = CtrNet(seed=0)
    ref.predict_many(xs[:1])
    reference = Reference(ref)
    reference.learn_many(xs[:200], ys[:200])
    state = ref.state_dict()
    for key, (opt, _) in zip(("opt", "opt_emb", "opt_fm", "opt_pair"), reference.opts,
                             strict=True):
        state[key] = optimizer_state(opt)
    fast = CtrNet(seed=9)
    fast.load_state_dict(state_io.loads(state_io.dumps(state)))
    fast.learn_many(xs[200:], ys[200:])
    reference.learn_many(xs[200:], ys[200:])
    _assert_same(fast, ref, xs)
    # and what the fast model saves is that format again
    again = fast.state_dict()
    assert set(again["opt"]["state"]) == set(state["opt"]["state"])
    assert again["opt_emb"]["state"]["0"]["step"] == reference.opts[1][0].state[
        ref._net.emb.weight]["step"]


def test_the_last_batch_is_encoded_once_and_a_changed_one_again():
    net = CtrNet(seed=0)
    xs = _events(20)
    first = net._tokens(xs)
    assert net._tokens(list(xs)) is first  # same events: the cached encoding
    other = xs[:19] + [_events(21)[20]]
    assert net._tokens(other) is not first


@pytest.mark.parametrize("n_bits", [1, 3, 8, 12, 24])
def test_packed_buckets_equal_the_sign_bit_sum(n_bits):
    rng = np.random.default_rng(n_bits)
    sk = LSHSketch(dim=6, n_tables=5, n_bits=n_bits, seed=1)
    h = torch.from_numpy(rng.normal(size=(40, 6)).astype(np.float32))
    bits = (h @ sk._proj > 0).view(-1, 5, n_bits).long()
    want = (bits * 2 ** torch.arange(n_bits)).sum(2) + torch.arange(5) * (1 << n_bits)
    assert torch.equal(sk.buckets(h), want)


def test_reusing_the_buckets_of_the_last_keys_changes_nothing():
    rng = np.random.default_rng(0)
    a, b = LSHSketch(dim=4, n_tables=8, n_bits=3, seed=0), LSHSketch(dim=4, n_tables=8,
                                                                        n_bits=3, seed=0)
    for _ in range(5):
        h = rng.normal(size=(30, 4)).astype(np.float32)
        y, yb = rng.random(30), rng.random(30)
        a.read(h, 0.1)  # b is written without a read before: no reuse
        a.write(h, y, yb)
        b.write(h, y, yb)
        h[0] = 9.0  # the caller changes its array: the cached buckets must not be used
        a.write(h, y, yb)
        b.write(h, y, yb)
    for key, value in a.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b.state_dict()[key]), key


def test_reloop2_over_the_fast_net_round_trips():
    xs = list(click_stream(seed=2, n_events=1200).events)
    ys = np.array([x.label for x in xs], dtype=float)
    a = ReLoop2(CtrNet(seed=0), n_tables=16, seed=0)
    a.learn_many(xs[:600], ys[:600])
    b = ReLoop2(CtrNet(seed=0), n_tables=16, seed=0)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    a.learn_many(xs[600:], ys[600:])
    b.learn_many(xs[600:], ys[600:])
    np.testing.assert_allclose(a.predict_many(xs), b.predict_many(xs), rtol=0, atol=1e-6)


def test_a_repeated_read_is_answered_again_only_while_nothing_was_written():
    rng = np.random.default_rng(1)
    sk = LSHSketch(dim=4, n_tables=8, n_bits=3, seed=0)
    h = rng.normal(size=(30, 4)).astype(np.float32)
    sk.write(h, rng.random(30), rng.random(30))
    q = rng.normal(size=(10, 4)).astype(np.float32)
    first = sk.read(q, 0.1)
    first.ybar[:] = -1.0  # the caller owns what it got
    again = sk.read(q.copy(), 0.1)
    fresh = LSHSketch(dim=4, n_tables=8, n_bits=3, seed=0)
    fresh.load_state_dict(sk.state_dict())
    want = fresh.read(q, 0.1)
    np.testing.assert_array_equal(again.ybar, want.ybar)
    assert not np.array_equal(sk.read(q, 0.5).ybar, want.ybar)  # another tau: read anew
    sk.write(q, np.ones(10), np.zeros(10))
    fresh.write(q, np.ones(10), np.zeros(10))
    np.testing.assert_array_equal(sk.read(q, 0.1).ybar, fresh.read(q, 0.1).ybar)
    sk.reset()
    assert sk.read(q, 0.1).n_neighbours.tolist() == [0] * 10


def test_a_repeated_forward_pass_sees_every_change_of_what_it_reads():
    """The answer for the same batch is reused only while every number the pass reads is
    unchanged, whoever changed it (learning, test-time adaptation, weight averaging)."""
    xs = _events(64, seed=3)
    net = CtrNet(seed=0)
    net.learn_many(xs, [float(x.label) for x in xs])

    def direct() -> np.ndarray:
        idx, num, present = net._encode(xs)
        with torch.no_grad():
            return torch.sigmoid(net._net(idx, num, present)[0]).double().numpy()

    p0 = net.predict_many(xs)
    np.testing.assert_allclose(p0, direct(), rtol=0, atol=1e-6)  # numpy pass vs torch
    edits = [
        lambda: net._net.deep[0].weight.data.add_(0.05),  # as NHL's bounded step
        lambda: net._net.emb.weight.data[net._encode(xs)[0][3, 1]].add_(0.5),
        lambda: net._net.fm.weight.data[net._encode(xs)[0][5, 0]].add_(0.5),
        lambda: net._net.pairs.weight.data[net._net.pair_index(net._encode(xs)[0])[7, 2]]
        .add_(0.5),
        lambda: net._stats.__setitem__((1, 0), net._stats[1, 0] + 1.0),
    ]
    for edit in edits:
        before = net.predict_many(xs)
        edit()
        after = net.predict_many(xs)
        np.testing.assert_allclose(after, direct(), rtol=0, atol=1e-6)
        assert np.abs(after - before).max() > 1e-4


def test_the_vectorised_encoding_gives_the_per_event_token_rows():
    """Rows, presence and scaled values as the per-event encoding made them: the CRC-32 of
    ``"field=value"`` (a missing field's own token, the UTC hour and weekday), 0 presence
    for an absent user or item, a missing numeric value at the running mean."""
    import zlib

    xs = _events(50, seed=4) + [Impression(event_id="odd", user_id="u1", item_id=NO_ID,
                                           timestamp=-5000.5, categorical={"g": "a"},
                                           numeric={})]
    net = CtrNet(seed=0, time_fields=True, n_buckets=1 << 12)
    net.learn_many(xs[:40], [float(x.label or 0) for x in xs[:40]])
    idx, num, present = net._encode(xs)
    size, mean = 1 << 12, net._stats[1]
    for i, x in enumerate(xs):
        t = int(x.timestamp // 3600)
        tokens = [f"user={x.user_id}", f"item={x.item_id}",
                  *(f"{f}={x.categorical.get(f, chr(0) + 'missing')}" for f in net._cat),
                  f"utc_hour={t % 24}", f"utc_dow={(t // 24 + 4) % 7}"]
        assert idx[i].tolist() == [zlib.crc32(s.encode()) % size for s in tokens]
        assert present[i].tolist() == [float(x.user_id != NO_ID), float(x.item_id != NO_ID),
                                       *[1.0] * (len(tokens) - 2)]
        raw = np.array([[x.numeric.get(f, m) for f, m in zip(net._num, mean, strict=True)]])
        np.testing.assert_array_equal(num[i].numpy(), net._scale(raw)[0].astype(np.float32))
