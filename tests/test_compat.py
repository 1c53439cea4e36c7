"""platonic_fast.compat.AlignmentMetrics: a drop-in for platonic-rep's metrics.py."""

import inspect
import sys
import warnings

import numpy as np
import pytest
import torch

import dense_reference as R
from conftest import METRIC_ATOL, correlated_pair, reconcile_lists, requires_cuda, to_float

_EMPTY = inspect.Parameter.empty

# The reference's static methods: (parameter name, default) in order; facts from metrics.py.
REFERENCE_SIGNATURES = {
    "measure": [("metric", _EMPTY), ("*args", None), ("**kwargs", None)],
    "cycle_knn": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("topk", _EMPTY)],
    "mutual_knn": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("topk", _EMPTY)],
    "lcs_knn": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("topk", _EMPTY)],
    "cka": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("kernel_metric", "ip"),
            ("rbf_sigma", 1.0), ("unbiased", False)],
    "unbiased_cka": [("*args", None), ("**kwargs", None)],
    "svcca": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("cca_dim", 10)],
    "edit_distance_knn": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("topk", _EMPTY)],
    "cknna": [("feats_A", _EMPTY), ("feats_B", _EMPTY), ("topk", None),
              ("distance_agnostic", False), ("unbiased", True)],
}

REFERENCE_SUPPORTED = ["cycle_knn", "mutual_knn", "lcs_knn", "cka", "unbiased_cka", "cknna",
                       "svcca", "edit_distance_knn"]


@pytest.fixture(scope="module")
def AM():
    from platonic_fast.compat import AlignmentMetrics
    return AlignmentMetrics


@pytest.fixture(scope="module")
def data():
    return correlated_pair(300, 47, 29, seed=11)


def test_supported_metrics_same_list_same_order(AM):
    assert isinstance(AM.SUPPORTED_METRICS, list)
    assert AM.SUPPORTED_METRICS == REFERENCE_SUPPORTED


@pytest.mark.parametrize("name", list(REFERENCE_SIGNATURES))
def test_staticmethod_signature(AM, name):
    assert isinstance(inspect.getattr_static(AM, name), staticmethod), f"{name} not a staticmethod"
    params = list(inspect.signature(getattr(AM, name)).parameters.values())
    got = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            got.append(("*" + p.name, None))
        elif p.kind is p.VAR_KEYWORD:
            got.append(("**" + p.name, None))
        elif p.kind is p.KEYWORD_ONLY and p.default is not _EMPTY:
            continue  # extra keyword-only options (e.g. backend=) do not break drop-in use
        else:
            got.append((p.name, p.default))
    want = REFERENCE_SIGNATURES[name]
    if name == "unbiased_cka" and got != want:
        # an explicit signature is fine if it accepts the reference's cka arguments
        assert [n for n, _ in got][:2] == ["feats_A", "feats_B"], got
        return
    assert got == want


def _call(AM, name, a, b, k=10):
    if "knn" in name:
        return AM.measure(name, a, b, topk=k)
    if name == "svcca":
        return AM.measure(name, a, b, cca_dim=10)
    return AM.measure(name, a, b)


@pytest.mark.parametrize("name", ["cycle_knn", "mutual_knn", "cka", "unbiased_cka", "cknna"])
def test_return_type_python_float(AM, data, name):
    a, b = data
    assert type(_call(AM, name, a, b)) is float


def test_return_type_lcs_knn(AM, data):
    v = AM.lcs_knn(*data, 10)
    assert isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float32


def test_return_type_edit_distance_knn(AM, data):
    v = AM.edit_distance_knn(*data, 10)
    assert isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float64


def test_return_type_svcca(AM, data):
    v = AM.svcca(*data, cca_dim=10)
    assert isinstance(v, np.floating) and np.asarray(v).dtype == np.float64


@pytest.mark.parametrize("name", ["cycle_knn", "mutual_knn", "lcs_knn", "edit_distance_knn",
                                  "cknna"])
def test_knn_values_match_pf_and_reference(pf, AM, data, name):
    a, b = data
    got = to_float(_call(AM, name, a, b))
    assert got == pytest.approx(to_float(getattr(pf, name)(a, b, topk=10)), abs=METRIC_ATOL)
    la, lb = reconcile_lists(pf, a, 10), reconcile_lists(pf, b, 10)
    assert got == pytest.approx(getattr(R, name)(a, b, 10, knn_a=la, knn_b=lb), abs=METRIC_ATOL)


@pytest.mark.parametrize("kw", [{}, {"kernel_metric": "rbf", "rbf_sigma": 0.8},
                                {"unbiased": True}, {"kernel_metric": "rbf", "unbiased": True}],
                         ids=["ip", "rbf", "ip-unbiased", "rbf-unbiased"])
def test_cka_values(pf, AM, data, kw):
    a, b = data
    got = AM.cka(a, b, **kw)
    assert got == pytest.approx(pf.cka(a, b, **kw), abs=METRIC_ATOL)
    assert got == pytest.approx(R.cka(a, b, **kw), abs=METRIC_ATOL)
    if kw.get("unbiased"):
        kw2 = {k: v for k, v in kw.items() if k != "unbiased"}
        assert AM.unbiased_cka(a, b, **kw2) == pytest.approx(got, abs=1e-12)


def test_cka_positional_arguments(AM, data):
    a, b = data
    assert AM.cka(a, b, "rbf", 0.8, True) == pytest.approx(R.cka(a, b, "rbf", 0.8, True),
                                                           abs=METRIC_ATOL)


@pytest.mark.parametrize("kw", [{"unbiased": False}, {"distance_agnostic": True}],
                         ids=["biased", "distance_agnostic"])
def test_cknna_options(pf, AM, data, kw):
    a, b = data
    got = AM.cknna(a, b, topk=10, **kw)
    assert got == pytest.approx(pf.cknna(a, b, topk=10, **kw), abs=METRIC_ATOL)


def test_cknna_topk_below_two(AM, data):
    with pytest.raises(ValueError):
        AM.cknna(*data, topk=1)


@pytest.mark.parametrize("name", REFERENCE_SUPPORTED)
def test_measure_dispatch(AM, data, name):
    a, b = data
    if name == "svcca":  # randomised like the reference: the same seed gives the same value
        via_measure = to_float(AM.measure(name, a, b, cca_dim=10, seed=3))
        direct = to_float(AM.svcca(a, b, seed=3))
    else:
        via_measure = to_float(_call(AM, name, a, b))
        direct = to_float(getattr(AM, name)(a, b, **({"topk": 10} if "knn" in name else {})))
    assert via_measure == pytest.approx(direct, abs=1e-12)


def test_measure_unknown_metric(AM, data):
    with pytest.raises(ValueError, match="Unrecognized metric|not_a_metric"):
        AM.measure("not_a_metric", *data)


def test_positional_topk_like_the_reference(AM, data):
    # the reference's compute_score passes topk as a keyword, users often positionally
    a, b = data
    assert AM.mutual_knn(a, b, 5) == pytest.approx(AM.measure("mutual_knn", a, b, topk=5))


# --- svcca: the reference's own randomised estimator -------------------------------------------

# The reference's CCA (scikit-learn, max_iter=500) may stop at its iteration limit on
# near-equal canonical correlations; it warns then, and so do we, as the reference does.
_CCA_LIMIT = pytest.mark.filterwarnings("ignore:Maximum number of iterations reached")


def _platonic_rep_svcca(feats_a, feats_b, cca_dim=10):
    """Oracle: the steps of platonic-rep's AlignmentMetrics.svcca (metrics.py), on the global RNGs.

    Standardise (unbiased std + 1e-8), torch.svd_lowrank(q=cca_dim) of A then B, scikit-learn
    CCA(n_components=cca_dim) fitted and applied to both bases, 1e-10 Gaussian noise from
    np.random on the A scores then the B scores, mean of the per-component np.corrcoef.
    """
    from sklearn.cross_decomposition import CCA

    bases = []
    for x in (feats_a, feats_b):
        centred = x - torch.mean(x, dim=0)
        u = torch.svd_lowrank(centred / (torch.std(centred, dim=0) + 1e-8), q=cca_dim)[0]
        bases.append(u.cpu().numpy())
    model = CCA(n_components=cca_dim).fit(bases[0], bases[1])
    sa, sb = model.transform(bases[0], bases[1])
    sa = sa + 1e-10 * np.random.randn(*sa.shape)
    sb = sb + 1e-10 * np.random.randn(*sb.shape)
    return np.mean([np.corrcoef(sa[:, i], sb[:, i])[0, 1] for i in range(cca_dim)])


def _seed_globals(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


@pytest.fixture(scope="module")
def flat_pair():
    """Unnormalised Gaussian features (a flat spectrum), B = A + noise: N = 500, D = 128."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 128, generator=g)
    return a, a + 0.5 * torch.randn(500, 128, generator=g)


@pytest.fixture(scope="module")
def sklearn_available():
    pytest.importorskip("sklearn", reason="compat svcca needs scikit-learn (the test extra installs it)")


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    # these tests seed the global generators; leave them as they were for the tests after them
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)


@pytest.fixture(scope="module")
def flat_seeded(AM, flat_pair, sklearn_available):
    """compat svcca of the flat pair for seeds 0, 1, 2 (computed once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Maximum number of iterations reached")
        return [AM.svcca(*flat_pair, seed=s) for s in range(3)]


@_CCA_LIMIT
def test_svcca_is_the_reference_estimator(AM, flat_pair, flat_seeded):
    a, b = flat_pair
    _seed_globals(1)
    want = _platonic_rep_svcca(a, b)
    # seed=s: the reference's value after torch.manual_seed(s); np.random.seed(s)
    assert flat_seeded[1] == pytest.approx(want, abs=1e-12)
    # no seed: the global generators, drawn in the reference's order
    _seed_globals(1)
    assert AM.svcca(a, b) == pytest.approx(want, abs=1e-12)


def test_svcca_spread_and_difference_from_exact(pf, flat_pair, flat_seeded):
    # flat spectrum: svd_lowrank (q = cca_dim, 2 power iterations) misses the exact top
    # directions, so the reference's value is far below the exact SVCCA and varies per run
    exact = pf.svcca(*flat_pair)
    got = [float(v) for v in flat_seeded]
    assert exact == pytest.approx(0.7065, abs=1e-3)
    assert all(0.25 < v < 0.55 for v in got), got
    assert max(got) < exact - 0.2
    assert np.std(got) > 1e-3


@_CCA_LIMIT
def test_svcca_matches_exact_with_a_spectral_gap(pf, AM, sklearn_available):
    # a shared 10-dimensional signal well above the noise: the randomised SVD finds it
    g = torch.Generator().manual_seed(5)
    z = torch.randn(500, 10, generator=g)
    a = z @ torch.randn(10, 64, generator=g) * 3 + torch.randn(500, 64, generator=g)
    b = z @ torch.randn(10, 48, generator=g) * 3 + torch.randn(500, 48, generator=g)
    assert float(AM.svcca(a, b, seed=0)) == pytest.approx(pf.svcca(a, b), abs=0.01)


def test_svcca_seed_repeatable_and_private(AM, data, sklearn_available):
    a, b = data
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    v = AM.svcca(a, b, seed=7)
    assert isinstance(v, np.float64)
    assert AM.svcca(a, b, seed=7) == v
    assert AM.svcca(a, b, seed=np.int64(7)) == v
    assert AM.svcca(a, b, seed=8) != v
    # a seeded call leaves the global generators alone; an unseeded one draws from them
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    AM.svcca(a, b)
    assert not torch.equal(torch.get_rng_state(), torch_state)


@requires_cuda
def test_svcca_cuda_seed_is_the_reference_after_manual_seed(AM, data, sklearn_available):
    # on CUDA the randomised SVD draws from the device's generator, as in the reference
    a, b = (x.cuda() for x in data)
    cuda_state = torch.cuda.get_rng_state()
    try:
        _seed_globals(4)
        want = _platonic_rep_svcca(a, b)
        after_reference = torch.cuda.get_rng_state()
        assert AM.svcca(a, b, seed=4) == pytest.approx(want, abs=1e-12)
        assert torch.equal(torch.cuda.get_rng_state(), after_reference)  # seeded: state untouched
    finally:
        torch.cuda.set_rng_state(cuda_state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_svcca_low_precision_runs_in_float32(AM, data, sklearn_available, dtype):
    # the reference's svd_lowrank fails on half precision on the CPU; we upcast to float32
    a, b = (x.to(dtype) for x in data)
    assert AM.svcca(a, b, seed=2) == AM.svcca(a.float(), b.float(), seed=2)


def test_svcca_numpy_float64_input(AM, data, sklearn_available):
    a, b = (x.double() for x in data)
    assert AM.svcca(a.numpy(), b.numpy(), seed=1) == AM.svcca(a, b, seed=1)


_BAD_SVCCA_INPUT = {
    "mismatched-N": (lambda: (torch.randn(10, 5), torch.randn(11, 5)), {}),
    "nan": (lambda: (torch.full((10, 5), float("nan")), torch.randn(10, 5)), {}),
    "integer": (lambda: (torch.ones(10, 5, dtype=torch.int64), torch.randn(10, 5)), {}),
    "one-dimensional": (lambda: (torch.randn(10), torch.randn(10)), {}),
    "empty": (lambda: (torch.randn(0, 5), torch.randn(0, 5)), {}),
    "constant": (lambda: (torch.ones(10, 5), torch.randn(10, 5)), {}),
    "one-sample": (lambda: (torch.randn(1, 5), torch.randn(1, 5)), {"cca_dim": 1}),
    "cca_dim-above-width": (lambda: (torch.randn(10, 5), torch.randn(10, 8)), {"cca_dim": 6}),
    "cca_dim-zero": (lambda: (torch.randn(10, 5), torch.randn(10, 5)), {"cca_dim": 0}),
    "cca_dim-float": (lambda: (torch.randn(10, 5), torch.randn(10, 5)), {"cca_dim": 2.5}),
}


@pytest.mark.parametrize("case", list(_BAD_SVCCA_INPUT))
def test_svcca_bad_input_same_errors_as_pf(pf, AM, case):
    make, kw = _BAD_SVCCA_INPUT[case]
    a, b = make()
    with pytest.raises((ValueError, TypeError)) as want:
        pf.svcca(a, b, **kw)
    with pytest.raises(want.type) as got:
        AM.svcca(a, b, **kw)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("seed,err", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                      (True, TypeError), ("0", TypeError)])
def test_svcca_bad_seed(AM, data, seed, err):
    with pytest.raises(err, match="seed"):
        AM.svcca(*data, seed=seed)


def test_svcca_without_scikit_learn_names_the_extra(AM, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cross_decomposition", None)
    with pytest.raises(ImportError, match=r"platonic_fast\[compat\]"):
        AM.svcca(*data)
