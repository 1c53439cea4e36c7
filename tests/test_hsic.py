"""The HSIC op (ops/hsic.py): every backend's CKA against the torch reference, and the fused
centred-kernel sums (kernels/triton/hsic.py) against a dense float64 reference.

The fused kernel runs on a GPU when one is present, otherwise in Triton's CPU interpreter
(TRITON_INTERPRET=1, set in conftest), on small odd shapes that are not multiples of the tile sizes.
"""

import pytest
import torch

import platonic_fast as pf
from platonic_fast._backends import resolve
from platonic_fast.ops import hsic

from conftest import backend_device_params, correlated_pair, cuda_randn, requires_cuda


@pytest.mark.parametrize("backend,device", backend_device_params("hsic"))
@pytest.mark.parametrize("kernel", ["ip", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("n,da,db", [(5, 3, 2), (257, 65, 33), pytest.param(2100, 9, 7, marks=pytest.mark.slow)])
def test_backend_cka_matches_torch(backend, device, kernel, unbiased, n, da, db):
    a, b = correlated_pair(n, da, db, seed=n)
    _, stats = resolve("hsic", backend, device)
    got = hsic.cka_from_stats(stats(a.to(device), kernel, 1.5), stats(b.to(device), kernel, 1.5), unbiased=unbiased)
    want = pf.cka(a.double(), b.double(), kernel_metric=kernel, rbf_sigma=1.5, unbiased=unbiased, backend="torch")
    assert got == pytest.approx(want, abs=1e-5)


try:
    from platonic_fast.triton.hsic import hsic_sums
except ImportError:  # Triton not installed: only the fused-kernel tests skip
    hsic_sums = None
needs_triton = pytest.mark.skipif(hsic_sums is None, reason="Triton is not installed")
interpreted = pytest.mark.slow  # the Triton interpreter is slow on the CPU

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(5, 1, 3), (37, 20, 33), (130, 40, 17)]


def _dense_sums(a, b, kernel, rbf):
    """The kernel's tiles as the fused kernel forms them: linear, or (expm1(γ(m - d²)) + b) / h."""
    a, b = a.double(), b.double()

    def held(x, form):
        gamma, m, off, inv_h = form
        return (torch.expm1(gamma * (m - torch.cdist(x, x).square())) + off) * inv_h

    if kernel == "ip":
        K, L = a @ a.T, b @ b.T
    else:
        K, L = held(a, rbf[0]), held(b, rbf[1])
    return {"cross": (K * L).sum(), "self_k": (K * K).sum(), "self_l": (L * L).sum(),
            "rows_k": K.sum(1), "rows_l": L.sum(1), "abs_rows_k": K.abs().sum(1), "abs_rows_l": L.abs().sum(1)}


@needs_triton
@interpreted
@pytest.mark.parametrize("n,da,db", SHAPES, ids=[f"{n}x{da}x{db}" for n, da, db in SHAPES])
@pytest.mark.parametrize("kernel", ["ip", "rbf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_sums_match_dense(n, da, db, kernel, dtype):
    g = torch.Generator().manual_seed(n + da)
    a = torch.randn(n, da, generator=g).to(dtype)
    b = torch.randn(n, db, generator=g).to(dtype)
    rbf = ((1 / 8, 0.0, 1.0, 1.0),) * 2  # exp(-d²/(2σ²)), σ = 2
    got = hsic_sums(a.to(DEVICE), b.to(DEVICE), kernel, rbf=rbf)
    # The reference sees the same (rounded) input values; accumulation is float32 in tiles.
    want = _dense_sums(a.float(), b.float(), kernel, rbf)
    for key in ("cross", "self_k", "self_l"):
        assert got[key] == pytest.approx(float(want[key]), rel=2e-6, abs=1e-6)
    for key in ("rows_k", "rows_l"):
        # A row sum cancels terms of either sign: bound its float32 error by the sum of |terms|.
        scale = float(want["abs_" + key].max())
        torch.testing.assert_close(got[key].cpu(), want[key], rtol=0, atol=2e-6 * scale)


@needs_triton
@interpreted
@pytest.mark.parametrize("n", [20, 60, 70, 90])
def test_every_tile_pair_counted_once(n):
    # 16-row tiles: 2, 4, 5 and 6 row blocks (an even count has pairs half-way round the circle).
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)
    gamma = 1 / (2 * 1.5**2)
    rbf = ((gamma, 3.0, 0.0, 2.0), (gamma, 0.0, 1.0, 0.5))  # a shifted and a plain form
    got = hsic_sums(a.to(DEVICE), b.to(DEVICE), "rbf", rbf=rbf, block=16, block_d=16)
    want = _dense_sums(a, b, "rbf", rbf)
    for key in ("cross", "self_k", "self_l"):
        assert got[key] == pytest.approx(float(want[key]), rel=2e-6)
    for key in ("rows_k", "rows_l"):
        scale = float(want["abs_" + key].max())  # shifted RBF rows mix signs: bound by Σ|terms|
        torch.testing.assert_close(got[key].cpu(), want[key], rtol=0, atol=2e-6 * scale)


@needs_triton
@interpreted
def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 70, generator=g)[:, ::2]  # stride 2 along features
    b = torch.randn(30, 40, generator=g).T  # transposed view
    got = hsic_sums(a.to(DEVICE), b.to(DEVICE), "ip")
    want = _dense_sums(a, b, "ip", None)
    assert got["cross"] == pytest.approx(float(want["cross"]), rel=2e-6)


@needs_triton
@interpreted
@pytest.mark.parametrize("kernel", ["ip", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_fused_stats_give_the_same_cka(kernel, unbiased):
    # The Triton backend's KernelStats, filled by one fused pass, against the CPU path.
    g = torch.Generator().manual_seed(11)
    a = torch.nn.functional.normalize(torch.randn(70, 24, generator=g), dim=1)
    b = torch.nn.functional.normalize(a[:, :16] + 0.5 * torch.randn(70, 16, generator=g), dim=1)
    ka = hsic.kernel_stats_fused(a.to(DEVICE), kernel, 1.0)
    kb = hsic.kernel_stats_fused(b.to(DEVICE), kernel, 1.0)
    got = hsic.cka_from_stats(ka, kb, unbiased=unbiased)
    want = pf.cka(a, b, kernel_metric=kernel, unbiased=unbiased, backend="cpu")
    assert got == pytest.approx(want, abs=1e-6)


@needs_triton
@interpreted
@pytest.mark.parametrize("kernel", ["ip", "rbf"])
def test_float64_features_keep_float64_beside_fused_ones(kernel):
    # The kernel accumulates in float32 (and cannot compile float64 tiles): the registry sends
    # float64 features to the torch path, and a fused float32 partner is recomputed the same way,
    # not refused.
    g = torch.Generator().manual_seed(12)
    a = torch.randn(50, 12, generator=g, dtype=torch.float64)
    b = torch.randn(50, 9, generator=g)
    ka = hsic.kernel_stats(a.to(DEVICE), kernel, 1.5)
    kb = hsic.kernel_stats_fused(b.to(DEVICE), kernel, 1.5)
    assert not ka.fused and kb.fused
    got = hsic.cka_from_stats(ka, kb, unbiased=False)
    want = pf.cka(a, b.double(), kernel_metric=kernel, rbf_sigma=1.5, backend="cpu")
    assert got == pytest.approx(want, abs=1e-6)


@needs_triton
@interpreted
def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        hsic_sums(torch.zeros(4, 2), torch.zeros(4, 2), "poly")
    with pytest.raises(ValueError, match="same N"):
        hsic_sums(torch.zeros(4, 2), torch.zeros(5, 2))


@needs_triton
@interpreted
@requires_cuda
def test_cka_dispatches_to_triton_on_cuda():
    a, b = torch.randn(300, 64), torch.randn(300, 48)
    want = pf.cka(a, b)
    assert pf.cka(a.cuda(), b.cuda(), backend="triton") == pytest.approx(want, abs=1e-5)


@needs_triton
@interpreted
@requires_cuda
def test_offsets_past_2_to_the_31_elements():
    # 270,000 x 8,192 features: row offsets pass 2³¹ elements (int64 addressing in the kernel).
    a, b = cuda_randn((270_000, 8192), (270_000, 64), seed=1)
    a = a / a.shape[1] ** 0.5
    got = hsic_sums(a, b, "ip")
    af, bf = a.float(), b.float()
    cross = float((af.T.double() @ bf.double()).square().sum())  # Σ K∘L = ‖AᵀB‖²
    assert got["cross"] == pytest.approx(cross, rel=1e-3)
    want_rows = (af[-1000:].double() @ af.double().sum(0))  # K1 on the last rows
    torch.testing.assert_close(got["rows_k"][-1000:], want_rows, rtol=1e-3, atol=1e-2 * float(want_rows.abs().max()))


@needs_triton
@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_within_twice_torchs_own(dtype):
    # Against exact sums over the (rounded) inputs, the fused sums err at most 2x as much as the
    # same sums from torch's own Gram products at that dtype.
    g = torch.Generator().manual_seed(22)
    a = torch.randn(90, 30, generator=g).to(dtype)
    b = torch.randn(90, 20, generator=g).to(dtype)
    got = hsic_sums(a.to(DEVICE), b.to(DEVICE), "ip")
    exact = _dense_sums(a.double(), b.double(), "ip", 1.0)
    ka, kb = (a.to(DEVICE) @ a.to(DEVICE).T).cpu().double(), (b.to(DEVICE) @ b.to(DEVICE).T).cpu().double()
    torch_sums = {"cross": (ka * kb).sum(), "self_k": (ka * ka).sum(), "self_l": (kb * kb).sum()}
    for key in ("cross", "self_k", "self_l"):
        kernel_err = abs(got[key] - float(exact[key]))
        torch_err = abs(float(torch_sums[key]) - float(exact[key]))
        assert kernel_err <= 2 * torch_err + 1e-9 * abs(float(exact[key])), key
