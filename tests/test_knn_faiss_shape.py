"""pf.knn as a stand-in for a flat faiss index: NumPy in gives NumPy out, metric="ip" | "l2" |
"cosine", and a few queries take a one-GEMM fast path with the same exact answer."""

import numpy as np
import pytest
import torch

import platonic_fast as pf
from platonic_fast.ops import knn as knn_mod


def _brute(q, keys, k, metric, exclude_self=False):
    """float64 reference: sort by (score, index), best first."""
    q64, k64 = np.asarray(q, np.float64), np.asarray(keys, np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        k64 = k64 / np.linalg.norm(k64, axis=1, keepdims=True)
    if metric == "l2":
        s = ((q64[:, None, :] - k64[None, :, :]) ** 2).sum(-1)
    else:
        s = -(q64 @ k64.T)
    if exclude_self:
        np.fill_diagonal(s, np.inf)
    idx = np.stack([np.lexsort((np.arange(s.shape[1]), row))[:k] for row in s])
    vals = np.take_along_axis(s, idx, 1)
    return (vals if metric == "l2" else -vals), idx


def _data(n=300, d=24, seed=0):
    g = np.random.default_rng(seed)
    keys = g.standard_normal((n, d)).astype(np.float32)
    keys[10] = keys[3]  # duplicated rows: tied scores go to the smaller index
    keys[50] = keys[3]
    return keys


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("m", [1, 7, 80])  # one query, a small batch (fast path), a larger one
def test_cross_matches_brute_force_and_returns_numpy(metric, m):
    keys = _data()
    queries = np.concatenate([keys[[3]], np.random.default_rng(1).standard_normal((m - 1, 24)).astype(np.float32)])
    vals, idx = pf.knn(queries, keys, 6, metric=metric)
    assert isinstance(vals, np.ndarray) and isinstance(idx, np.ndarray)
    assert vals.dtype == np.float32 and idx.dtype == np.int64 and vals.shape == idx.shape == (m, 6)
    want_v, want_i = _brute(queries, keys, 6, metric)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(vals, want_v, rtol=1e-5, atol=1e-4)
    assert list(idx[0, :3]) == [3, 10, 50]  # the query's three identical keys, in index order
    if metric == "l2":
        assert vals[0, 0] == 0 and (np.diff(vals, axis=1) >= 0).all()
    t_vals, t_idx = pf.knn(torch.from_numpy(queries), torch.from_numpy(keys), 6, metric=metric)
    assert isinstance(t_vals, torch.Tensor) and np.array_equal(t_idx.numpy(), idx)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_self_form_per_metric(metric):
    keys = _data(n=120)
    vals, idx = pf.knn(keys, 5, metric=metric)
    want_v, want_i = _brute(keys, keys, 5, metric, exclude_self=True)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(vals, want_v, rtol=1e-5, atol=1e-4)
    # row 10's nearest are its duplicates 3 and 50 (self excluded), at distance 0 for l2
    assert list(idx[10, :2]) == [3, 50]
    vals, idx = pf.knn(keys, 5, exclude_self=False, metric=metric)
    assert list(idx[3, :3]) == [3, 10, 50]


def test_fast_path_is_taken_and_equals_the_tiled_backend(monkeypatch):
    keys = torch.from_numpy(_data(n=2000, d=40, seed=2))
    queries = torch.cat([keys[:3], torch.randn(5, 40, generator=torch.Generator().manual_seed(3))])
    full = pf.knn(queries, keys, 9, backend="cpu")
    calls = []
    real = knn_mod.search
    monkeypatch.setattr(knn_mod, "search", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = pf.knn(queries, keys, 9)
    assert not calls  # one GEMM, no tiles
    assert torch.equal(fast[1], full[1]) and torch.equal(fast[0], full[0])
    # keys far from unit scale need the exact scaling pass: the fast path hands them on
    pf.knn(queries * 2.0 ** 40, keys * 2.0 ** 40, 9)
    assert calls
    # more queries than the fast path takes: the tiled search
    calls.clear()
    pf.knn(torch.randn(knn_mod.SMALL_BATCH_QUERIES + 1, 40), keys, 9)
    assert calls


def test_float64_and_half_inputs():
    keys = _data(n=200)
    v64, i64 = pf.knn(keys[:2].astype(np.float64), keys.astype(np.float64), 4, metric="l2")
    assert v64.dtype == np.float64 and list(i64[0, :1]) == [0]
    vh, ih = pf.knn(torch.from_numpy(keys[:2]).half(), torch.from_numpy(keys).half(), 4)
    assert ih.shape == (2, 4)


def test_bad_arguments():
    keys = _data(n=60)
    with pytest.raises(ValueError, match="metric must be one of"):
        pf.knn(keys, 3, metric="hamming")
    bad = keys.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="keys contains NaN"):
        pf.knn(keys[:1], bad, 3)  # the fast path checks the keys itself
    with pytest.raises(ValueError, match="keys contains NaN"):
        pf.knn(keys[:1], bad, 3, metric="l2")
    zero = keys.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match="keys row 4 is all zeros"):
        pf.knn(keys[:1], zero, 3, metric="cosine")
    with pytest.raises(ValueError, match="x row 4 is all zeros"):
        pf.knn(zero, 3, metric="cosine")
