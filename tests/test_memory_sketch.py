"""The LSH sketch: bucket sums against brute force, collisions, decay, empty buckets, reset."""

import math

import numpy as np
import pytest
import torch

from streamadapt import state as state_io
from streamadapt.memory import LSHSketch, make_memory


def _brute_read(sketch_state, proj, n_tables, n_bits, keys, tau, min_eff=0.0, scale=1.0):
    """Reference read: per table, hash by looping over bits, pool with a softmax."""
    count, sum_h, sum_y, sum_yb = (sketch_state[k].numpy() for k in
                                   ("count", "sum_h", "sum_y", "sum_yb"))
    out = []
    for q in keys:
        sims, ys, ybs = [], [], []
        for k in range(n_tables):
            b = 0
            for bit in range(n_bits):
                if float(q @ proj[:, k * n_bits + bit]) > 0:
                    b += 1 << bit
            j = k * (1 << n_bits) + b
            if count[j] > min_eff * scale and count[j] > 0:
                s = sum_h[j]
                sims.append(float(q @ s) / (np.linalg.norm(q) * np.linalg.norm(s)))
                ys.append(sum_y[j] / count[j])
                ybs.append(sum_yb[j] / count[j])
        if not sims:
            out.append((0.0, 0.0, 0))
            continue
        w = np.exp((np.array(sims) - max(sims)) / tau)
        w /= w.sum()
        out.append((float(w @ ys), float(w @ ybs), len(sims)))
    return out


def test_read_matches_brute_force():
    rng = np.random.default_rng(3)
    sk = LSHSketch(dim=6, n_tables=5, n_bits=3, seed=11)
    h = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.random(300).round()
    yb = rng.random(300)
    assert sk.write(h, y, yb) == 300
    q = rng.normal(size=(40, 6)).astype(np.float32)
    got = sk.read(q, tau=0.2)
    ref = _brute_read(sk.state_dict(), sk._proj.numpy(), 5, 3, q, 0.2)
    np.testing.assert_allclose(got.ybar, [r[0] for r in ref], atol=1e-9)
    np.testing.assert_allclose(got.ybar_base, [r[1] for r in ref], atol=1e-9)
    assert got.n_neighbours.tolist() == [r[2] for r in ref]


def test_bucket_counts_equal_number_of_keys_hashed_there():
    rng = np.random.default_rng(0)
    sk = LSHSketch(dim=4, n_tables=3, n_bits=4, seed=1)
    h = rng.normal(size=(500, 4)).astype(np.float32)
    sk.write(h[:250], np.ones(250), np.zeros(250))
    sk.write(h[250:], np.ones(250), np.zeros(250))  # two batches, same result
    idx = sk.buckets(h).numpy()
    expected = np.bincount(idx.reshape(-1), minlength=3 * 16)
    np.testing.assert_array_equal(sk._count.numpy(), expected)
    assert sk._count.view(3, 16).sum(dim=1).tolist() == [500.0] * 3  # one bucket per table


def test_collisions_share_a_bucket_and_average():
    sk = LSHSketch(dim=3, n_tables=4, n_bits=6, seed=2)
    a = np.array([[1.0, 2.0, -0.5]], dtype=np.float32)
    # a positive multiple of a key hashes identically in every table: a sure collision
    assert torch.equal(sk.buckets(a), sk.buckets(3 * a))
    sk.write(a, [1.0], [0.2])
    sk.write(3 * a, [0.0], [0.6])
    r = sk.read(a, tau=0.1)
    assert r.n_neighbours.tolist() == [4]
    assert r.ybar[0] == pytest.approx(0.5)  # the bucket mean of both samples
    assert r.ybar_base[0] == pytest.approx(0.4)
    assert len(sk) == 4  # one non-empty bucket per table


def test_empty_buckets_are_no_neighbours():
    sk = LSHSketch(dim=3, n_tables=6, n_bits=5, seed=0)
    q = np.array([[0.3, -1.0, 2.0]], dtype=np.float32)
    r = sk.read(q, tau=0.1)
    assert r.n_neighbours.tolist() == [0] and r.ybar.tolist() == [0.0]
    sk.write(q, [1.0], [0.3])
    # -q flips every SimHash bit: it lands in an empty bucket in every table
    r = sk.read(np.vstack([q, -q]), tau=0.1)
    assert r.n_neighbours.tolist() == [6, 0]
    assert r.ybar.tolist() == pytest.approx([1.0, 0.0])


def test_decay_weights_recent_samples_exactly():
    key = np.array([[1.0, 0.0]], dtype=np.float32)
    ys = [1.0] * 30 + [0.0] * 5
    plain, decayed = LSHSketch(2, 2, 2, seed=0), LSHSketch(2, 2, 2, decay=0.8, seed=0)
    for y in ys:
        plain.write(key, [y], [0.5])
        decayed.write(key, [y], [0.5])
    w = 0.8 ** np.arange(len(ys))[::-1]  # the last sample has weight 1
    assert plain.read(key, 1.0).ybar[0] == pytest.approx(30 / 35)
    assert decayed.read(key, 1.0).ybar[0] == pytest.approx(float(w @ ys) / w.sum(), rel=1e-9)
    assert decayed.read(key, 1.0).ybar[0] < 0.5 < plain.read(key, 1.0).ybar[0]


def test_decay_survives_rescaling_and_batches():
    key = np.array([[0.5, 0.5]], dtype=np.float32)
    sk = LSHSketch(2, 3, 2, decay=0.5, seed=0)
    ys = np.tile([1.0, 0.0, 0.0], 40)  # 120 samples: the lazy scale passes 1e12 several times
    sk.write(np.repeat(key, 120, axis=0), ys, np.zeros(120))
    assert math.isfinite(sk._scale) and sk._scale <= 1e12
    w = 0.5 ** np.arange(120)[::-1]
    assert sk.read(key, 1.0).ybar[0] == pytest.approx(float(w @ ys) / w.sum(), rel=1e-6)
    assert sk.effective_count().sum(dim=1).tolist() == pytest.approx([w.sum()] * 3, rel=1e-6)


def test_min_count_turns_decayed_buckets_empty():
    a = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    b = -a  # other buckets in every table
    sk = LSHSketch(3, 4, 3, decay=0.9, min_count=0.5, seed=0)
    sk.write(a, [1.0], [0.0])
    assert sk.read(a, 0.1).n_neighbours.tolist() == [4]
    sk.write(np.repeat(b, 10, axis=0), np.zeros(10), np.zeros(10))  # a's weight: 0.9**10
    assert sk.read(a, 0.1).n_neighbours.tolist() == [0]


def test_reset_forgets_and_keeps_the_footprint():
    rng = np.random.default_rng(1)
    sk = LSHSketch(dim=8, n_tables=16, n_bits=6, decay=0.99, seed=0)
    before = sk.nbytes
    assert before == LSHSketch.footprint(8, 16, 6)
    h = rng.normal(size=(5000, 8)).astype(np.float32)
    sk.write(h, rng.random(5000), rng.random(5000))
    assert sk.nbytes == before and len(sk) > 0
    sk.reset()
    assert len(sk) == 0 and sk.nbytes == before
    assert sk.read(h[:5], 0.1).n_neighbours.tolist() == [0] * 5


def test_non_finite_rows_are_skipped():
    sk = LSHSketch(dim=2, n_tables=2, n_bits=2)
    h = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 1.0]], dtype=np.float32)
    assert sk.write(h, [1.0, 1.0, np.inf], [0.5, 0.5, 0.5]) == 1
    assert np.isfinite(sk._sum_h.numpy()).all() and sk._count.sum().item() == 2.0


def test_state_round_trip_restores_reads():
    rng = np.random.default_rng(5)
    a = LSHSketch(dim=5, n_tables=8, n_bits=4, decay=0.95, seed=4)
    h = rng.normal(size=(200, 5)).astype(np.float32)
    a.write(h, rng.random(200), rng.random(200))
    b = LSHSketch(dim=5, n_tables=8, n_bits=4, decay=0.95, seed=99)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    q = rng.normal(size=(20, 5)).astype(np.float32)
    np.testing.assert_array_equal(a.read(q, 0.1).ybar, b.read(q, 0.1).ybar)
    with pytest.raises(ValueError, match=r"state is for \(dim, n_tables, n_bits\) = \[5, 8, 4\]"):
        LSHSketch(dim=5, n_tables=8, n_bits=5).load_state_dict(a.state_dict())


@pytest.mark.parametrize(("params", "message"), [
    ({"n_bits": 0}, "n_bits must be in 1..24, got 0"),
    ({"decay": 0.0}, r"decay must be in \(0, 1\], got 0.0"),
    ({"n_tables": 0}, "n_tables must be >= 1, got 0"),
    ({"n_bits": 10, "max_bytes": 1000}, "needs .* bytes > max_bytes=1000"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        LSHSketch(dim=4, **params)


def test_wrong_key_shape_and_unknown_kind():
    with pytest.raises(ValueError, match=r"keys must have shape \(n, 4\), got \(2, 3\)"):
        LSHSketch(dim=4).read(np.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match="unknown memory 'lsh'; valid choices: sketch, exact"):
        make_memory("lsh", 4)
