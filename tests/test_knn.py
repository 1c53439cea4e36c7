"""pf.knn (self and cross form) against the float64 dense reference.

Index equality is checked exactly where the answer is unambiguous: float64 inputs (Gaussian:
tie-free with probability 1) and "grid" data (dyadic values whose dot products are exact in
float32, so exact ties exist and the SPEC's smaller-index rule decides). Float32 / low-precision
Gaussian inputs get the near-tie-tolerant check of conftest.check_knn.
"""

import numpy as np
import pytest
import torch

from conftest import (DEVICES, backend_params, check_knn, grid, randn, with_duplicates)

# Sizes chosen to straddle tile boundaries (64/128/256/1024) without landing on them.
SELF_SHAPES = [
    pytest.param(5, 1, id="5x1"),
    pytest.param(37, 3, id="37x3"),
    pytest.param(257, 65, id="257x65"),
    pytest.param(1024, 768, id="1024x768"),
    pytest.param(2000, 33, id="2000x33"),
]


def _ks(n):
    return sorted({1, min(10, n - 1), n - 1})


def _self_cases():
    for p in SELF_SHAPES:
        n, d = p.values
        for k in _ks(n):
            yield pytest.param(n, d, k, id=f"{p.id}-k={k}")


@pytest.mark.parametrize("n,d,k", list(_self_cases()))
def test_self_float64_exact(pf, n, d, k):
    x = randn(n, d, seed=n + d, dtype=torch.float64)
    vals, idx = pf.knn(x, k)
    check_knn(vals, idx, x, k, exact=True)
    assert torch.as_tensor(vals).dtype == torch.float64


@pytest.mark.parametrize("n,d,k", list(_self_cases()))
def test_self_float32_gaussian(pf, n, d, k):
    x = randn(n, d, seed=7 * n + d, dtype=torch.float32)
    vals, idx = pf.knn(x, k)
    check_knn(vals, idx, x, k)
    assert torch.as_tensor(vals).dtype == torch.float32


@pytest.mark.parametrize("n,d,k", [
    pytest.param(5, 1, 4, id="5x1-k=4"),
    pytest.param(257, 65, 1, id="257x65-k=1"),
    pytest.param(257, 65, 256, id="257x65-k=N-1"),
    pytest.param(1030, 96, 10, id="1030x96-k=10"),
    pytest.param(2000, 33, 7, id="2000x33-k=7"),
])
def test_self_ties_smaller_index_first(pf, n, d, k):
    # duplicated rows of dyadic data: exact ties both between duplicates and by chance
    x = with_duplicates(grid(n, d, seed=n), seed=d)
    vals, idx = pf.knn(x, k)
    check_knn(vals, idx, x, k, exact=True)


def test_all_rows_identical(pf):
    x = torch.ones(9, 4)
    _, idx = pf.knn(x, 8)
    want = torch.tensor([[j for j in range(9) if j != i] for i in range(9)])
    assert torch.equal(torch.as_tensor(idx).cpu(), want)


def test_integer_valued_features_ties(pf):
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    vals, idx = pf.knn(x, 3)
    check_knn(vals, idx, x, 3, exact=True)
    # row 0 ties at 1.0 with rows 1, 3, 4 -> 1, 3, 4
    assert torch.as_tensor(idx)[0].tolist() == [1, 3, 4]


@pytest.mark.parametrize("n,d,k", [
    pytest.param(5, 1, 5, id="5x1-k=N"),
    pytest.param(257, 65, 3, id="257x65-k=3"),
    pytest.param(257, 65, 257, id="257x65-k=N"),
    pytest.param(1030, 17, 10, id="1030x17-k=10"),
])
def test_self_include_self(pf, n, d, k):
    x = with_duplicates(grid(n, d, seed=3 * n), seed=1)
    vals, idx = pf.knn(x, k, exclude_self=False)
    check_knn(vals, idx, x, k, exclude_self=False, exact=True)
    xg = randn(n, d, seed=n, dtype=torch.float64)
    vals, idx = pf.knn(xg, k, exclude_self=False)
    check_knn(vals, idx, xg, k, exclude_self=False, exact=True)


def test_include_self_gaussian_self_is_first(pf):
    # normalised rows: i is its own strictly best match
    x = randn(300, 20, seed=4, normalize=True)
    _, idx = pf.knn(x, 1, exclude_self=False)
    assert torch.equal(torch.as_tensor(idx).cpu().view(-1), torch.arange(300))


@pytest.mark.parametrize("nq,nk,d,k", [
    pytest.param(1, 5, 1, 5, id="1x5x1-k=5"),
    pytest.param(300, 1500, 37, 1, id="300x1500x37-k=1"),
    pytest.param(300, 1500, 37, 16, id="300x1500x37-k=16"),
    pytest.param(129, 257, 65, 257, id="129x257x65-k=all"),
    pytest.param(1025, 70, 768, 9, id="1025x70x768-k=9"),
])
def test_cross_float64_exact(pf, nq, nk, d, k):
    q = randn(nq, d, seed=1, dtype=torch.float64)
    keys = randn(nk, d, seed=2, dtype=torch.float64)
    vals, idx = pf.knn(q, keys, k)
    check_knn(vals, idx, q, k, keys=keys, exact=True)


@pytest.mark.parametrize("nq,nk,d,k", [
    pytest.param(300, 1500, 37, 16, id="300x1500x37-k=16"),
    pytest.param(129, 257, 65, 257, id="129x257x65-k=all"),
])
def test_cross_grid_ties_exact(pf, nq, nk, d, k):
    q = grid(nq, d, seed=5)
    keys = with_duplicates(grid(nk, d, seed=6), seed=2)
    vals, idx = pf.knn(q, keys, k)
    check_knn(vals, idx, q, k, keys=keys, exact=True)


def test_cross_float32(pf):
    q, keys = randn(333, 48, seed=8), randn(777, 48, seed=9)
    vals, idx = pf.knn(q, keys, 12)
    check_knn(vals, idx, q, 12, keys=keys)


def test_cross_same_array_does_not_exclude_self(pf):
    x = randn(50, 6, seed=3, normalize=True)
    _, idx = pf.knn(x, x, 1)
    assert torch.equal(torch.as_tensor(idx).cpu().view(-1), torch.arange(50))


# Large N with a small width: crosses every tile boundary in both dimensions cheaply.
def test_self_large_n_small_d_grid(pf):
    x = with_duplicates(grid(4133, 4, seed=11), seed=5, frac=0.05)
    for k in (1, 13):
        vals, idx = pf.knn(x, k)
        check_knn(vals, idx, x, k, exact=True)


def test_self_large_n_small_d_float32(pf):
    x = randn(4133, 5, seed=12)
    vals, idx = pf.knn(x, 10)
    check_knn(vals, idx, x, 10)


def test_cross_large_keys_small_d(pf):
    q = grid(513, 3, seed=13)
    keys = grid(5000, 3, seed=14)
    vals, idx = pf.knn(q, keys, 20)
    check_knn(vals, idx, q, 20, keys=keys, exact=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("n,d,k", [
    pytest.param(5, 1, 4, id="5x1-k=4"),
    pytest.param(257, 65, 10, id="257x65-k=10"),
    pytest.param(1024, 768, 1, id="1024x768-k=1"),
    pytest.param(1030, 96, 1029, id="1030x96-k=N-1"),
])
def test_low_precision_inputs(pf, dtype, n, d, k):
    # the reference runs on the same low-precision values, upcast to float64
    x = randn(n, d, seed=n, normalize=True).to(dtype)
    vals, idx = pf.knn(x, k)
    check_knn(vals, idx, x, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_grid_exact(pf, dtype):
    # dyadic values are exact in fp16/bf16 and their products exact in float32
    x = with_duplicates(grid(600, 40, seed=1), seed=3).to(dtype)
    vals, idx = pf.knn(x, 25)
    check_knn(vals, idx, x, 25, exact=True)
    q = grid(100, 40, seed=2).to(dtype)
    vals, idx = pf.knn(q, x, 7)
    check_knn(vals, idx, q, 7, keys=x, exact=True)


@pytest.mark.parametrize("view", ["transposed", "step-slice", "column-slice", "expanded-row"])
def test_non_contiguous(pf, view):
    base64 = randn(300, 130, seed=21, dtype=torch.float64)
    baseg = with_duplicates(grid(300, 130, seed=22), seed=4)
    for base, exact in ((base64, True), (baseg, True), (base64.float(), False)):
        if view == "transposed":
            x = base.T.contiguous().T  # N×D with strides (1, N)
        elif view == "step-slice":
            x = base[::2, ::3]
        elif view == "column-slice":
            x = base[:, 7:70]
        else:
            # zero row stride: all rows identical -> pure tie-breaking
            x = base[:1].expand(40, -1)
        assert not x.is_contiguous()
        k = min(9, x.shape[0] - 1)
        vals, idx = pf.knn(x, k)
        check_knn(vals, idx, x, k, exact=exact)


def test_non_contiguous_cross(pf):
    q = randn(90, 200, seed=1, dtype=torch.float64)[:, ::2]
    keys = randn(64, 333, seed=2, dtype=torch.float64).T.contiguous().T[:, :100]
    vals, idx = pf.knn(q, keys, 11)
    check_knn(vals, idx, q, 11, keys=keys, exact=True)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64], ids=["np.float32", "np.float64"])
def test_numpy_inputs(pf, np_dtype):
    x = grid(120, 9, seed=3).numpy().astype(np_dtype)
    vals, idx = pf.knn(x, 6)
    check_knn(vals, idx, torch.from_numpy(x), 6, exact=True)
    q = grid(30, 9, seed=4).numpy().astype(np_dtype)
    vals, idx = pf.knn(q, x, 4)
    check_knn(vals, idx, torch.from_numpy(q), 4, keys=torch.from_numpy(x), exact=True)
    # non-contiguous NumPy view
    xv = np.asfortranarray(x)[::2]
    vals, idx = pf.knn(xv, 5)
    check_knn(vals, idx, torch.from_numpy(np.ascontiguousarray(xv)), 5, exact=True)


def test_deterministic(pf):
    x = randn(1030, 50, seed=5)
    v1, i1 = pf.knn(x, 10)
    v2, i2 = pf.knn(x, 10)
    assert torch.equal(torch.as_tensor(i1), torch.as_tensor(i2))
    assert torch.equal(torch.as_tensor(v1), torch.as_tensor(v2))


def test_input_not_modified(pf):
    x = randn(100, 8, seed=6)
    before = x.clone()
    pf.knn(x, 5)
    pf.knn(x, x, 5)
    assert torch.equal(x, before)


@pytest.mark.parametrize("backend", backend_params("knn"))
def test_every_backend(pf, backend):
    x = with_duplicates(grid(517, 31, seed=9), seed=9)
    try:
        vals, idx = pf.knn(x, 12, backend=backend)
    except ValueError as e:  # a registered backend may not serve this device
        if "cuda" in str(backend).lower() or "triton" in str(backend).lower():
            pytest.skip(f"{backend} unavailable on this machine: {e}")
        raise
    check_knn(vals, idx, x, 12, exact=True)
    xf = randn(517, 31, seed=10)
    vals, idx = pf.knn(xf, 12, backend=backend)
    check_knn(vals, idx, xf, 12)


@pytest.mark.parametrize("device", DEVICES)
def test_device_result_on_same_device(pf, device):
    x = grid(1100, 40, seed=3).to(device)
    vals, idx = pf.knn(x, 8)
    assert torch.as_tensor(idx).device.type == device
    check_knn(torch.as_tensor(vals).cpu(), torch.as_tensor(idx).cpu(), x.cpu(), 8, exact=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("device", DEVICES)
def test_device_gaussian(pf, device, dtype):
    x = randn(2049, 129, seed=1, normalize=True).to(dtype)
    vals, idx = pf.knn(x.to(device), 10)
    check_knn(torch.as_tensor(vals).cpu(), torch.as_tensor(idx).cpu(), x, 10)
