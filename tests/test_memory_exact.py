"""The exact kNN memory agrees with brute force; the ring buffer stays bounded."""

import math

import numpy as np
import pytest

from streamadapt import state as state_io
from streamadapt.memory import ExactMemory, compensate


def _brute(entries, q, k, tau, decay=1.0):
    """Reference: cosine to every stored entry, top k, softmax(s / tau) * decay^age."""
    t_now = len(entries) and max(e[3] for e in entries)
    sims = [(float(q @ h) / (np.linalg.norm(q) * np.linalg.norm(h)), y, yb, t)
            for h, y, yb, t in entries]
    top = sorted(sims, key=lambda s: -s[0])[:k]
    logits = np.array([s / tau + (t_now - t) * math.log(decay) for s, _, _, t in top])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    return float(w @ [s[1] for s in top]), float(w @ [s[2] for s in top])


@pytest.mark.parametrize("decay", [1.0, 0.97])
def test_agrees_with_brute_force_over_a_wrapped_ring(decay):
    rng = np.random.default_rng(0)
    mem = ExactMemory(dim=5, capacity=50, n_neighbors=7, decay=decay)
    entries = []
    for t0 in range(0, 130, 13):  # 130 samples into 50 slots: the ring wraps twice
        h = rng.normal(size=(13, 5)).astype(np.float32)
        y, yb = rng.random(13).round(), rng.random(13)
        mem.write(h, y, yb)
        entries += [(h[i], y[i], yb[i], t0 + i) for i in range(13)]
    kept = entries[-50:]
    q = rng.normal(size=(25, 5)).astype(np.float32)
    got = mem.read(q, tau=0.3)
    for i in range(25):
        ybar, ybar_base = _brute(kept, q[i], 7, 0.3, decay)
        assert got.ybar[i] == pytest.approx(ybar, abs=1e-6)
        assert got.ybar_base[i] == pytest.approx(ybar_base, abs=1e-6)
    assert got.n_neighbours.tolist() == [7] * 25 and len(mem) == 50


def test_fewer_entries_than_k_and_empty_memory():
    mem = ExactMemory(dim=2, capacity=10, n_neighbors=4)
    r = mem.read(np.ones((3, 2)), tau=0.1)
    assert r.n_neighbours.tolist() == [0, 0, 0] and not r.found.any()
    mem.write(np.array([[1.0, 0.0], [0.0, 1.0]]), [1.0, 0.0], [0.5, 0.5])
    assert mem.read(np.array([[1.0, 0.0]]), 0.1).n_neighbours.tolist() == [2]


def test_batch_larger_than_capacity_keeps_the_last_samples():
    mem = ExactMemory(dim=1, capacity=3, n_neighbors=3)
    nbytes = mem.nbytes
    mem.write(np.ones((10, 1)), np.arange(10.0), np.zeros(10))
    assert sorted(mem._y.tolist()) == [7.0, 8.0, 9.0] and mem.nbytes == nbytes
    assert mem.read(np.ones((1, 1)), 1e6).ybar[0] == pytest.approx(8.0)


def test_reset_skip_non_finite_and_round_trip():
    rng = np.random.default_rng(2)
    a = ExactMemory(dim=3, capacity=20, n_neighbors=5, decay=0.9)
    h = rng.normal(size=(15, 3)).astype(np.float32)
    h[4, 1] = np.inf
    assert a.write(h, rng.random(15), rng.random(15)) == 14
    b = ExactMemory(dim=3, capacity=20, n_neighbors=5, decay=0.9)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    q = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.read(q, 0.1).ybar, b.read(q, 0.1).ybar)
    a.reset()
    assert len(a) == 0 and a.read(q, 0.1).n_neighbours.tolist() == [0] * 4


@pytest.mark.parametrize(("params", "message"), [
    ({"capacity": 0}, "capacity must be >= 1, got 0"),
    ({"n_neighbors": 0}, "n_neighbors must be >= 1, got 0"),
    ({"decay": 1.5}, r"decay must be in \(0, 1\], got 1.5"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        ExactMemory(dim=2, **params)


def test_compensation_cases():
    y_base = np.array([0.3, 0.3, 0.9])
    ybar, ybar_base = np.array([0.8, 0.8, 1.0]), np.array([0.5, 0.5, 0.1])
    found = np.array([True, False, True])
    # gamma = 1 is the paper's (1 - lam) * y_base + lam * ybar
    got = compensate(y_base, ybar, ybar_base, found, lam=0.4, gamma=1.0)
    np.testing.assert_allclose(got, [0.6 * 0.3 + 0.4 * 0.8, 0.3, 0.6 * 0.9 + 0.4 * 1.0])
    # lam = 0 is the base model, whatever the memory says
    np.testing.assert_array_equal(compensate(y_base, ybar, ybar_base, found, lam=0.0,
                                             gamma=0.3), y_base)
    # gamma = 0 adds the neighbours' residual; clamped for clicks, not for regression
    assert compensate(y_base, ybar, ybar_base, found, lam=1.0, gamma=0.0)[2] == 1.0
    assert compensate(y_base, ybar, ybar_base, found, lam=1.0, gamma=0.0,
                      clamp=False)[2] == pytest.approx(1.8)
