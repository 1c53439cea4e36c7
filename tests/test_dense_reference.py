"""Self-checks of tests/dense_reference.py (needs only torch, not platonic_fast).

The other test files trust this module, so it is checked against textbook forms and against
the golden values (docs/metrics.md#golden-values), which were produced by the platonic-rep metrics.py.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import dense_reference as R
from conftest import grid, randn


def _golden_ab():
    torch.manual_seed(0)
    a = torch.randn(64, 8192)
    b = torch.randn(64, 8192)
    return F.normalize(a, dim=-1), F.normalize(b, dim=-1)


def test_stable_sort_breaks_ties_by_smaller_index():
    x = torch.tensor([[1.0], [1.0], [1.0], [0.5], [1.0]])
    vals, idx = R.knn(x, 3)
    # row 0: every other row with value 1 ties at 1.0 -> 1, 2, 4 in index order
    assert idx[0].tolist() == [1, 2, 4]
    assert idx[3].tolist() == [0, 1, 2]
    assert vals.dtype == torch.float64


def test_knn_exclude_self_false_keeps_diagonal():
    x = grid(20, 3, seed=1)
    _, idx = R.knn(x, 20, exclude_self=False)
    assert sorted(idx[0].tolist()) == list(range(20))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_batched_dp_equals_plain_dp(k):
    g = torch.Generator().manual_seed(k)
    # small alphabet -> many matches, the interesting regime for both DPs
    x = torch.randint(0, 6, (200, k), generator=g)
    y = torch.randint(0, 6, (200, k), generator=g)
    lcs = R.batched_lcs(x, y)
    lev = R.batched_levenshtein(x, y)
    for r in range(200):
        assert int(lcs[r]) == R.lcs_length_plain(x[r].tolist(), y[r].tolist())
        assert int(lev[r]) == R.levenshtein_plain(x[r].tolist(), y[r].tolist())


def test_plain_dp_textbook_cases():
    assert R.levenshtein_plain("kitten", "sitting") == 3
    assert R.lcs_length_plain("ABCBDAB", "BDCABA") == 4
    assert R.levenshtein_plain([], [1, 2]) == 2


def test_hsic_biased_expansion_matches_explicit_centering():
    a, b = randn(30, 5, 1, torch.float64), randn(30, 7, 2, torch.float64)
    K, L = a @ a.T, b @ b.T
    n = 30
    one = torch.ones(n, 1, dtype=torch.float64)
    expanded = (torch.trace(K @ L) - 2 * float((K @ one).T @ (L @ one)) / n
                + float(one.T @ K @ one) * float(one.T @ L @ one) / n**2)
    assert math.isclose(float(R.hsic_biased(K, L)), float(expanded), rel_tol=1e-10)


def test_hsic_unbiased_matches_song_colsum_form():
    g = torch.Generator().manual_seed(4)
    K = torch.randn(12, 12, generator=g, dtype=torch.float64)  # non-symmetric on purpose
    L = torch.randn(12, 12, generator=g, dtype=torch.float64)
    n = 12
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    s_kl = float((Kt.sum(0) * Lt.sum(1)).sum())  # Σ(K̃L̃)_ij via column and row sums
    want = (float((Kt * Lt.T).sum()) + float(Kt.sum() * Lt.sum()) / ((n - 1) * (n - 2))
            - 2 * s_kl / (n - 2)) / (n * (n - 3))
    assert math.isclose(float(R.hsic_unbiased(K, L)), want, rel_tol=1e-10)


def test_cka_self_is_one():
    a = randn(40, 6, 3)
    assert R.cka(a, a) == pytest.approx(1.0, abs=1e-5)
    assert R.unbiased_cka(a, a) == pytest.approx(1.0, abs=1e-5)


def test_svcca_self_and_column_scaling_invariance():
    # standardisation undoes a per-column scale and shift; a column permutation keeps the span
    a = randn(80, 12, 5, torch.float64)
    scale = torch.linspace(0.5, 7.0, 12, dtype=torch.float64)
    b = (a * scale + 3.0)[:, torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert R.svcca(a, a, 10) == pytest.approx(1.0, abs=1e-9)
    assert R.svcca(a, b, 10) == pytest.approx(1.0, abs=1e-9)
    b = randn(80, 9, 7, torch.float64)
    assert 0.0 <= R.svcca(a, b, 5) <= 1.0


def test_remove_outliers_approx_matches_torch_quantile_small():
    x = randn(9, 50, 8) * 3
    t = torch.quantile(x.abs().flatten(1).to(torch.float64), 0.9, dim=1).mean()
    got = R.remove_outliers(x, 0.9, exact=False)
    assert float(got.abs().max()) == pytest.approx(float(t), rel=1e-12)


def test_remove_outliers_q1_identity():
    x = randn(5, 4, 1)
    assert torch.equal(R.remove_outliers(x, 1.0), x.to(torch.float64))


GOLDEN_1 = dict(mutual_knn=0.146875, cycle_knn=0.78125, lcs_knn=1.09375,
                edit_distance_knn=0.01875, cka=0.992307, unbiased_cka=-0.024716,
                cknna=0.094864)


@pytest.mark.parametrize("metric", list(GOLDEN_1))
def test_reference_reproduces_golden_seed0(metric):
    a, b = _golden_ab()
    kw = {"topk": 10} if "knn" in metric else {}
    assert R.measure(metric, a, b, **kw) == pytest.approx(GOLDEN_1[metric], abs=1.5e-6)


def test_reference_reproduces_golden_outliers():
    torch.manual_seed(2)
    t = torch.randn(8, 3, 16) * torch.tensor([1.0, 5.0, 20.0]).view(1, 3, 1)
    assert float(R.remove_outliers(t, 0.95, True).abs().max()) == pytest.approx(25.263763, abs=1.5e-6)
    assert float(R.remove_outliers(t, 0.95, False).abs().max()) == pytest.approx(23.59700, abs=1.5e-5)


def test_align_dense_best_rule():
    # identical models: the diagonal pairs score 1 on mutual_knn; best is the first maximum
    x = torch.stack([randn(30, 8, s) for s in range(3)], dim=1)
    scores, best, layers = R.align_dense(x, x, "mutual_knn", topk=5)
    assert scores.shape == (3, 3)
    assert best == pytest.approx(1.0)
    assert layers == (0, 0)
    for i, j in itertools.product(range(3), range(3)):
        if i == j:
            assert float(scores[i, j]) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna",
                                    "cka", "unbiased_cka"])
def test_reference_approach_equals_oracle_on_tie_free_data(metric):
    # The benchmarks' anchor (a): platonic-rep's operations (argsort / topk / per-row loops) in
    # float32 pick the same neighbours as the stable sort when nothing ties.
    a, b = randn(150, 24, 8, torch.float64), randn(150, 16, 9, torch.float64)
    kw = {"topk": 7} if "knn" in metric else {}
    oracle = R.measure(metric, a, b, **kw)
    assert R.measure(metric, a, b, approach="reference", **kw) == pytest.approx(oracle, abs=1e-12)
    assert R.measure(metric, a, b, dtype=torch.float32, approach="reference", **kw) == pytest.approx(oracle, abs=1e-4)


def test_reference_approach_knn_lists_match_and_bad_name_raises():
    x = randn(60, 5, 10, torch.float64)
    assert torch.equal(R.knn(x, 9, approach="reference")[1], R.knn(x, 9)[1])
    with pytest.raises(ValueError, match="approach"):
        R.knn(x, 3, approach="dense")
    with pytest.raises(ValueError, match="approach"):
        R.measure("cka", x, x, approach="dense")
