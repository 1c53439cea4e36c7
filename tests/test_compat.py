"""platonic_fast.compat.AlignmentMetrics: a drop-in for platonic-rep's metrics.py."""

import inspect

import numpy as np
import pytest
import torch

import dense_reference as R
from conftest import METRIC_ATOL, correlated_pair, reconcile_lists, to_float

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


@pytest.mark.slow
def test_svcca_exact_value(AM, data):
    a, b = data
    # the reference is randomised (svd_lowrank + iterative CCA + noise); ours is the exact value
    assert float(AM.svcca(a, b, cca_dim=10)) == pytest.approx(R.svcca(a, b, 10), abs=1e-4)
    assert float(AM.svcca(a, b)) == pytest.approx(R.svcca(a, b, 10), abs=1e-4)


@pytest.mark.parametrize("name", REFERENCE_SUPPORTED)
def test_measure_dispatch(AM, data, name):
    a, b = data
    via_measure = to_float(_call(AM, name, a, b))
    direct = to_float(getattr(AM, name)(a, b, **({"topk": 10} if "knn" in name else {})))
    tol = 1e-4 if name == "svcca" else 1e-12
    assert via_measure == pytest.approx(direct, abs=tol)


def test_measure_unknown_metric(AM, data):
    with pytest.raises(ValueError, match="Unrecognized metric|not_a_metric"):
        AM.measure("not_a_metric", *data)


def test_positional_topk_like_the_reference(AM, data):
    # the reference's compute_score passes topk as a keyword, users often positionally
    a, b = data
    assert AM.mutual_knn(a, b, 5) == pytest.approx(AM.measure("mutual_knn", a, b, topk=5))
