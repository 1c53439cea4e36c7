"""Outlier clamping (ops/outliers.py, docs/metrics.md#clamping) against the dense reference, and every backend of
its per-sample order statistics against the torch reference."""

import math

import numpy as np
import pytest
import torch

from platonic_fast.ops.outliers import per_sample_order_stats

import dense_reference as R
from conftest import backend_device_params


@pytest.mark.parametrize("backend,device", backend_device_params("outliers"))
@pytest.mark.parametrize("shape,lo,hi", [((5, 1), 0, 0), ((37, 65), 30, 31), ((9, 3, 17), 50, 50)])
def test_order_stats_backends_match_torch(backend, device, shape, lo, hi):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    got = per_sample_order_stats(x.to(device), lo, hi, backend=backend)
    want = per_sample_order_stats(x, lo, hi, backend="torch")
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=0, atol=0)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "approx"])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("shape", [(8, 3, 16), (37, 65), (5, 1), (3, 7, 2, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_remove_outliers_vs_reference(pf, shape, q, exact):
    g = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x = torch.randn(*shape, generator=g) * torch.linspace(0.5, 30, shape[-1])
    out = pf.remove_outliers(x, q=q, exact=exact)
    assert isinstance(out, torch.Tensor)
    assert out.shape == x.shape and out.dtype == x.dtype
    want = R.remove_outliers(x, q, exact)
    torch.testing.assert_close(out.to(torch.float64), want, atol=1e-5 * float(x.abs().max()),
                               rtol=0)


def test_remove_outliers_q_one_is_identity(pf):
    x = torch.randn(6, 2, 5) * 100
    for exact in (True, False):
        assert torch.equal(pf.remove_outliers(x, q=1.0, exact=exact), x)
        assert torch.equal(pf.remove_outliers(x, q=1, exact=exact), x)


def test_remove_outliers_does_not_modify_input(pf):
    x = torch.randn(6, 40) * 10
    before = x.clone()
    pf.remove_outliers(x, q=0.5)
    pf.remove_outliers(x, q=0.5, exact=True)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=["float64", "float16", "bfloat16"])
def test_remove_outliers_dtypes(pf, dtype):
    x = (torch.randn(9, 4, 11) * 7).to(dtype)
    for exact in (True, False):
        out = pf.remove_outliers(x, q=0.9, exact=exact)
        assert out.dtype == dtype and out.shape == x.shape
        want = R.remove_outliers(x, 0.9, exact).to(dtype)
        # one rounding of the threshold in the input dtype (float64 may be computed in float32)
        atol = max(2 * float(torch.finfo(dtype).eps) * 7 * 4, 1e-5)
        torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=0)


def test_remove_outliers_numpy(pf):
    x = (torch.randn(10, 3, 8) * 4).numpy()
    out = pf.remove_outliers(x, q=0.8, exact=True)
    assert isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out, R.remove_outliers(x, 0.8, True).numpy(), atol=1e-6)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "approx"])
@pytest.mark.slow
def test_remove_outliers_more_than_2_pow_24(pf, exact):
    # torch.quantile refuses > 2**24 elements; docs/metrics.md#clamping requires any size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(17, 1_000_003, generator=g)
    assert x.numel() > 2**24
    out = pf.remove_outliers(x, q=0.95, exact=exact)
    assert out.shape == x.shape and out.dtype == x.dtype
    t_got = float(out.abs().max())
    if exact:
        t_want = float(x.abs().flatten().kthvalue(int(0.95 * x.numel()) + 1).values)
        assert t_got == t_want
    else:
        # per-sample interpolated quantile via kthvalue (no torch.quantile): mean over samples
        m = x.shape[1]
        pos = 0.95 * (m - 1)
        lo = math.floor(pos)
        frac = pos - lo
        a = x.abs().to(torch.float64)
        v_lo = a.kthvalue(lo + 1, dim=1).values
        v_hi = a.kthvalue(lo + 2, dim=1).values
        t_want = float((v_lo + frac * (v_hi - v_lo)).mean())
        assert t_got == pytest.approx(t_want, rel=1e-6)


@pytest.mark.slow
def test_remove_outliers_3d_more_than_2_pow_24(pf):
    x = torch.randn(4097, 64, 64)
    out = pf.remove_outliers(x, q=0.95, exact=False)
    assert out.shape == x.shape
    assert float(out.abs().max()) < float(x.abs().max())
