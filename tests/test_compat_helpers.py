"""The reference metrics.py's module-level helpers in platonic_fast.compat: same names, signatures
and return types; values against the plain dense formulas (tests/dense_reference.py)."""

import inspect

import numpy as np
import pytest
import torch

from platonic_fast import compat
from platonic_fast.compat import metrics as C

import dense_reference as R

# name -> the reference's parameters, in order, with defaults
SIGNATURES = {
    "hsic_unbiased": "(K, L)", "hsic_biased": "(K, L)", "compute_knn_accuracy": "(knn)",
    "compute_nearest_neighbors": "(feats, topk=1)", "longest_ordinal_sequence": "(X, Y)",
    "compute_distance": "(X, Y, dist_fn)", "remove_outliers": "(feats, q, exact=False, max_threshold=None)",
    "lcs_length": "(x, y)",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signatures_match_the_reference(name):
    fn = getattr(compat, name)
    assert str(inspect.signature(fn)) == SIGNATURES[name] and fn is getattr(C, name)


@pytest.fixture(scope="module")
def kernels():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 12, generator=g), torch.randn(40, 9, generator=g)
    K, L = a @ a.T, b @ b.T
    M = torch.rand(40, 40, generator=g)  # not symmetric, like CKNNA's masked kernels
    return K, L, M


def test_hsic_values_and_types(kernels):
    K, L, M = kernels
    for fn, ref in ((C.hsic_biased, R.hsic_biased), (C.hsic_unbiased, R.hsic_unbiased)):
        for x, y in ((K, L), (K * M, L * M.T), (M, M)):
            got = fn(x, y)
            assert isinstance(got, torch.Tensor) and got.dim() == 0 and got.dtype == torch.float32
            want = ref(x.double(), y.double())
            assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-4)
    assert C.hsic_biased(K.double(), L.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="at least 4 samples"):
        C.hsic_unbiased(K[:3, :3], L[:3, :3])
    with pytest.raises(ValueError, match="square kernel matrices"):
        C.hsic_biased(K, L[:5, :5])


def test_nearest_neighbours_and_knn_accuracy():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    knn = C.compute_nearest_neighbors(x, 5)
    assert knn.dtype == torch.int64 and knn.shape == (50, 5)
    s = (x @ x.T).fill_diagonal_(-1e8)
    assert torch.equal(knn, s.argsort(dim=1, descending=True, stable=True)[:, :5])
    assert C.compute_nearest_neighbors(x).shape == (50, 1)  # topk defaults to 1
    y = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    knn_b = C.compute_nearest_neighbors(y, 5)
    acc = C.compute_knn_accuracy(knn[knn_b])  # how cycle kNN calls it: N x k x k
    assert isinstance(acc, torch.Tensor) and acc.dim() == 0 and acc.dtype == torch.float32
    assert float(acc) == pytest.approx(compat.AlignmentMetrics.cycle_knn(x, y, 5), abs=1e-7)
    with pytest.raises(ValueError, match="Expected feats to be 2D"):
        C.compute_nearest_neighbors(x[0], 3)


def test_lcs_and_compute_distance():
    assert C.lcs_length([1, 2, 3, 4], [2, 4, 3]) == 2 and C.lcs_length([], [1]) == 0
    assert C.lcs_length(np.array([5, 1, 2]), np.array([5, 1, 2])) == 3
    g = torch.Generator().manual_seed(2)
    # neighbour lists (no repeats within a row: the compiled op), then sequences with repeats
    lists = [torch.stack([torch.randperm(12, generator=g)[:6] for _ in range(30)]) for _ in range(2)]
    for X, Y in (lists, (torch.randint(0, 12, (30, 6), generator=g), torch.randint(0, 12, (30, 6), generator=g))):
        lcs = C.longest_ordinal_sequence(X, Y)
        want = torch.tensor([R.lcs_length_plain(x.tolist(), y.tolist()) for x, y in zip(X, Y)], dtype=torch.float64)
        assert lcs.dtype == torch.float64 and torch.equal(lcs, want)
    lcs = C.longest_ordinal_sequence(X, Y)
    assert lcs.dtype == torch.float64 and lcs.shape == (30,)
    want = torch.tensor([R.lcs_length_plain(x.tolist(), y.tolist()) for x, y in zip(X, Y)], dtype=torch.float64)
    assert torch.equal(lcs, want)
    # any dist_fn, called with NumPy rows as the reference does; the compiled LCS gives the same
    seen = []

    def plain(x, y):
        seen.append(type(x))
        return R.lcs_length_plain(list(x), list(y))

    assert torch.equal(C.compute_distance(X, Y, plain), want) and seen[0] is np.ndarray
    lev = C.compute_distance(X, Y, lambda x, y: R.levenshtein_plain(list(x), list(y)))
    assert lev.dtype == torch.float64


def test_torchaudio_edit_distance_runs_in_the_core():
    taf = pytest.importorskip("torchaudio.functional")
    g = torch.Generator().manual_seed(3)
    lists = [torch.stack([torch.randperm(12, generator=g)[:7] for _ in range(25)]) for _ in range(2)]
    for X, Y in (lists, (torch.randint(0, 9, (25, 7), generator=g), torch.randint(0, 9, (25, 7), generator=g))):
        want = torch.tensor([taf.edit_distance(x.tolist(), y.tolist()) for x, y in zip(X, Y)], dtype=torch.float64)
        assert torch.equal(C.compute_distance(X, Y, taf.edit_distance), want)


def test_an_edit_distance_named_like_torchaudios_takes_the_core(monkeypatch):
    """Without torchaudio here: a stand-in with its name and module is recognised, and the core's
    Levenshtein equals the plain one on neighbour lists."""
    calls = []

    def edit_distance(x, y):
        calls.append(1)
        return R.levenshtein_plain(list(x), list(y))

    edit_distance.__module__ = "torchaudio.functional.functional"
    g = torch.Generator().manual_seed(4)
    X, Y = (torch.stack([torch.randperm(15, generator=g)[:8] for _ in range(20)]) for _ in range(2))
    want = torch.tensor([R.levenshtein_plain(x.tolist(), y.tolist()) for x, y in zip(X, Y)], dtype=torch.float64)
    assert torch.equal(C.compute_distance(X, Y, edit_distance), want) and not calls
