"""The certified bf16 screen of the CPU kNN (ops/knn_screen.py, docs/bf16-screen.md).

Its answer must be bitwise the exact path's (``screen="off"``): lists and values, on ties,
duplicates, near-ties across tile edges, k = 1 and k near N, every input dtype, the cross form,
and inputs built so that the screen cannot certify (the fallback runs and still agrees).
The screen is forced on (``screen="on"``) so that small inputs exercise it.
"""

import math

import pytest
import torch

from conftest import grid, randn, with_duplicates

knn_screen = pytest.importorskip("platonic_fast.ops.knn_screen")

needs_bf16 = pytest.mark.skipif(knn_screen.bf16_hardware() is None,
                                reason="no bf16 instructions (avx512_bf16/amx_bf16) on this CPU")


# The screen's two bf16 products (ops/knn_screen.screen_product): both must give the exact answer.
PRODUCTS = ["onednn"] + knn_screen.kernel_isas()
ISAS = knn_screen.kernel_isas() or ["avx512_bf16"]
needs_kernel = pytest.mark.skipif(not knn_screen.kernel_available(),
                                  reason="no AVX-512-BF16 kernel on this CPU / in this core")


@pytest.fixture(params=PRODUCTS)
def product(request, monkeypatch):
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, request.param)
    return request.param


def _both(pf, x, k, keys=None, **kw):
    args = (x, keys, k) if keys is not None else (x, k)
    off = pf.knn(*args, backend="cpu", screen="off", **kw)
    knn_screen.stats(reset=True)
    on = pf.knn(*args, backend="cpu", screen="on", **kw)
    return off, on, knn_screen.stats()


def _same(off, on):
    assert torch.equal(off[1], on[1]), "neighbour lists differ from the exact path"
    assert off[0].dtype == on[0].dtype
    assert torch.equal(off[0], on[0]), "values differ from the exact path"


@needs_bf16
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,k", [(300, 16, 1), (300, 16, 10), (523, 40, 7), (40, 5, 38), (40, 5, 39)])
def test_screen_equals_exact_path(pf, dtype, n, d, k, product):
    x = randn(n, d, seed=n + d + k, dtype=dtype, normalize=True)
    off, on, st = _both(pf, x, k)
    _same(off, on)
    assert st["calls"] == 1 and st["rows"] == n


@needs_bf16
@pytest.mark.parametrize("k", [1, 5, 20])
def test_ties_and_duplicates(pf, k, product):
    # dyadic grid: exact ties everywhere; a quarter of the rows duplicated
    x = with_duplicates(grid(400, 12, seed=k), seed=k)
    off, on, _ = _both(pf, x, k)
    _same(off, on)
    y = with_duplicates(randn(400, 24, seed=k, normalize=True), seed=k, frac=0.5)
    _same(*_both(pf, y, k)[:2])


@needs_bf16
def test_near_ties_at_tile_edges(pf, product):
    # 512-row tiles below N = 2048: copies of a row (and a one-ulp neighbour of it) on both sides
    # of the tile edges, so their scores come from different tiles
    x = randn(1100, 32, seed=3, normalize=True)
    for src, dst in [(10, 511), (10, 512), (10, 1023), (10, 1024), (700, 511 - 1), (700, 1099)]:
        x[dst] = x[src]
    x[513] = torch.nextafter(x[10], torch.full_like(x[10], 2.0))
    for k in (1, 3, 10):
        _same(*_both(pf, x, k)[:2])


@needs_bf16
def test_cross_form_and_self_included(pf, product):
    q = randn(150, 20, seed=1, normalize=True)
    keys = with_duplicates(randn(700, 20, seed=2, normalize=True), seed=2)
    _same(*_both(pf, q, 9, keys=keys)[:2])
    x = randn(200, 20, seed=5)
    _same(*_both(pf, x, 6, exclude_self=False)[:2])


@needs_bf16
def test_adversarial_input_falls_back_and_agrees(pf, product):
    # every key nearly parallel to every other: the bf16 bound covers thousands of candidates,
    # so no row can be certified within its budget; the exact path's candidates take over
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=g, dtype=torch.float64)
    x = (base + 1e-4 * torch.randn(200, 64, generator=g, dtype=torch.float64)).to(torch.float32)
    off, on, st = _both(pf, x, 5)
    _same(off, on)
    assert st["fallback_rows"] == 200


@needs_bf16
def test_extreme_scales(pf, product):
    # powers of two far from 1 are scaled away exactly; subnormal-prone entries stay bounded
    x = randn(300, 16, seed=9, dtype=torch.float64)
    for scale in (2.0 ** -100, 2.0 ** 90):
        y = (x * scale)
        _same(*_both(pf, y, 4)[:2])
    z = randn(300, 16, seed=10)
    z[:, :8] *= 1e-30  # half the entries near float32's subnormal range after scaling
    _same(*_both(pf, z, 4)[:2])


@needs_bf16
@pytest.mark.parametrize("k,exclude", [(10, True), (5, False)])
def test_row_sources_read_in_blocks(k, exclude, product):
    # a source read the way a file is (key blocks, query panels, chunked ordering pass, fetched
    # copies): the screen over it gives the in-memory exact lists and values
    from test_rows import SmallBlocks

    from platonic_fast.ops.knn import neighbours, search_rows

    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(1300, 24, generator=g), dim=1)
    x[100:170] = x[400]
    want = neighbours(x, k, exclude_self=exclude)
    knn_screen.stats(reset=True)
    got = search_rows(SmallBlocks(x), None, k, exclude_self=exclude, backend="cpu", screen="on")
    assert knn_screen.stats()["calls"] == 1
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]) and got[2] == want[2]


def test_bound_holds_for_the_bf16_product():
    # |bf16 screened − exact| ≤ b0 + c·|screened| for every pair, at several widths and scales
    for n, d, scale in [(256, 768, 1.0), (64, 4096, 1.0), (200, 64, 1e3), (200, 33, 1e-3)]:
        x = randn(n, d, seed=d, dtype=torch.float32) * scale
        y = randn(n + 7, d, seed=d + 1, dtype=torch.float32) * scale
        out = torch.empty(n, n + 7)
        knn_screen.Bf16Product()(x, y, out)
        exact = x.to(torch.float64) @ y.to(torch.float64).T
        b0, c = knn_screen.score_bounds(x, y)
        err = (out.to(torch.float64) - exact).abs()
        allowed = b0[:, None] + c * out.to(torch.float64).abs()
        assert bool((err <= allowed).all()), float((err / allowed).max())
        # and the bound is not vacuous: within ~3 orders of magnitude of the observed error
        assert float(allowed.max()) < 1e3 * float(err.max()) + 1e-30


def _bits(t):
    return t.to(torch.bfloat16).view(torch.int16).numpy()


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 5, 2), (13, 70, 31), (100, 129, 33), (64, 200, 768), (30, 65, 769)])
def test_kernel_product_within_bound_without_output_rounding(m, n, d, isa):
    # the AVX-512-BF16 kernel: float32 output, so the bound holds with c = 0 (odd widths, partial
    # micro-tiles of rows and of keys)
    from platonic_fast import _core

    for scale in (1e-3, 1.0, 1e3):
        x = randn(m, d, seed=m + d) * scale
        y = randn(n, d, seed=n + d) * scale
        out = torch.from_numpy(_core.bf16_gemm_nt(_bits(x), _bits(y), isa)).to(torch.float64)
        exact = x.to(torch.float64) @ y.to(torch.float64).T
        b0, c = knn_screen.score_bounds(x, y, output_u=knn_screen.Bf16Kernel.output_u)
        assert c == 0.0
        assert bool(((out - exact).abs() <= b0[:, None]).all())
        # the products of bf16 numbers are exact: against the float64 product of the rounded rows
        # only the float32 summation errs
        xr, yr = (t.to(torch.bfloat16).to(torch.float64) for t in (x, y))
        ref = xr @ yr.T
        gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
        assert bool(((out - ref).abs() <= gamma * (xr.abs() @ yr.abs().T)).all())


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 7, 299, 399])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_merge_equals_tile_merge(k, dtype, isa):
    # add_bf16_product (scores merged as computed, no tile) == the same scores stored as a tile and
    # merged by add_rows/add_cols: plain, self-excluding and mirrored tiles, ties and duplicates
    from platonic_fast import _core

    x = with_duplicates(grid(400, 33, seed=k), seed=k, frac=0.5)  # dyadic: exact ties everywhere
    xb = _bits(x)
    tile = _core.bf16_gemm_nt(xb, xb, isa).astype(dtype)
    a, b = _core.KnnMerger(400, k, dtype), _core.KnnMerger(400, k, dtype)
    # the diagonal block [0, 150) with itself, self excluded; then the off-diagonal block mirrored
    a.add_bf16_product(xb[:150], xb[:150], 0, 0, True, False, isa)
    b.add_rows(tile[:150, :150].copy(), 0, 0, True)
    a.add_bf16_product(xb[:150], xb[150:], 0, 150, True, True, isa)
    b.add_rows(tile[:150, 150:].copy(), 0, 150, True)
    b.add_cols(tile[:150, 150:].copy(), 0, 150, True)
    a.add_bf16_product(xb[150:], xb[150:], 150, 150, True, False, isa)
    b.add_rows(tile[150:, 150:].copy(), 150, 150, True)
    va, ia = a.finalize()
    vb, ib = b.finalize()
    assert (ia == ib).all() and (va == vb).all()
    assert (ia[:, : min(k, 399)] >= 0).all()


@needs_kernel
def test_kernel_argument_errors():
    from platonic_fast import _core

    x = _bits(randn(20, 9, seed=1))
    m = _core.KnnMerger(40, 3)
    with pytest.raises(ValueError, match="same width"):
        m.add_bf16_product(x, _bits(randn(20, 8, seed=2)), 0, 0, False, False)
    with pytest.raises(ValueError, match="different merger rows"):
        m.add_bf16_product(x, x, 0, 10, False, True)
    with pytest.raises(ValueError, match="out of range"):
        m.add_bf16_product(x, x, 30, 0, False, False)
    with pytest.raises(ValueError, match="must have dtype"):
        m.add_bf16_product(randn(20, 9, seed=1).numpy(), x, 0, 0, False, False)
    with pytest.raises(ValueError, match="isa must be"):
        m.add_bf16_product(x, x, 0, 0, False, False, "sse")


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,d,k", [(300, 1, 3), (301, 33, 10), (260, 97, 258), (260, 97, 259)])
def test_kernel_screen_odd_widths_and_k_near_n(pf, n, d, k, isa, monkeypatch):
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, isa)
    x = with_duplicates(randn(n, d, seed=n + d, normalize=True), seed=d)
    _same(*_both(pf, x, k)[:2])
    _same(*_both(pf, x[:40], min(k, 30), keys=x)[:2])


def test_product_env_checked(monkeypatch):
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, "mkl")
    with pytest.raises(ValueError, match=knn_screen.PRODUCT_ENV):
        knn_screen.screen_product()
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, "onednn")
    assert knn_screen.screen_product() == "onednn"
    monkeypatch.setenv("PLATONIC_FAST_KNN_SCREEN_NO_BF16", "1")
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, "avx512_bf16")
    with pytest.raises(ValueError, match="cannot run the project's kernel"):
        knn_screen.screen_product()
    monkeypatch.setenv(knn_screen.PRODUCT_ENV, "auto")
    assert knn_screen.screen_product() == "onednn"


def test_certify_logic():
    vals = torch.tensor([[1.0, 0.9, 0.5, 0.1], [1.0, 0.99, 0.98, 0.97]])
    b0 = torch.tensor([0.01, 0.01], dtype=torch.float64)
    certified, window = knn_screen.certify(vals, 2, b0, 0.0, all_candidates=False)
    assert certified.tolist() == [True, False]
    assert window[0].tolist() == [True, True, False, False]
    certified, _ = knn_screen.certify(vals, 2, b0, 0.0, all_candidates=True)
    assert certified.all()


def test_choice_env_and_option(monkeypatch):
    monkeypatch.setenv(knn_screen.SCREEN_ENV, "off")
    use, why = knn_screen.knn_screen_choice(10 ** 6, 10)
    assert not use and "off" in why
    monkeypatch.setenv(knn_screen.SCREEN_ENV, "maybe")
    with pytest.raises(ValueError, match="PLATONIC_FAST_KNN_SCREEN"):
        knn_screen.knn_screen_choice(10 ** 6, 10)
    with pytest.raises(ValueError, match="screen"):
        knn_screen.knn_screen_choice(10 ** 6, 10, option="fast")
    monkeypatch.delenv(knn_screen.SCREEN_ENV)
    # small calls stay on the float32 path under "auto"
    assert not knn_screen.knn_screen_choice(100, 10)[0]
    assert not knn_screen.knn_screen_choice(10 ** 6, 10, device="meta")[0]


def test_no_bf16_instructions_means_plain_path(pf, monkeypatch):
    # a CPU without bf16 instructions: never screened, not even when forced on
    monkeypatch.setenv("PLATONIC_FAST_KNN_SCREEN_NO_BF16", "1")
    assert knn_screen.bf16_hardware() is None
    assert not knn_screen.knn_screen_choice(10 ** 6, 10, option="on")[0]
    x = randn(100, 8, seed=0)
    knn_screen.stats(reset=True)
    pf.knn(x, 3, screen="on")
    assert knn_screen.stats()["calls"] == 0


def test_env_forces_off(pf, monkeypatch):
    monkeypatch.setenv(knn_screen.SCREEN_ENV, "off")
    knn_screen.stats(reset=True)
    pf.knn(randn(100, 8, seed=0), 3)
    assert knn_screen.stats()["calls"] == 0


def test_cpu_features_reported():
    f = knn_screen.cpu_features()
    for key in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_permitted", "amx_note"):
        assert key in f
    if not f["amx_tile"]:
        assert f["amx_note"]


def test_dot64_fixed_order():
    # the compiled pair kernel gives a pair the same number wherever it sits
    from platonic_fast import _core

    x = randn(50, 37, seed=4)
    qi = torch.tensor([3, 3, 7, 49, 0])
    ki = torch.tensor([5, 5, 5, 1, 0])
    a = torch.from_numpy(_core.knn_dot64(x.numpy(), x.numpy(), qi.numpy(), ki.numpy()))
    b = torch.from_numpy(_core.knn_dot64(x.numpy(), x.numpy(), qi.flip(0).numpy(), ki.flip(0).numpy())).flip(0)
    assert torch.equal(a, b) and a[0] == a[1]
    ref = (x[qi].double() * x[ki].double()).sum(dim=1)
    assert torch.allclose(a, ref, rtol=1e-15, atol=0)
    assert math.isclose(float(a[4]), float(x[0].double().pow(2).sum()), rel_tol=1e-15)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@needs_bf16
@settings(max_examples=25, deadline=None)
@given(n=st.integers(6, 60), d=st.integers(1, 12), k=st.integers(1, 5), seed=st.integers(0, 10 ** 6),
       levels=st.integers(1, 3), dup=st.booleans(), dtype=st.sampled_from(["float32", "float64", "bfloat16"]))
def test_property_screen_equals_exact(n, d, k, seed, levels, dup, dtype):
    import platonic_fast as pf

    k = min(k, n - 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, (n, d), generator=g).to(torch.float64)
    x = x + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64) * (seed % 2)
    if dup:
        x = with_duplicates(x, seed=seed)
    x = x.to(getattr(torch, dtype))
    if not bool((x != 0).any()):
        x[0, 0] = 1
    off = pf.knn(x, k, backend="cpu", screen="off")
    for product in PRODUCTS:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(knn_screen.PRODUCT_ENV, product)
            on = pf.knn(x, k, backend="cpu", screen="on")
        assert torch.equal(off[1], on[1]) and torch.equal(off[0], on[0]), product


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bf16", "tf32"])
@pytest.mark.parametrize("adversarial", [False, True])
def test_triton_screen_interpreted(kind, adversarial):
    # the GPU screens' certificate, run through the Triton kernel under TRITON_INTERPRET=1 (set
    # by conftest) on CPU tensors: the same lists and values as the exact path; the GPU proof
    # times them (bench/bench_gpu.py --ops screen)
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from platonic_fast.ops.knn import more_candidates, neighbours, settle
    from platonic_fast.rows import as_rows

    n, k = 70, 5
    x = randn(n, 16, seed=1, normalize=True)
    if adversarial:
        x = (x[0] + 1e-4 * x).contiguous()
    x[40] = x[3]
    q = as_rows(x)
    knn_screen.stats(reset=True)
    vals, idx, settled = knn_screen.candidates(q, None, k, k + 4, exclude_self=True, n_cand=n - 1,
                                               more=more_candidates, backend="triton", option=kind)
    st = knn_screen.stats()
    got = settle(q, q, vals, idx, k, exclude_self=True, n_cand=n - 1, settled=settled)
    want = neighbours(x, k, screen="off")
    assert want[2] == 0
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    if adversarial:
        assert st["fallback_rows"] > 0


def test_gpu_screens_only_by_name():
    assert not knn_screen.knn_screen_choice(10 ** 6, 10, device="cuda")[0]
    assert knn_screen.knn_screen_choice(10 ** 6, 10, device="cuda", option="tf32")[0]
    assert not knn_screen.knn_screen_choice(10 ** 6, 10, option="tf32")[0]
