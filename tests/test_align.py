"""pf.align (layer search) against align_dense, which scores every pair from scratch."""

import functools

import pytest
import torch
import torch.nn.functional as F

import dense_reference as R
from conftest import METRIC_ATOL

N = 64  # small N keeps the k-boundary gaps wide, so float32 vs float64 lists cannot differ
SEED = 4  # a seed whose data passes _assert_wide_k_boundary for k in (2, 5, 10)


def _model(z, widths, noises, seed):
    """Layers z @ W_l + noise_l·ε: alignment with another model decreases with the noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for w, s in zip(widths, noises):
        W = torch.randn(z.shape[1], w, generator=g, dtype=torch.float64)
        out.append(z @ W + s * torch.randn(z.shape[0], w, generator=g, dtype=torch.float64))
    return out


@functools.lru_cache(maxsize=None)
def models(seed=0, list_form=False):
    g = torch.Generator().manual_seed(1000 + seed)
    z = torch.randn(N, 5, generator=g, dtype=torch.float64)
    if list_form:
        xs = _model(z, [16, 33, 9], [3.0, 0.7, 1.5], seed)
        ys = _model(z, [21, 8, 40, 5], [2.0, 4.0, 0.9, 1.2], seed + 1)
        return [t.float() for t in xs], [t.float() for t in ys]
    xs = _model(z, [24] * 4, [3.0, 1.8, 0.6, 1.1], seed)
    ys = _model(z, [24] * 3, [0.8, 2.5, 1.4], seed + 1)
    return torch.stack(xs, 1).float(), torch.stack(ys, 1).float()


def _layers_for_guard(feats, q=0.95):
    if isinstance(feats, (list, tuple)):
        ls = [R.remove_outliers(f, q) for f in feats]
    else:
        t = R.remove_outliers(feats, q)
        ls = [t[:, i] for i in range(t.shape[1])]
    ls = ls + [torch.cat(ls, dim=1)]
    return [F.normalize(t, dim=-1) for t in ls]


def _assert_wide_k_boundary(feats, k):
    # Guard on the *test data*: the k-th and (k+1)-th neighbour scores are well apart in every
    # layer (and in the concatenation), so the neighbour sets cannot depend on rounding.
    for t in _layers_for_guard(feats):
        s = (t @ t.T).fill_diagonal_(float("-inf")).sort(dim=1, descending=True).values
        gap = float((s[:, k - 1] - s[:, k]).min())
        assert gap > 1e-5, f"test data has a near-tie at the k-boundary (gap {gap:.2e})"


def _res_scores(res):
    s = res.scores
    assert isinstance(s, torch.Tensor), "res.scores must be a torch tensor"
    assert s.dtype == torch.float64
    return s.cpu()


def _check(res, ref, atol=METRIC_ATOL):
    ref_scores, ref_best, ref_layers = ref
    got = _res_scores(res)
    assert got.shape == ref_scores.shape
    torch.testing.assert_close(got, ref_scores, atol=atol, rtol=0)
    # the best pair must be unambiguous in the test data for best_layers to be comparable
    flat = ref_scores.flatten().sort(descending=True).values
    assert float(flat[0] - flat[1]) > 10 * atol, "test data: the best pair is ambiguous"
    assert isinstance(res.best, float)
    assert res.best == pytest.approx(ref_best, abs=atol)
    assert res.best_layers == ref_layers
    if res.best_layers is not None:
        assert all(isinstance(v, int) for v in res.best_layers)


METRICS = [
    pytest.param("mutual_knn", {}, id="mutual_knn"),
    pytest.param("cknna", {}, id="cknna"),
    pytest.param("cknna", {"unbiased": False}, id="cknna-biased"),
    pytest.param("cka", {}, id="cka"),
    pytest.param("unbiased_cka", {}, id="unbiased_cka"),
    pytest.param("cka", {"kernel_metric": "rbf", "rbf_sigma": 0.7}, id="cka-rbf"),
]


@pytest.mark.parametrize("metric,kw", METRICS)
@pytest.mark.parametrize("list_form", [False, True], ids=["NxLxD", "list"])
def test_align_vs_dense(pf, metric, kw, list_form):
    x, y = models(SEED, list_form)
    if "knn" in metric:
        _assert_wide_k_boundary(x, 10)
        _assert_wide_k_boundary(y, 10)
    res = pf.align(x, y, metric=metric, topk=10, **kw)
    _check(res, R.align_dense(x, y, metric, topk=10, **kw))


@pytest.mark.parametrize("metric,kw", METRICS[:4])
@pytest.mark.parametrize("list_form", [False, True], ids=["NxLxD", "list"])
def test_align_concat(pf, metric, kw, list_form):
    x, y = models(SEED, list_form)
    res = pf.align(x, y, metric=metric, topk=10, concat=True, **kw)
    ref = R.align_dense(x, y, metric, topk=10, concat=True, **kw)
    lx = len(x) if list_form else x.shape[1]
    ly = len(y) if list_form else y.shape[1]
    assert tuple(_res_scores(res).shape) == (lx + 1, ly + 1)
    # the per-layer block is the plain search
    plain = pf.align(x, y, metric=metric, topk=10, **kw)
    torch.testing.assert_close(_res_scores(res)[:lx, :ly], _res_scores(plain), atol=1e-12, rtol=0)
    _check(res, ref)


@pytest.mark.parametrize("metric,kw", [
    pytest.param("cknna", {"unbiased": False}, id="cknna-biased"),
    pytest.param("cka", {"kernel_metric": "rbf", "rbf_sigma": 0.7}, id="cka-rbf"),
])
def test_align_concat_best_is_minus_one(pf, metric, kw):
    # with this data the concatenations of both models are the best pair
    x, y = models(SEED)
    ref = R.align_dense(x, y, metric, topk=10, concat=True, **kw)
    assert ref[2] == (-1, -1)
    res = pf.align(x, y, metric=metric, topk=10, concat=True, **kw)
    _check(res, ref)


@pytest.mark.parametrize("exact", [False, True], ids=["approx", "exact"])
@pytest.mark.parametrize("q", [0.9, 1.0])
def test_align_outlier_options(pf, q, exact):
    x, y = models(2)
    res = pf.align(x, y, metric="cka", q=q, exact=exact)
    _check(res, R.align_dense(x, y, "cka", q=q, exact=exact))


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
def test_align_rejects_a_clamp_quantile_outside_0_1(pf, q):
    # prepare_layers checks q before any layer is touched (the property run found q = 0 with
    # constant layers scored as NaN instead of refused)
    x, y = models(2)
    for exact in (False, True):
        with pytest.raises(ValueError, match="q must be in"):
            pf.align(x, y, metric="mutual_knn", q=q, exact=exact)


def test_align_topk_values(pf):
    x, y = models(SEED)
    for k in (2, 5):
        res = pf.align(x, y, metric="mutual_knn", topk=k)
        ref = R.align_dense(x, y, "mutual_knn", topk=k)
        torch.testing.assert_close(_res_scores(res), ref[0], atol=METRIC_ATOL, rtol=0)


def test_align_numpy_inputs(pf):
    x, y = models(SEED)
    res_np = pf.align(x.numpy(), y.numpy(), metric="cka")
    res_t = pf.align(x, y, metric="cka")
    torch.testing.assert_close(_res_scores(res_np), _res_scores(res_t), atol=1e-9, rtol=0)


def test_align_same_width_list_equals_tensor(pf):
    x, y = models(SEED)
    xl = [x[:, i] for i in range(x.shape[1])]
    yl = [y[:, j] for j in range(y.shape[1])]
    res_l = pf.align(xl, yl, metric="mutual_knn", topk=10)
    # a list is clamped layer by layer (as the reference's prepare_features), so compare
    # against the dense search of the same list, not of the stacked tensor
    _check(res_l, R.align_dense(xl, yl, "mutual_knn", topk=10))


def test_align_all_pairs_non_positive(pf):
    # 4 points whose nearest neighbours pair up differently in x and y: mutual_knn(k=1) = 0
    bx = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    by = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    x = torch.stack([bx, bx * 1.01, bx + 0.001], dim=1)
    y = torch.stack([by, by * 0.99], dim=1)
    ref = R.align_dense(x, y, "mutual_knn", topk=1)
    assert bool((ref[0] <= 0).all())
    res = pf.align(x, y, metric="mutual_knn", topk=1)
    torch.testing.assert_close(_res_scores(res), ref[0], atol=METRIC_ATOL, rtol=0)
    assert res.best == 0.0
    assert res.best_layers is None


def test_align_single_layer(pf):
    x, y = models(SEED)
    res = pf.align(x[:, :1], y[:, 2:], metric="cka")
    ref = R.align_dense(x[:, :1], y[:, 2:], "cka")
    torch.testing.assert_close(_res_scores(res), ref[0], atol=METRIC_ATOL, rtol=0)
    assert res.best_layers == (0, 0)


def test_align_does_not_modify_inputs(pf):
    x, y = models(SEED)
    x0, y0 = x.clone(), y.clone()
    pf.align(x, y, metric="cknna", topk=10, concat=True)
    assert torch.equal(x, x0) and torch.equal(y, y0)
