"""Relabelled neighbour lists of a row-permuted set (ops/permute_lists.py): every backend against
the plain reference, and against kNN recomputed from the permuted features on tie-free data."""

import pytest
import torch

from platonic_fast.ops.knn import knn_torch
from platonic_fast.ops.permute_lists import check_permutation, inverse_permutation, permute_lists

from conftest import backend_device_params


def _lists(n, k, seed=0):
    x = torch.randn(n, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, knn_torch(x, x, k, exclude_self=True)[1]


@pytest.mark.parametrize("backend,device", backend_device_params("permute_lists"))
@pytest.mark.parametrize("n,k", [(5, 1), (5, 4), (257, 13), (1000, 10), (64, 63)])
def test_backends_match_reference(backend, device, n, k):
    _, lists = _lists(n, k, seed=n + k)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(k))
    want = torch.argsort(perm)[lists[perm]]
    got = permute_lists(lists.to(device), perm.to(device), backend=backend)
    assert got.device.type == device and got.dtype == torch.int64
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_device_params("permute_lists"))
def test_int32_and_strided_lists(backend, device):
    _, lists = _lists(300, 12)
    wide = torch.stack([lists, lists], dim=2)[..., 0]  # a non-contiguous view of the same lists
    assert not wide.is_contiguous()
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    want = permute_lists(lists, perm, backend="torch")
    for src in (lists.to(torch.int32), wide):
        got = permute_lists(src.to(device), perm.to(device), backend=backend)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("n,k", [(50, 5), (211, 17), (40, 39)])
def test_equals_knn_of_permuted_features(n, k):
    x, lists = _lists(n, k, seed=7 * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    recomputed = knn_torch(x[perm], x[perm], k, exclude_self=True)[1]
    torch.testing.assert_close(permute_lists(lists, perm), recomputed, rtol=0, atol=0)


def test_identity_and_inverse():
    _, lists = _lists(60, 6)
    ident = torch.arange(60)
    torch.testing.assert_close(permute_lists(lists, ident), lists, rtol=0, atol=0)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    inv = inverse_permutation(perm)
    # permuting by π then by π⁻¹ gives the lists back
    torch.testing.assert_close(permute_lists(permute_lists(lists, perm), inv), lists, rtol=0, atol=0)


def test_bad_permutations():
    _, lists = _lists(10, 3)
    with pytest.raises(ValueError, match="shape \\(10,\\)"):
        permute_lists(lists, torch.arange(9))
    with pytest.raises(ValueError, match="repeats"):
        permute_lists(lists, torch.tensor([0, 0, 2, 3, 4, 5, 6, 7, 8, 9]))
    with pytest.raises(ValueError, match="outside"):
        permute_lists(lists, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 10]))
    with pytest.raises(TypeError, match="integers"):
        permute_lists(lists, torch.arange(10.0))
    with pytest.raises(TypeError, match="N x k integer"):
        permute_lists(lists.double(), torch.arange(10))
    with pytest.raises(ValueError, match="outside"):
        permute_lists(torch.full((10, 3), 10), torch.arange(10), backend="cpu")
    assert check_permutation([2, 0, 1], 3).tolist() == [2, 0, 1]


def _sets(count, n, k, seed):
    out = []
    for s in range(count):
        x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed + s), dtype=torch.float64)
        out.append(knn_torch(x, x, k, exclude_self=True))
    return out


@pytest.mark.parametrize("kind", ["mutual_overlap", "cycle_hits", "lcs_lengths", "edit_distances"])
@pytest.mark.parametrize("n,k", [(7, 6), (130, 9)])
def test_null_counts_compiled_equal_the_loop(kind, n, k, monkeypatch):
    from platonic_fast import _backends
    from platonic_fast.ops import permute_lists as op
    from platonic_fast.ops.neighbour_lists import run

    a = [i for _, i in _sets(2, n, k, 0)]
    b = [i for _, i in _sets(3, n, k, 10)]
    perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in range(5)])
    got = op.null_counts(kind, a, b, perms)
    for t, p in enumerate(perms):
        for i in range(2):
            for j in range(3):
                assert int(got[t, i, j]) == int(run(kind, a[i], permute_lists(b[j], p)).sum())
    monkeypatch.setattr(_backends, "core_available", lambda: False)
    torch.testing.assert_close(op.null_counts(kind, a, b, perms), got, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zero_diagonal", [True, False])
def test_null_cknna_sums_compiled_equal_the_loop(dtype, zero_diagonal, monkeypatch):
    from platonic_fast import _backends
    from platonic_fast.ops import permute_lists as op

    n, k = 90, 8
    a, b = _sets(2, n, k, 3), _sets(2, n, k, 30)
    perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in range(4)])
    args = ([i for _, i in a], [v.to(dtype) for v, _ in a], [i for _, i in b], [v.to(dtype) for v, _ in b], perms,
            zero_diagonal)
    got = op.null_cknna_sums(*args)
    monkeypatch.setattr(_backends, "core_available", lambda: False)
    torch.testing.assert_close(op.null_cknna_sums(*args), got, rtol=1e-12, atol=1e-12)


def test_compiled_nulls_reject_bad_permutations():
    from platonic_fast import _core

    _, lists = _lists(10, 3)
    host = lists.numpy()
    bad = torch.stack([torch.arange(10), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])]).numpy()
    with pytest.raises(ValueError, match="permutation 1 is not a permutation"):
        _core.permute_lists_scores("mutual_overlap", [host], [host], bad)
    with pytest.raises(ValueError, match="count x N"):
        _core.permute_lists_scores("mutual_overlap", [host], [host], torch.zeros(2, 9, dtype=torch.int64).numpy())
    with pytest.raises(ValueError, match="every list set must be 10 x 3"):
        _core.permute_lists_scores("mutual_overlap", [host], [host[:, :2].copy()], torch.arange(10)[None].numpy())
