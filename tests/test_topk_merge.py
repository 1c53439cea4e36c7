"""k-selection merge of partial top-k lists (ops/topk_merge.py): the merge of per-shard top-k
lists equals the top-k of the whole; CUDA kernel against the torch reference when a GPU is here."""

import pytest
import torch

from platonic_fast.ops.knn import knn_torch
from platonic_fast.ops.topk_merge import topk_merge

from conftest import backend_device_params

GPU = torch.cuda.is_available()


def _shards(x, k, parts):
    """Top-k of x's rows against each key shard, indices made global, laid side by side."""
    vals, idx = [], []
    bounds = torch.linspace(0, x.shape[0], parts + 1).long().tolist()
    for s0, s1 in zip(bounds, bounds[1:]):
        kk = min(k, s1 - s0)
        v, i = knn_torch(x, x[s0:s1], kk, exclude_self=False)
        vals.append(v)
        idx.append(i + s0)
    return torch.cat(vals, 1), torch.cat(idx, 1)


@pytest.mark.parametrize("n,d,k,parts", [(50, 8, 5, 3), (97, 5, 17, 4), (40, 3, 40, 5)])
def test_merged_shards_equal_the_whole(n, d, k, parts):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)).double()
    v, i = _shards(x, k, parts)
    mv, mi = topk_merge(v, i, k, backend="torch")
    wv, wi = knn_torch(x, x, k, exclude_self=False)
    torch.testing.assert_close(mi, wi, rtol=0, atol=0)
    torch.testing.assert_close(mv, wv)


def test_ties_and_empty_slots():
    v = torch.tensor([[1.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0]])
    i = torch.tensor([[7, 9, 4, -1], [5, 2, -1, 8]])
    mv, mi = topk_merge(v, i, 3)
    assert mi.tolist() == [[4, 9, 7], [2, 5, 8]]
    mv, mi = topk_merge(v[:1], i[:1], 4)
    assert mi.tolist() == [[4, 9, 7, -1]] and mv[0, 3] == -torch.inf


def test_bad_arguments():
    with pytest.raises(ValueError, match="N x m"):
        topk_merge(torch.zeros(3, 4), torch.zeros(3, 5, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="k must be"):
        topk_merge(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="NaN"):
        topk_merge(torch.tensor([[1.0, float("nan")]]), torch.tensor([[0, 1]]), 1)
    with pytest.raises(TypeError, match="floating point"):
        topk_merge(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64), 2)
    if GPU:
        with pytest.raises(ValueError, match="one device"):
            topk_merge(torch.zeros(3, 4).cuda(), torch.zeros(3, 4, dtype=torch.int64), 2)


@pytest.mark.parametrize("backend,device", backend_device_params("topk_merge"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k", [20, 129])
@pytest.mark.slow
def test_every_backend_matches_reference(backend, device, dtype, k):
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(k)).to(dtype)
    v, i = _shards(x, k, 7)
    rv, ri = topk_merge(v, i, k, backend="torch")
    from platonic_fast._backends import backends_of

    limit = backends_of("topk_merge")[backend].limit_k()
    if limit is not None and k > limit:
        with pytest.raises(ValueError, match="k <="):  # declared by the registry; nothing falls back
            topk_merge(v.to(device), i.to(device), k, backend=backend)
        return
    cv, ci = topk_merge(v.to(device), i.to(device), k, backend=backend)
    torch.testing.assert_close(ci.cpu(), ri, rtol=0, atol=0)
    torch.testing.assert_close(cv.cpu(), rv)
