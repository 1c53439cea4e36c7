"""CKNNA's sparse sums (ops/cknna_sums.py): every backend against the plain-torch reference, and
the reference against the dense masked-kernel sums of docs/metrics.md#cknna."""

import pytest
import torch

from platonic_fast.ops.cknna_sums import SUM_NAMES, cknna_sums
from platonic_fast.ops.knn import knn_torch

from conftest import backend_device_params, randn, requires_cuda

CASES = [(5, 2), (37, 10), (130, 64),
         pytest.param(300, 129, marks=pytest.mark.slow), pytest.param(220, 219, marks=pytest.mark.slow)]


def _lists(n: int, k: int, seed: int, dtype=torch.float64, exclude_self: bool = True):
    """Neighbour lists of two correlated feature sets, with their inner products as values."""
    a = randn(n, 12, seed=seed, normalize=True, dtype=torch.float64)
    b = torch.nn.functional.normalize(a[:, :8] + 0.7 * randn(n, 8, seed=seed + 1, dtype=torch.float64), dim=1)
    va, ia = knn_torch(a, None, k, exclude_self=exclude_self)
    vb, ib = knn_torch(b, None, k, exclude_self=exclude_self)
    return ia, va.to(dtype), ib, vb.to(dtype)


def _dense_sums(ia, va, ib, vb, zero_diagonal: bool) -> dict:
    """The sums from dense N x N masked kernels (the formulas of docs/metrics.md#cknna, written out)."""
    n = ia.shape[0]
    K = torch.zeros(n, n, dtype=torch.float64).scatter_(1, ia, va.to(torch.float64))
    L = torch.zeros(n, n, dtype=torch.float64).scatter_(1, ib, vb.to(torch.float64))
    in_k = torch.zeros(n, n, dtype=torch.bool).scatter_(1, ia, True)
    in_l = torch.zeros(n, n, dtype=torch.bool).scatter_(1, ib, True)
    M = in_k & in_l
    if zero_diagonal:
        M.fill_diagonal_(False)
    Km, Lm = K * M, L * M
    one = torch.ones(n, dtype=torch.float64)
    return {"trace_kl": float((Km * Lm.T).sum()), "sum_k": float(Km.sum()), "sum_l": float(Lm.sum()),
            "k_then_l": float(one @ Km @ Lm @ one), "l_then_k": float(one @ Lm @ Km @ one),
            "mask_count": float(M.sum())}


@pytest.mark.parametrize("zero_diagonal", [True, False])
@pytest.mark.parametrize("n,k", CASES[:3])
def test_torch_reference_matches_dense(n, k, zero_diagonal):
    lists = _lists(n, k, seed=n, exclude_self=zero_diagonal)
    got = cknna_sums(*lists, zero_diagonal, backend="torch")
    want = _dense_sums(*lists, zero_diagonal)
    for name in SUM_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("backend,device", backend_device_params("cknna_sums"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("zero_diagonal", [True, False])
@pytest.mark.parametrize("n,k", CASES, ids=lambda v: str(v))
def test_backend_matches_torch_reference(n, k, zero_diagonal, dtype, backend, device):
    from platonic_fast._backends import backends_of

    lists = _lists(n, k, seed=n + k, dtype=dtype, exclude_self=zero_diagonal)
    want = cknna_sums(*lists, zero_diagonal, backend="torch")
    moved = [t.to(device) for t in lists]
    limit = backends_of("cknna_sums")[backend].limit_k()
    if limit is not None and k > limit:
        with pytest.raises(ValueError, match="k <="):  # the registry refuses; nothing falls back
            cknna_sums(*moved, zero_diagonal, backend=backend)
        return
    got = cknna_sums(*moved, zero_diagonal, backend=backend)
    # float32 values are summed in float64 by every backend: only the order of the sums differs.
    for name in SUM_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), name


def test_shapes_must_agree():
    ia, va, ib, vb = _lists(20, 4, seed=0)
    with pytest.raises(ValueError, match="N x k"):
        cknna_sums(ia, va, ib[:, :3], vb[:, :3], True)


@requires_cuda
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("topk", [10, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cknna_on_gpu_matches_cpu(unbiased, topk, dtype):
    import platonic_fast as pf

    g = torch.Generator().manual_seed(9)
    a = torch.nn.functional.normalize(torch.randn(700, 48, generator=g), dim=1).to(dtype)
    b = torch.nn.functional.normalize(a[:, :32] + torch.randn(700, 32, generator=g, dtype=dtype), dim=1)
    want = pf.cknna(a, b, topk=topk, unbiased=unbiased)
    got = pf.cknna(a.cuda(), b.cuda(), topk=topk, unbiased=unbiased, backend="cuda")
    assert got == pytest.approx(want, abs=1e-5)
