"""The DCN-v2 click model: it learns, handles odd fields, keeps NaN out, restores exactly;
its sparse terms (factorisation machine, token pairs) are what they claim to be."""

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.datasets.clicks import click_stream
from streamadapt.events import NO_ID, Impression
from streamadapt.report import auc


def _imp(i, numeric=None, categorical=None, user="u1"):
    return Impression(event_id=f"e{i}", user_id=user, item_id=f"i{i % 7}",
                      timestamp=1.7e9 + i, numeric=numeric or {},
                      categorical=categorical if categorical is not None else {"g": "a"})


def test_learns_user_topic_preferences_online():
    s = click_stream(seed=2, n_events=8000, drift_at=(), n_users=30, n_topics=4)
    xs = list(s.events)
    ys = np.array([e.label for e in xs], dtype=float)
    net = CtrNet(seed=0)
    before = auc(ys[6000:], net.predict_many(xs[6000:]))
    for i in range(0, 6000, 256):
        net.learn_many(xs[i:i + 256], ys[i:i + 256])
    after = auc(ys[6000:], net.predict_many(xs[6000:]))
    assert after > 0.70 > before + 0.1, (before, after)


@pytest.mark.parametrize(("key", "dim"), [("last", 16), ("input", 3 * 4)])
def test_hidden_is_the_chosen_layer(key, dim):
    net = CtrNet(emb_dim=4, hidden_dim=16, key=key)
    xs = [_imp(i, numeric={"price": float(i)}) for i in range(5)]
    p, h = net.predict_and_hidden_many(xs)
    assert h.shape == (5, dim) and h.dtype == np.float32
    np.testing.assert_allclose(net.hidden_many(xs), h)
    np.testing.assert_allclose(net.predict_many(xs), p)


def test_missing_unknown_and_constant_fields_stay_finite():
    net = CtrNet(seed=1)
    first = [_imp(i, numeric={"price": 3.0}) for i in range(20)]  # zero variance
    net.learn_many(first, [i % 2 for i in range(20)])
    odd = [_imp(50, numeric={}, categorical={}),  # missing field and numeric
           _imp(51, numeric={"price": 1e9}, categorical={"g": "new", "extra": "x"})]
    p = net.predict_many(odd)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    net.learn_many(odd, [1.0, 0.0])
    assert all(torch.isfinite(t).all() for t in net._net.state_dict().values())
    assert net._cat == ["g"] and net._num == ["price"]


def test_fields_can_be_declared():
    net = CtrNet(fields=("g", "device"), time_fields=False)
    net.predict_many([_imp(0)])
    assert net._cat == ["device", "g"]


def test_round_trip_continues_training_identically():
    xs = [_imp(i, numeric={"price": float(i % 5)}, user=f"u{i % 9}") for i in range(96)]
    ys = np.array([float((i * 7) % 3 == 0) for i in range(96)])
    a = CtrNet(seed=0)
    a.learn_many(xs[:64], ys[:64])
    b = CtrNet(seed=5)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    a.learn_many(xs[64:], ys[64:])
    b.learn_many(xs[64:], ys[64:])
    np.testing.assert_allclose(a.predict_many(xs), b.predict_many(xs), rtol=1e-6)
    fresh = CtrNet()
    fresh.load_state_dict(CtrNet().state_dict())  # an unbuilt model round-trips too
    assert fresh._net is None


@pytest.mark.parametrize(("params", "message"), [
    ({"key": "deep"}, "unknown key 'deep'; valid choices: input, last"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"step_size": 0}, "step_size must be >= 1, got 0"),
    ({"emb_dim": 0}, "emb_dim must be >= 1, got 0"),
    ({"fm_dim": -1}, "fm_dim must be >= 0, got -1"),
    ({"fm_lr": 0.0}, "fm_lr must be > 0, got 0.0"),
    ({"fm_init": -1.0}, "fm_init must be >= 0, got -1.0"),
    ({"pair_lr": -0.1}, "pair_lr must be >= 0, got -0.1"),
    ({"pair_buckets": 0}, "pair_buckets must be >= 1, got 0"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        CtrNet(**params)


def test_fm_term_is_the_pairwise_sum_brute_force():
    net = CtrNet(seed=0, fm_dim=3)
    xs = [_imp(i, numeric={"price": 1.0}) for i in range(4)]
    net.predict_many(xs)
    idx, _, present = net._encode(xs)
    assert bool((present == 1).all())
    t = net._net.fm(idx).detach()
    n_fields = idx.shape[1]
    want = t[..., 0].sum(1) + sum(
        (t[:, i, 1:] * t[:, j, 1:]).sum(1) for i in range(n_fields) for j in range(i + 1, n_fields))
    torch.testing.assert_close(net._net.fm_logit(idx).detach(), want)
    plain = CtrNet(fm_dim=0, pair_lr=0.0)
    plain.predict_many(xs)
    assert plain._net.fm is None and plain._opt_fm is None
    assert plain._net.pairs is None and plain._opt_pair is None
    torch.testing.assert_close(plain._net.sparse_logit(idx), torch.zeros(4))


def test_pair_term_is_one_weight_per_pair_of_fields_brute_force():
    net = CtrNet(seed=0, fm_dim=0, pair_buckets=1 << 12)
    xs = [_imp(i, categorical={"g": "ab"[i % 2], "h": str(i % 3)}, user=f"u{i % 5}")
          for i in range(30)]
    net.learn_many(xs, [float(i % 3 == 0) for i in range(30)])
    idx, _, _ = net._encode(xs)
    rows = net._net.pair_index(idx)
    n_fields = idx.shape[1]  # user, item, g, h
    assert rows.shape == (30, n_fields * (n_fields - 1) // 2)
    assert int(rows.min()) >= 0 and int(rows.max()) < 1 << 12
    # the same pair of tokens in the same pair of fields always lands on the same row
    same = [(i, j) for i in range(30) for j in range(30) if bool((idx[i] == idx[j]).all())]
    assert all(bool((rows[i] == rows[j]).all()) for i, j in same)
    w = net._net.pairs.weight.detach()[:, 0]
    torch.testing.assert_close(net._net.pair_logit(idx).detach(), w[rows].sum(1))
    assert float(w.abs().sum()) > 0  # the pair weights learnt


def test_absent_user_or_item_is_no_token_of_the_sparse_terms():
    net = CtrNet(seed=0, pair_buckets=1 << 12)
    xs = [_imp(i, user=NO_ID if i % 2 else "u1") for i in range(8)]
    net.learn_many(xs, [float(i % 3 == 0) for i in range(8)])
    idx, _, present = net._encode(xs)
    np.testing.assert_array_equal(present[:, 0].numpy(), [1, 0] * 4)
    assert bool((present[:, 1:] == 1).all())
    # what the table holds for the token "user=-" does not move an event without a user
    before = net._net.sparse_logit(idx, present).detach()
    with torch.no_grad():
        net._net.fm.weight[idx[1, 0]] += 1.0
        net._net.pairs.weight[net._net.pair_index(idx)[1, 0]] += 1.0
    after = net._net.sparse_logit(idx, present).detach()
    torch.testing.assert_close(after[1::2], before[1::2])


def test_sparse_terms_take_one_sgd_step_per_event():
    """The first-order weight of a token shared by every event of a step moves by
    ``fm_lr * sum(y - p)``: plain SGD on the summed loss, not the mean."""
    net = CtrNet(seed=0, step_size=4, fm_lr=0.05, pair_lr=0.0)
    xs = [_imp(i, user="u1") for i in range(4)]
    ys = np.array([1.0, 1.0, 0.0, 1.0])
    p = net.predict_many(xs)
    row = int(net._encode(xs)[0][0, 0])  # the token "user=u1"
    w0 = float(net._net.fm.weight.detach()[row, 0])
    net.learn_many(xs, ys)
    w1 = float(net._net.fm.weight.detach()[row, 0])
    assert w1 - w0 == pytest.approx(0.05 * float((ys - p).sum()), rel=1e-4)


def test_time_tokens_do_not_collide_with_fields_of_the_same_name():
    net = CtrNet(seed=0, time_fields=True)
    x = Impression(event_id="e", user_id="u", item_id="i", timestamp=7 * 3600.0,
                   categorical={"hour": "7"})
    net.predict_many([x])
    idx, _, _ = net._encode([x])
    assert len(set(idx[0].tolist())) == idx.shape[1] == 5  # user, item, hour, utc hour, dow


def test_numeric_stats_skip_missing_values():
    net = CtrNet(seed=0)
    xs = [_imp(i, numeric={"a": float(i), "b": 2.0 * i} if i % 2 == 0 else {"a": float(i)})
          for i in range(10)]
    for i in range(0, 10, 3):
        net.learn_many(xs[i:i + 3], [0.0] * len(xs[i:i + 3]))
    n, mean, m2 = net._stats
    b = np.array([2.0 * i for i in range(0, 10, 2)])
    np.testing.assert_allclose(n, [10, 5])
    np.testing.assert_allclose(mean, [4.5, b.mean()])
    np.testing.assert_allclose(m2 / (n - 1), [np.var(range(10), ddof=1), b.var(ddof=1)])


def test_schedule_warms_up_and_decays_under_the_lr_scale():
    net = CtrNet(seed=0, warmup=4, decay=8, lr=0.01, fm_lr=0.02, step_size=1)
    xs = [_imp(i) for i in range(2)]
    net.learn_many(xs, [1.0, 0.0])  # two steps taken
    net.set_lr_scale(3.0)
    f = 3.0 * min(1.0, 3 / 4) / np.sqrt(1 + 2 / 8)
    assert net._opt.param_groups[0]["lr"] == pytest.approx(0.01 * f)
    assert net._opt_fm.param_groups[0]["lr"] == pytest.approx(0.02 * f)


@pytest.mark.parametrize("old", ["ctr-net-v2", "ctr-net-v3"])
def test_old_state_is_refused_with_a_clear_message(old):
    state = CtrNet().state_dict() | {"format": old}
    with pytest.raises(ValueError, match="older ctr-net cannot be restored"):
        CtrNet().load_state_dict(state)
