"""Bad input (docs/metrics.md#inputs): ValueError/TypeError naming the argument; nothing else, never a crash."""

import inspect
import math
import re

import numpy as np
import pytest
import torch

import dense_reference as R
from conftest import METRIC_ATOL, grid

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _param_names(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()]


def _arg_pattern(*names):
    # the argument's name as a word (or quoted), e.g. "topk must be ..." / "'a' is empty"
    alts = "|".join(re.escape(n) for n in names)
    return rf"(?<![A-Za-z0-9_])({alts})(?![A-Za-z0-9_])"


def _ab_names(fn):
    names = _param_names(fn)
    return names[0], names[1]


def raises_naming(exc, *names):
    return pytest.raises(exc, match=_arg_pattern(*names))


@pytest.fixture(scope="module")
def ab():
    return grid(20, 6, seed=1), grid(20, 4, seed=2)


KNN_METRICS = ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"]
ALL_METRICS = KNN_METRICS + ["cka", "unbiased_cka", "svcca"]


def _default_kw(name):
    return {"topk": 3} if "knn" in name else ({"cca_dim": 2} if name == "svcca" else {})


# ----------------------------------------------------------------------------------------------
# metrics: feature checks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_METRICS)
def test_mismatched_n(pf, ab, name):
    fn = getattr(pf, name)
    a, b = ab
    with raises_naming(ValueError, *_ab_names(fn)):
        fn(a, b[:-1], **_default_kw(name))


@pytest.mark.parametrize("which", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize("bad", ["1d", "3d", "0d"])
@pytest.mark.parametrize("name", ALL_METRICS)
def test_non_2d(pf, ab, name, bad, which):
    fn = getattr(pf, name)
    args = list(ab)
    x = args[which]
    args[which] = {"1d": x[:, 0], "3d": x[:, None, :], "0d": x[0, 0]}[bad]
    with raises_naming(ValueError, _ab_names(fn)[which]):
        fn(*args, **_default_kw(name))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize("name", ALL_METRICS)
def test_non_finite(pf, ab, name, which, value):
    fn = getattr(pf, name)
    args = [t.clone() for t in ab]
    args[which][7, 2] = value
    with raises_naming(ValueError, _ab_names(fn)[which]):
        fn(*args, **_default_kw(name))


@pytest.mark.parametrize("shape", [(0, 4), (20, 0), (0, 0)], ids=["no-rows", "no-cols", "0x0"])
@pytest.mark.parametrize("name", ["mutual_knn", "cka", "cknna", "svcca"])
def test_empty(pf, ab, name, shape):
    fn = getattr(pf, name)
    a = torch.zeros(shape)
    b = torch.zeros(shape[0], 3)
    with pytest.raises(ValueError, match=_arg_pattern(*_ab_names(fn))):
        fn(a, b, **_default_kw(name))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64], ids=str)
@pytest.mark.parametrize("name", ALL_METRICS)
def test_non_float_dtype(pf, ab, name, dtype):
    fn = getattr(pf, name)
    a, b = ab
    with raises_naming(TypeError, _ab_names(fn)[0]):
        fn((a * 8).to(dtype), b, **_default_kw(name))
    with raises_naming(TypeError, _ab_names(fn)[1]):
        fn(a, (b * 8).to(dtype), **_default_kw(name))


@pytest.mark.parametrize("name", ["mutual_knn", "cka"])
def test_numpy_int_and_object_inputs(pf, ab, name):
    fn = getattr(pf, name)
    a, b = ab
    with pytest.raises(TypeError, match=_arg_pattern(_ab_names(fn)[0])):
        fn((a.numpy() * 8).astype(np.int64), b, **_default_kw(name))
    with pytest.raises(TypeError):
        fn("abc", b, **_default_kw(name))


# ----------------------------------------------------------------------------------------------
# metrics: parameter checks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("topk", [0, -1, 20, 21, 1000], ids=lambda k: f"topk={k}")
@pytest.mark.parametrize("name", KNN_METRICS)
def test_topk_out_of_range(pf, ab, name, topk):
    with raises_naming(ValueError, "topk"):
        getattr(pf, name)(*ab, topk=topk)


@pytest.mark.parametrize("topk", [2.5, 3.0, "3", None, True], ids=repr)
@pytest.mark.parametrize("name", [m for m in KNN_METRICS if m != "cknna"])
def test_topk_not_an_int(pf, ab, name, topk):
    with pytest.raises((TypeError, ValueError), match=_arg_pattern("topk")):
        getattr(pf, name)(*ab, topk=topk)


@pytest.mark.parametrize("topk", [2.5, 3.0, "3", True], ids=repr)
def test_cknna_topk_not_an_int(pf, ab, topk):
    # None is valid for cknna: the reference's default, meaning N - 1 neighbours.
    with pytest.raises((TypeError, ValueError), match=_arg_pattern("topk")):
        pf.cknna(*ab, topk=topk)


def test_cknna_topk_none_means_all_others(pf, ab):
    n = ab[0].shape[0]
    assert pf.cknna(*ab, topk=None) == pytest.approx(pf.cknna(*ab, topk=n - 1))


def test_topk_numpy_integer_accepted(pf, ab):
    assert pf.mutual_knn(*ab, topk=np.int64(3)) == pytest.approx(pf.mutual_knn(*ab, topk=3))


def test_cknna_topk_below_two(pf, ab):
    with raises_naming(ValueError, "topk"):
        pf.cknna(*ab, topk=1)


@pytest.mark.parametrize("call", [
    pytest.param(lambda pf, a, b: pf.unbiased_cka(a, b), id="unbiased_cka"),
    pytest.param(lambda pf, a, b: pf.cka(a, b, unbiased=True), id="cka-unbiased"),
    pytest.param(lambda pf, a, b: pf.cka(a, b, kernel_metric="rbf", unbiased=True),
                 id="cka-rbf-unbiased"),
    pytest.param(lambda pf, a, b: pf.cknna(a, b, topk=2), id="cknna-unbiased"),
])
def test_unbiased_needs_four_samples(pf, call):
    a, b = grid(3, 5, seed=1), grid(3, 2, seed=2)
    with pytest.raises(ValueError, match=r"4|N|sample"):
        call(pf, a, b)


def test_biased_allows_three_samples(pf):
    a, b = grid(3, 5, seed=1) + 0.1, grid(3, 2, seed=2) + 0.1
    assert pf.cka(a, b) == pytest.approx(R.cka(a, b), abs=METRIC_ATOL)


@pytest.mark.parametrize("kernel", ["linear", "RBF", "", None, 1], ids=repr)
def test_unknown_kernel_metric(pf, ab, kernel):
    with pytest.raises((ValueError, TypeError), match=_arg_pattern("kernel_metric")):
        pf.cka(*ab, kernel_metric=kernel)
    with pytest.raises((ValueError, TypeError), match=_arg_pattern("kernel_metric")):
        pf.unbiased_cka(*ab, kernel_metric=kernel)


@pytest.mark.parametrize("cca_dim", [0, -1, 5, 21, 2.0], ids=lambda v: f"cca_dim={v!r}")
def test_svcca_cca_dim(pf, cca_dim):
    a, b = grid(20, 6, seed=1), grid(20, 4, seed=2)  # min(N, Da, Db) = 4
    with pytest.raises((ValueError, TypeError), match=_arg_pattern("cca_dim")):
        pf.svcca(a, b, cca_dim=cca_dim)


def test_svcca_cca_dim_limit_is_min_of_n_and_widths(pf):
    a, b = grid(3, 6, seed=1), grid(3, 5, seed=2)
    with raises_naming(ValueError, "cca_dim"):
        pf.svcca(a, b, cca_dim=4)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_unknown_backend(pf, ab, name):
    with pytest.raises(ValueError, match="backend"):
        getattr(pf, name)(*ab, backend="no_such_backend", **_default_kw(name))


def test_unknown_backend_knn(pf, ab):
    with pytest.raises(ValueError, match="backend"):
        pf.knn(ab[0], 3, backend="no_such_backend")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", ALL_METRICS + ["knn"])
def test_explicit_backend_is_strict(pf, ab, name, backend):
    # STYLE/API: an explicit backend that cannot run on these (CPU) tensors raises a ValueError
    # listing the available ones; it must not silently run something else.
    from platonic_fast import _backends

    if name == "knn":
        call = lambda: pf.knn(ab[0], 3, backend=backend)  # noqa: E731
    else:
        call = lambda: getattr(pf, name)(*ab, backend=backend, **_default_kw(name))  # noqa: E731
    if backend in _backends.available("knn", "cpu"):
        pytest.skip(f"{backend} serves CPU tensors in this build")
    with pytest.raises(ValueError, match="available"):
        call()


# ----------------------------------------------------------------------------------------------
# knn
# ----------------------------------------------------------------------------------------------

def test_knn_k_range(pf):
    x = grid(10, 3, seed=0)
    k_name = _param_names(pf.knn)[1] if len(_param_names(pf.knn)) > 1 else "k"
    for k in (0, -3, 10, 11):
        with pytest.raises(ValueError, match=_arg_pattern("k", k_name)):
            pf.knn(x, k)
    with pytest.raises(ValueError, match=_arg_pattern("k", k_name)):
        pf.knn(x, 11, exclude_self=False)
    pf.knn(x, 10, exclude_self=False)  # k = N allowed when self is not excluded
    with pytest.raises((TypeError, ValueError), match=_arg_pattern("k", k_name)):
        pf.knn(x, 2.5)


def test_knn_cross_checks(pf):
    q, keys = grid(5, 3, seed=0), grid(8, 3, seed=1)
    with pytest.raises(ValueError, match=r"\bk\b"):
        pf.knn(q, keys, 9)
    with pytest.raises(ValueError, match=r"\bk\b"):
        pf.knn(q, keys, 0)
    pf.knn(q, keys, 8)
    with pytest.raises(ValueError, match=r"(?i)width|\bD\b|dim|feature|column"):
        pf.knn(q, grid(8, 4, seed=1), 2)


@pytest.mark.parametrize("bad", ["nan", "int", "1d", "empty", "bool"])
def test_knn_bad_features(pf, bad):
    x = grid(10, 3, seed=0)
    if bad == "nan":
        x[3, 1] = math.nan
        exc = ValueError
    elif bad == "int":
        x = (x * 8).to(torch.int32)
        exc = TypeError
    elif bad == "bool":
        x = x > 0
        exc = TypeError
    elif bad == "1d":
        x = x[:, 0]
        exc = ValueError
    else:
        x = x[:0]
        exc = ValueError
    with pytest.raises(exc):
        pf.knn(x, 1)
    good = grid(4, 3, seed=1)
    with pytest.raises(exc):
        pf.knn(good, x, 1)  # bad keys
    with pytest.raises(exc):
        pf.knn(x, good, 1)  # bad queries


# ----------------------------------------------------------------------------------------------
# remove_outliers, measure, align
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf], ids=repr)
def test_remove_outliers_q_range(pf, q):
    with pytest.raises(ValueError, match=_arg_pattern("q")):
        pf.remove_outliers(torch.randn(4, 5), q=q)


def test_remove_outliers_bad_feats(pf):
    with pytest.raises(TypeError):
        pf.remove_outliers(torch.arange(12).view(3, 4), q=0.5)
    with pytest.raises(ValueError):
        pf.remove_outliers(torch.zeros(0, 4), q=0.5)


def test_measure_unknown(pf, ab):
    with pytest.raises(ValueError, match="cknna"):
        pf.measure("nope", *ab)


@pytest.fixture(scope="module")
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 3, 8, generator=g), torch.randn(30, 2, 5, generator=g)


def test_align_mismatched_n(pf, feats):
    x, y = feats
    with pytest.raises(ValueError):
        pf.align(x, y[:-1], metric="cka")
    with pytest.raises(ValueError):
        pf.align([x[:, 0], x[:-1, 1]], y, metric="cka")


def test_align_2d_tensor(pf, feats):
    x, y = feats
    with pytest.raises(ValueError, match=_arg_pattern(*_param_names(pf.align)[:2])):
        pf.align(x[:, 0], y, metric="cka")
    with pytest.raises(ValueError, match=_arg_pattern(*_param_names(pf.align)[:2])):
        pf.align(x, y[:, 0], metric="cka")


def test_align_bad_metric_and_topk(pf, feats):
    x, y = feats
    with pytest.raises(ValueError, match="metric|mutual_knn"):
        pf.align(x, y, metric="nope")
    with pytest.raises(ValueError, match="topk"):
        pf.align(x, y, metric="mutual_knn", topk=30)
    with pytest.raises(ValueError):
        pf.align([], y, metric="cka")


def test_align_non_finite_and_int(pf, feats):
    x, y = feats
    x = x.clone()
    x[2, 1, 3] = math.nan
    with pytest.raises(ValueError):
        pf.align(x, y, metric="cka")
    with pytest.raises(TypeError):
        pf.align((feats[0] * 8).long(), y, metric="cka")


# ----------------------------------------------------------------------------------------------
# property tests: any input -> a correct result or ValueError/TypeError, in-process
# ----------------------------------------------------------------------------------------------

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPES = FLOATS + [torch.int32, torch.int64, torch.uint8, torch.bool]


@st.composite
def features(draw, n=None):
    n = draw(st.integers(1, 40)) if n is None else n
    d = draw(st.integers(0, 8))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    x = grid(n, d, seed=seed, levels=3)  # dyadic: exact scores in every float dtype
    inject = draw(st.sampled_from([None, None, None, math.nan, math.inf, -math.inf]))
    if inject is not None and x.numel() > 0:
        pos = draw(st.integers(0, x.numel() - 1))
        x.view(-1)[pos] = inject
    ndim = draw(st.sampled_from([2, 2, 2, 2, 1, 3]))
    if ndim == 1:
        x = x.reshape(-1)
    elif ndim == 3:
        x = x.unsqueeze(1)
    x = x.to(dtype) if dtype.is_floating_point else (x * 8).nan_to_num(0, 0, 0).to(dtype)
    return x


def _valid(x):
    return (x.dtype in FLOATS and x.dim() == 2 and x.numel() > 0
            and bool(torch.isfinite(x.float()).all()))


def _call_or_reject(ok, fn, *args, **kwargs):
    """fn(*args, **kwargs) for a valid input (ok); for an invalid one, None once the call has
    raised ValueError or TypeError."""
    if not ok:
        with pytest.raises((ValueError, TypeError)):
            fn(*args, **kwargs)
        return None
    return fn(*args, **kwargs)


@given(x=features(), k=st.integers(-2, 42), exclude_self=st.booleans())
@pytest.mark.slow
def test_property_knn_self(pf, x, k, exclude_self):
    n = x.shape[0] if x.dim() >= 1 else 0
    ok = _valid(x) and 1 <= k <= (n - 1 if exclude_self else n)
    result = _call_or_reject(ok, pf.knn, x, k, exclude_self=exclude_self)
    if result is None:
        return
    vals, idx = result
    ref_vals, ref_idx = R.knn(x, k, exclude_self=exclude_self)
    assert torch.equal(torch.as_tensor(idx).cpu(), ref_idx)
    torch.testing.assert_close(torch.as_tensor(vals).to(torch.float64), ref_vals,
                               atol=1e-6, rtol=0)


@given(data=st.data())
def test_property_knn_cross(pf, data):
    q = data.draw(features())
    keys = data.draw(features())
    k = data.draw(st.integers(-2, 42))
    ok = (_valid(q) and _valid(keys) and q.shape[1] == keys.shape[1]
          and 1 <= k <= keys.shape[0])
    result = _call_or_reject(ok, pf.knn, q, keys, k)
    if result is None:
        return
    vals, idx = result
    ref_vals, ref_idx = R.knn_cross(q, keys, k)
    assert torch.equal(torch.as_tensor(idx).cpu(), ref_idx)


def _ill_conditioned(want64, want32):
    # Degenerate inputs (e.g. all rows equal) make HSIC ~ 0 and the ratio pure rounding noise:
    # when float32 and float64 evaluations of the *reference* disagree, no answer is "correct".
    if math.isnan(want64) or math.isnan(want32):
        return not (math.isnan(want64) and math.isnan(want32))
    return abs(want64 - want32) > 1e-4


def _same(got, want, tol=METRIC_ATOL):
    got = float(got)
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= tol


def _assert_score(got, reference):
    """got: a float equal to reference(torch.float64), unless the input is ill-conditioned (then
    only the type is checked: such inputs have no single right answer)."""
    assert isinstance(got, float)
    want = reference(torch.float64)
    if not _ill_conditioned(want, reference(torch.float32)):
        assert _same(got, want), (got, want)


@given(data=st.data(), metric=st.sampled_from(["mutual_knn", "cycle_knn", "lcs_knn",
                                                "edit_distance_knn"]))
def test_property_knn_metrics(pf, data, metric):
    a = data.draw(features())
    same_n = data.draw(st.booleans())
    b = data.draw(features(n=a.shape[0] if (same_n and a.dim() >= 1) else None))
    k = data.draw(st.integers(-2, 42))
    fn = getattr(pf, metric)
    ok = (_valid(a) and _valid(b) and a.shape[0] == b.shape[0] and 1 <= k <= a.shape[0] - 1)
    got = _call_or_reject(ok, fn, a, b, topk=k)
    if got is None:
        return
    assert _same(got, getattr(R, metric)(a, b, k))


@given(data=st.data(), unbiased=st.booleans(), agnostic=st.booleans())
def test_property_cknna(pf, data, unbiased, agnostic):
    a = data.draw(features())
    b = data.draw(features(n=a.shape[0] if a.dim() >= 1 else None))
    k = data.draw(st.integers(-2, 42))
    ok = (_valid(a) and _valid(b) and 2 <= k <= a.shape[0] - (1 if unbiased else 0)
          and (a.shape[0] >= 4 or not unbiased or agnostic))
    got = _call_or_reject(ok, pf.cknna, a, b, topk=k, unbiased=unbiased, distance_agnostic=agnostic)
    if got is None:
        return
    _assert_score(got, lambda dtype: R.cknna(a, b, k, distance_agnostic=agnostic, unbiased=unbiased, dtype=dtype))


@given(data=st.data(), kernel=st.sampled_from(["ip", "rbf"]), unbiased=st.booleans(),
       sigma=st.sampled_from([0.5, 1.0, 3.0]))
def test_property_cka(pf, data, kernel, unbiased, sigma):
    a = data.draw(features())
    b = data.draw(features(n=a.shape[0] if a.dim() >= 1 else None))
    ok = _valid(a) and _valid(b) and (a.shape[0] >= 4 or not unbiased)
    got = _call_or_reject(ok, pf.cka, a, b, kernel_metric=kernel, rbf_sigma=sigma, unbiased=unbiased)
    if got is None:
        return
    _assert_score(got, lambda dtype: R.cka(a, b, kernel, sigma, unbiased, dtype=dtype))


@given(data=st.data())
def test_property_svcca(pf, data):
    a = data.draw(features())
    b = data.draw(features(n=a.shape[0] if a.dim() >= 1 else None))
    cca_dim = data.draw(st.integers(-1, 10))
    ok = (_valid(a) and _valid(b) and a.shape[0] >= 2
          and 1 <= cca_dim <= min(a.shape[0], a.shape[1], b.shape[1]))
    v = _call_or_reject(ok, pf.svcca, a, b, cca_dim=cca_dim)
    if v is None:
        return
    v = float(v)
    # rank-deficient inputs leave the subspace arbitrary: only the range is determined
    assert math.isnan(v) or -1e-6 <= v <= 1 + 1e-6


@given(x=features(), q=st.sampled_from([-0.5, 0.0, 0.3, 0.95, 1.0, 1.5, math.nan]),
       exact=st.booleans())
def test_property_remove_outliers(pf, x, q, exact):
    ok = (x.dtype in FLOATS and 0 < q <= 1 and x.numel() > 0 and (exact or x.dim() >= 2)
          and (q == 1 or bool(torch.isfinite(x.float()).all())))
    out = _call_or_reject(ok, pf.remove_outliers, x, q=q, exact=exact)
    if out is None:
        return
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("shape", [(0, 3, 4), (5, 0, 4), (5, 3, 0)])
def test_align_empty_tensor(pf, shape):
    with pytest.raises(ValueError, match="feats_x is empty"):
        pf.align(torch.zeros(shape), torch.randn(5, 2, 4))
