"""pf.knn (self and cross form) against the float64 dense reference.

Index equality is checked exactly where the answer is unambiguous: float64 inputs (Gaussian:
tie-free with probability 1) and "grid" data (dyadic values whose dot products are exact in
float32, so exact ties exist and the smaller-index rule (docs/metrics.md#knn) decides). Float32 / low-precision
Gaussian inputs get the near-tie-tolerant check of conftest.check_knn.
"""

import numpy as np
import pytest
import torch

from conftest import DEVICES, backend_device_params, check_knn, cuda_randn, grid, randn, requires_cuda, with_duplicates

# Sizes chosen to straddle tile boundaries (64/128/256/1024) without landing on them.
SELF_SHAPES = [
    pytest.param(5, 1, id="5x1"),
    pytest.param(37, 3, id="37x3"),
    pytest.param(257, 65, id="257x65"),
    pytest.param(1024, 768, id="1024x768", marks=pytest.mark.slow),
    pytest.param(2000, 33, id="2000x33", marks=pytest.mark.slow),
]


def _ks(n):
    return sorted({1, min(10, n - 1), n - 1})


def _self_cases():
    for p in SELF_SHAPES:
        n, d = p.values
        for k in _ks(n):
            yield pytest.param(n, d, k, id=f"{p.id}-k={k}", marks=p.marks)


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
    pytest.param(1030, 96, 10, id="1030x96-k=10", marks=pytest.mark.slow),
    pytest.param(2000, 33, 7, id="2000x33-k=7", marks=pytest.mark.slow),
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
@pytest.mark.slow
def test_self_large_n_small_d_grid(pf):
    x = with_duplicates(grid(4133, 4, seed=11), seed=5, frac=0.05)
    for k in (1, 13):
        vals, idx = pf.knn(x, k)
        check_knn(vals, idx, x, k, exact=True)


@pytest.mark.slow
def test_self_large_n_small_d_float32(pf):
    x = randn(4133, 5, seed=12)
    vals, idx = pf.knn(x, 10)
    check_knn(vals, idx, x, 10)


@pytest.mark.slow
def test_cross_large_keys_small_d(pf):
    q = grid(513, 3, seed=13)
    keys = grid(5000, 3, seed=14)
    vals, idx = pf.knn(q, keys, 20)
    check_knn(vals, idx, q, 20, keys=keys, exact=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("n,d,k", [
    pytest.param(5, 1, 4, id="5x1-k=4"),
    pytest.param(257, 65, 10, id="257x65-k=10"),
    pytest.param(1024, 768, 1, id="1024x768-k=1", marks=pytest.mark.slow),
    pytest.param(1030, 96, 1029, id="1030x96-k=N-1", marks=pytest.mark.slow),
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


@pytest.mark.parametrize("backend,device", backend_device_params("knn"))
def test_every_backend(pf, backend, device):
    x = with_duplicates(grid(517, 31, seed=9), seed=9)
    vals, idx = pf.knn(x.to(device), 12, backend=backend)
    check_knn(vals, idx, x, 12, exact=True)
    xf = randn(517, 31, seed=10)
    vals, idx = pf.knn(xf.to(device), 12, backend=backend)
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
@pytest.mark.slow
def test_device_gaussian(pf, device, dtype):
    x = randn(2049, 129, seed=1, normalize=True).to(dtype)
    vals, idx = pf.knn(x.to(device), 10)
    check_knn(torch.as_tensor(vals).cpu(), torch.as_tensor(idx).cpu(), x, 10)


# --- the fused Triton kernel (kernels/triton/knn.py) against the torch reference in float64 ---
# On a GPU it runs compiled; without one, in Triton's CPU interpreter (set in conftest), where it
# is slow: shapes stay tiny but still cross tile boundaries, hit k near N, ties, half types and
# the cross form.

try:
    from platonic_fast.triton import knn as triton_knn
    from platonic_fast.triton.knn import MAX_K, knn_triton
except ImportError:  # Triton not installed: only these tests skip
    triton_knn = None
needs_triton = pytest.mark.skipif(triton_knn is None, reason="Triton is not installed")
interpreted = pytest.mark.slow  # the Triton interpreter is slow on the CPU
from platonic_fast.ops.knn import knn_torch  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# (n, d, k): odd sizes, one below/above a 16-row tile, k = 1 and k = n - 1, and k >= 64, where
# tiles with many entrants take the sort-and-merge path instead of one-by-one insertion.
CASES = [(5, 1, 4), (17, 20, 1), (37, 20, 10), (20, 7, 19), (80, 3, 64)]
if GPU:
    CASES += [(1000, 96, 10), (4099, 64, 64), (513, 768, 128), (3001, 40, 100)]


def _reference(q, keys, k, exclude_self):
    return knn_torch(q.double(), None if keys is None else keys.double(), k, exclude_self=exclude_self)


@needs_triton
@interpreted
@pytest.mark.parametrize("n,d,k", CASES, ids=[f"{n}x{d}-k{k}" for n, d, k in CASES])
def test_self_form_matches_reference(n, d, k):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + k))
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    assert idx.dtype == torch.int64 and vals.dtype == torch.float32
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=1e-6, atol=1e-5)


@needs_triton
@interpreted
def test_self_included_and_cross_form():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 12, generator=g)
    vals, idx = knn_triton(x.to(DEVICE), None, 4, exclude_self=False)
    torch.testing.assert_close(idx.cpu(), _reference(x, None, 4, False)[1], rtol=0, atol=0)
    q, keys = torch.randn(23, 20, generator=g), torch.randn(90, 20, generator=g)
    vals, idx = knn_triton(q.to(DEVICE), keys.to(DEVICE), 7, exclude_self=False)
    torch.testing.assert_close(idx.cpu(), _reference(q, keys, 7, False)[1], rtol=0, atol=0)


@needs_triton
@interpreted
def test_ties_go_to_the_smaller_index():
    # Integer-valued features: exact float32 products, many equal scores.
    x = torch.randint(0, 3, (50, 4), generator=torch.Generator().manual_seed(2)).float()
    vals, idx = knn_triton(x.to(DEVICE), None, 12, exclude_self=True)
    torch.testing.assert_close(idx.cpu(), _reference(x, None, 12, True)[1], rtol=0, atol=0)


@pytest.fixture(params=["insert", "sort-merge"])
def merge_path(request, monkeypatch):
    """Run with the kernel's default merge path for small k, or with sort-and-merge forced on
    (normally only k >= 64 sorts; the interpreter is slow at sorting wide rows)."""
    if request.param == "sort-merge":
        monkeypatch.setattr(triton_knn, "SORT_MERGE_FROM", 16)
    return request.param


@needs_triton
@interpreted
@pytest.mark.parametrize("n,d,k", [(150, 9, 10), (70, 30, 15)])
def test_both_merge_paths(merge_path, n, d, k):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=1e-6, atol=1e-5)


@needs_triton
@interpreted
def test_ties_across_tiles(merge_path):
    # Few distinct scores over several key tiles: equal scores in later tiles must lose.
    k = 9
    x = torch.randint(0, 2, (140, 3), generator=torch.Generator().manual_seed(k)).float()
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=0, atol=0)


def _half_knn(dtype, n, d, k, seed):
    """n x d Gaussian rows rounded to dtype, and knn_triton's top k of them (self excluded, on the CPU)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    return x, vals.cpu(), idx.cpu()


@needs_triton
@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs(dtype):
    # The reference sees the same rounded inputs; products accumulate in float32 either way.
    x, vals, idx = _half_knn(dtype, 40, 24, 5, seed=3)
    ref_v, ref_i = _reference(x.float(), None, 5, True)
    torch.testing.assert_close(vals.double(), ref_v, rtol=1e-5, atol=1e-4)
    assert (idx == ref_i).float().mean() > 0.98  # near-ties may swap at float32 accumulation


@needs_triton
@interpreted
def test_non_contiguous_input():
    x = torch.randn(33, 40, generator=torch.Generator().manual_seed(4))[:, ::2]
    vals, idx = knn_triton(x.to(DEVICE), None, 6, exclude_self=True)
    torch.testing.assert_close(idx.cpu(), _reference(x, None, 6, True)[1], rtol=0, atol=0)


@needs_triton
@interpreted
def test_k_limit():
    with pytest.raises(ValueError, match="k must be"):
        knn_triton(torch.randn(300, 4), None, MAX_K + 1, exclude_self=True)


@needs_triton
@interpreted
@requires_cuda
def test_public_knn_dispatches_to_triton_on_cuda():
    import platonic_fast as pf

    x = torch.randn(2000, 128)
    v_cpu, i_cpu = pf.knn(x, 10)
    v_gpu, i_gpu = pf.knn(x.cuda(), 10, backend="triton")
    torch.testing.assert_close(i_gpu.cpu(), i_cpu, rtol=0, atol=0)


@needs_triton
@interpreted
@pytest.mark.parametrize("precision,expected", [("highest", False), ("high", True)])
def test_tf32_only_when_asked_the_torch_way(monkeypatch, precision, expected):
    from platonic_fast.ops.knn import knn_triton_backend

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return knn_triton(*args, **kwargs)

    monkeypatch.setattr(triton_knn, "knn_triton", spy)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        x = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
        _, idx = knn_triton_backend(x.to(DEVICE), None, 3, exclude_self=True)
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen["allow_tf32"] is expected
    if not expected:
        torch.testing.assert_close(idx.cpu(), _reference(x, None, 3, True)[1], rtol=0, atol=0)


@needs_triton
@interpreted
# The interpreter's NumPy matmul warns on the overflow this test provokes on purpose.
@pytest.mark.filterwarnings("ignore:overflow encountered in matmul:RuntimeWarning")
def test_overflowing_products_raise_instead_of_returning_bad_indices():
    x = torch.full((20, 4), 1e20)
    x[::2] *= -1  # products of ±1e40 overflow float32 to ±inf; -inf never enters a top-k
    with pytest.raises(ValueError, match="overflow"):
        knn_triton(x.to(DEVICE), None, 12, exclude_self=True)


@needs_triton
@interpreted
@requires_cuda
def test_offsets_past_2_to_the_31_elements():
    # 530,000 x 4,096 keys: row offsets pass 2³¹ elements (int64 addressing in the kernel).
    big, small = cuda_randn((530_000, 4096), (64, 4096), seed=0)
    n = big.shape[0]
    big[-1] = small[0] * 4  # query 0's best key is the very last row
    vals, idx = knn_triton(small, big, 5, exclude_self=False)
    ref = (small.float() @ big[-1000:].float().T)
    assert int(idx[0, 0]) == n - 1
    torch.testing.assert_close(vals[0, 0], ref[0, -1], rtol=1e-4, atol=1e-2)
    # and as queries: the last rows of a huge query set against a small key set
    vals, idx = knn_triton(big, small, 3, exclude_self=False)
    ref_v, ref_i = (big[-64:].float() @ small.float().T).topk(3, dim=1)
    torch.testing.assert_close(vals[-64:], ref_v, rtol=1e-4, atol=1e-2)
    assert (idx[-64:, 0] == ref_i[:, 0]).float().mean() > 0.95


@needs_triton
@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_within_twice_torchs_own(dtype):
    # The rule for half types: against exact products of the (rounded) inputs, the
    # kernel's scores err at most 2x as much as torch's own matmul at that dtype.
    x, vals, idx = _half_knn(dtype, 60, 40, 8, seed=21)
    exact = x.double() @ x.double().T
    torch_scores = (x.to(DEVICE) @ x.to(DEVICE).T).cpu().double()
    rows = torch.arange(60)[:, None]
    kernel_err = (vals.double() - exact[rows, idx]).abs().max()
    torch_err = (torch_scores[rows, idx] - exact[rows, idx]).abs().max()
    assert kernel_err <= 2 * torch_err + 1e-12


# --- exact ties on real (non-dyadic) data: duplicated rows across tile edges (issue: no silent
# wrong numbers). Equal exact scores are rounded differently in different GEMM tiles; the
# exact-ordering pass must still put the smaller index first, identically on every backend.

def _duplicated_at_tile_edges(n: int, d: int, seed: int) -> torch.Tensor:
    x = randn(n, d, seed=seed, normalize=True)
    for src, dst in [(0, n - 1), (1, n // 2), (2, min(n - 2, 511)), (3, min(n - 3, 1024)), (4, min(n - 4, 2047))]:
        if dst > src:
            x[dst] = x[src]
    return x


@pytest.mark.parametrize("n", [5, 513, 1025, *(pytest.param(n, marks=pytest.mark.slow) for n in (2049, 5000))])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_duplicates_across_tiles_same_on_every_backend(pf, n, k):
    k = min(k, n - 1)
    x = _duplicated_at_tile_edges(n, 64, seed=n)
    results = {b: pf.knn(x, k, backend=b) for b in ("cpu", "torch")}
    (vc, ic), (vt, it) = results["cpu"], results["torch"]
    torch.testing.assert_close(vt, vc)
    assert torch.equal(ic, it), f"{int((ic != it).any(1).sum())} rows differ between cpu and torch"
    check_knn(vc, ic, x, k)
    dup = {n - 1: 0, n // 2: 1, min(n - 2, 511): 2, min(n - 3, 1024): 3, min(n - 4, 2047): 4}
    for row in range(n):
        lst = ic[row].tolist()
        for later, earlier in dup.items():
            if later > earlier and later in lst and earlier in lst:
                assert lst.index(earlier) < lst.index(later), (row, lst)


def test_scores_beyond_float32_are_exact_or_refused(pf):
    a, b = randn(300, 32, seed=1), randn(300, 32, seed=2)
    for scale in (1e-25, 1e-12, 1e12, 1e18):
        assert pf.mutual_knn(a * scale, b * scale) == pf.mutual_knn(a, b), scale
        assert torch.equal(pf.knn(a * scale, 5)[1], pf.knn(a, 5)[1]), scale
    with pytest.raises(ValueError, match="beyond torch.float32"):
        pf.knn(a * 1e30, 5)
    vals, idx = pf.knn((a * 1e30).double(), 5)
    assert torch.equal(idx, pf.knn(a.double(), 5)[1]) and bool(torch.isfinite(vals).all())


def test_k_near_n_warns_about_memory(pf, monkeypatch):
    from platonic_fast import _checks

    monkeypatch.setattr(_checks, "WARN_BYTES", 1 << 20)  # 1 MiB: the same rule at test size
    x = randn(400, 8, seed=3)
    with pytest.warns(pf.MemoryUseWarning, match="k=399"):
        pf.knn(x, 399)
    pf.knn(x, 10)  # below the threshold: silent (warnings are errors in this suite)


def test_same_lists_whatever_threads_and_tile_size(pf, monkeypatch):
    from platonic_fast.ops import knn as knn_module

    x = _duplicated_at_tile_edges(1500, 48, seed=7)
    want = pf.knn(x, 10, backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = pf.knn(x, 10, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(knn_module, "SMALL_N_TILE_ROWS", 128)
    small_tiles = pf.knn(x, 10, backend="cpu")
    for got in (one_thread, small_tiles):
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
