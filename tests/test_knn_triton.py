"""The fused Triton kNN kernel (kernels/triton/knn_topk.py) against the torch reference in float64.

On a GPU it runs compiled; without one, in Triton's CPU interpreter (set in conftest), where it
is slow: shapes stay tiny but still cross tile boundaries, hit k near N, ties, half types and
the cross form.
"""

import pytest
import torch

from platonic_fast.ops.knn import knn_torch

pytest.importorskip("triton")
from platonic_fast.triton import knn_topk  # noqa: E402
from platonic_fast.triton.knn_topk import MAX_K, knn_triton  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# (n, d, k): odd sizes, one below/above a 16-row tile, k = 1 and k = n - 1, and k >= 64, where
# tiles with many entrants take the sort-and-merge path instead of one-by-one insertion.
CASES = [(5, 1, 4), (17, 20, 1), (37, 20, 10), (20, 7, 19), (80, 3, 64)] + ([(1000, 96, 10), (4099, 64, 64), (513, 768, 128), (3001, 40, 100)] if GPU else [])


def _reference(q, keys, k, exclude_self):
    return knn_torch(q.double(), None if keys is None else keys.double(), k, exclude_self=exclude_self)


@pytest.mark.parametrize("n,d,k", CASES, ids=[f"{n}x{d}-k{k}" for n, d, k in CASES])
def test_self_form_matches_reference(n, d, k):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + k))
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    assert idx.dtype == torch.int64 and vals.dtype == torch.float32
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=1e-6, atol=1e-5)


def test_self_included_and_cross_form():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 12, generator=g)
    vals, idx = knn_triton(x.to(DEVICE), None, 4, exclude_self=False)
    torch.testing.assert_close(idx.cpu(), _reference(x, None, 4, False)[1], rtol=0, atol=0)
    q, keys = torch.randn(23, 20, generator=g), torch.randn(90, 20, generator=g)
    vals, idx = knn_triton(q.to(DEVICE), keys.to(DEVICE), 7, exclude_self=False)
    torch.testing.assert_close(idx.cpu(), _reference(q, keys, 7, False)[1], rtol=0, atol=0)


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
        monkeypatch.setattr(knn_topk, "SORT_MERGE_FROM", 16)
    return request.param


@pytest.mark.parametrize("n,d,k", [(150, 9, 10), (70, 30, 15)])
def test_both_merge_paths(merge_path, n, d, k):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=1e-6, atol=1e-5)


def test_ties_across_tiles(merge_path):
    # Few distinct scores over several key tiles: equal scores in later tiles must lose.
    k = 9
    x = torch.randint(0, 2, (140, 3), generator=torch.Generator().manual_seed(k)).float()
    vals, idx = knn_triton(x.to(DEVICE), None, k, exclude_self=True)
    ref_v, ref_i = _reference(x, None, k, True)
    torch.testing.assert_close(idx.cpu(), ref_i, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs(dtype):
    # The reference sees the same rounded inputs; products accumulate in float32 either way.
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(3)).to(dtype)
    vals, idx = knn_triton(x.to(DEVICE), None, 5, exclude_self=True)
    ref_v, ref_i = _reference(x.float(), None, 5, True)
    torch.testing.assert_close(vals.cpu().double(), ref_v, rtol=1e-5, atol=1e-4)
    assert (idx.cpu() == ref_i).float().mean() > 0.98  # near-ties may swap at float32 accumulation


def test_non_contiguous_input():
    x = torch.randn(33, 40, generator=torch.Generator().manual_seed(4))[:, ::2]
    vals, idx = knn_triton(x.to(DEVICE), None, 6, exclude_self=True)
    torch.testing.assert_close(idx.cpu(), _reference(x, None, 6, True)[1], rtol=0, atol=0)


def test_k_limit():
    with pytest.raises(ValueError, match="k must be"):
        knn_triton(torch.randn(300, 4), None, MAX_K + 1, exclude_self=True)


@pytest.mark.skipif(not GPU, reason="no CUDA device")
def test_public_knn_dispatches_to_triton_on_cuda():
    import platonic_fast as pf

    x = torch.randn(2000, 128)
    v_cpu, i_cpu = pf.knn(x, 10)
    v_gpu, i_gpu = pf.knn(x.cuda(), 10, backend="triton")
    torch.testing.assert_close(i_gpu.cpu(), i_cpu, rtol=0, atol=0)


@pytest.mark.parametrize("precision,expected", [("highest", False), ("high", True)])
def test_tf32_only_when_asked_the_torch_way(monkeypatch, precision, expected):
    from platonic_fast.ops.knn import knn_triton_backend

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return knn_triton(*args, **kwargs)

    monkeypatch.setattr(knn_topk, "knn_triton", spy)
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


def test_overflowing_products_raise_instead_of_returning_bad_indices():
    x = torch.full((20, 4), 1e20)
    x[::2] *= -1  # products of ±1e40 overflow float32 to ±inf; -inf never enters a top-k
    with pytest.raises(ValueError, match="overflow"):
        knn_triton(x.to(DEVICE), None, 12, exclude_self=True)


@pytest.mark.skipif(not GPU, reason="no CUDA device")
def test_offsets_past_2_to_the_31_elements():
    # 530,000 x 4,096 keys: row offsets pass 2³¹ elements (int64 addressing in the kernel).
    n, d = 530_000, 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    big = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, generator=g)
    small = torch.randn(64, d, device="cuda", dtype=torch.bfloat16, generator=g)
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_within_twice_torchs_own(dtype):
    # The rule for half types: against exact products of the (rounded) inputs, the
    # kernel's scores err at most 2x as much as torch's own matmul at that dtype.
    x = torch.randn(60, 40, generator=torch.Generator().manual_seed(21)).to(dtype)
    vals, idx = knn_triton(x.to(DEVICE), None, 8, exclude_self=True)
    exact = x.double() @ x.double().T
    torch_scores = (x.to(DEVICE) @ x.to(DEVICE).T).cpu().double()
    rows = torch.arange(60)[:, None]
    kernel_err = (vals.cpu().double() - exact[rows, idx.cpu()]).abs().max()
    torch_err = (torch_scores[rows, idx.cpu()] - exact[rows, idx.cpu()]).abs().max()
    assert kernel_err <= 2 * torch_err + 1e-12
