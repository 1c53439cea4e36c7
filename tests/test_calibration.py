"""Permutation nulls (calibration.py, docs/metrics.md#calibration): the formulas against a plain implementation and
against the calibrated-similarity package with the same permutations; relabelled nulls equal
nulls recomputed from permuted features; exact chance levels; p-value uniformity; bad input."""

import itertools
import math

import pytest
import torch

import platonic_fast as pf
from platonic_fast.metrics import METRICS

from conftest import randn

TOPK_OPTS = {"topk": 5}


def _opts(metric):
    return dict(TOPK_OPTS) if METRICS[metric].takes_topk else {}


def _related(n=120, seed=0):
    a = randn(n, 12, seed=seed, dtype=torch.float64)
    b = a[:, :8] @ randn(8, 10, seed=seed + 1, dtype=torch.float64) + 2.0 * randn(n, 10, seed=seed + 2,
                                                                                   dtype=torch.float64)
    return a, b


# --- the formulas -------------------------------------------------------------------------------


def _plain(observed, null, alpha, s_max):
    """docs/metrics.md#calibration written out with Python lists."""
    k = len(null)
    p = (1 + sum(v >= observed for v in null)) / (k + 1)
    combined = sorted([observed, *null])
    rank = min(max(math.ceil((1 - alpha) * (k + 1)), 1), k + 1)
    tau = combined[rank - 1]
    if s_max is None:
        return p, tau, max(observed - tau, 0.0)
    return p, tau, min(max((observed - tau) / max(s_max - tau, 1e-12), 0.0), 1.0)


@pytest.mark.parametrize("k", [1, 2, 19, 99, 200])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.5, 0.99])
@pytest.mark.parametrize("s_max", [1.0, 10.0, None])
def test_formulas_match_plain_implementation(k, alpha, s_max):
    g = torch.Generator().manual_seed(k)
    null = (torch.rand(k, generator=g, dtype=torch.float64) * 0.5).tolist()
    for observed in (0.0, 0.25, null[0], 0.75):  # below, inside, tied with, above the null
        got = pf.null_calibration(observed, null, alpha=alpha, s_max=s_max)
        assert got == pytest.approx(_plain(observed, null, alpha, s_max), abs=0, rel=0)


def test_ties_count_as_at_least_as_large():
    p, tau, cal = pf.null_calibration(0.3, [0.3, 0.3, 0.1], alpha=0.5, s_max=1.0)
    assert p == 0.75 and tau == 0.3 and cal == 0.0  # (1 + 2) / 4: both ties count


# --- against calibrated-similarity, same permutations ------------------------------------------


cs = pytest.importorskip("calibrated_similarity")


@pytest.mark.parametrize("metric", pf.SUPPORTED_METRICS)
def test_calibrate_matches_calibrated_similarity(metric):
    a, b = _related()
    a, b = a.float(), b.float()
    opts = _opts(metric)
    s_max = 5.0 if metric == "lcs_knn" else 1.0

    def sim(x, y):
        return pf.measure(metric, x, y, **opts)

    want_cal, want_p, want_tau = cs.calibrate(a, b, sim, K=30, alpha=0.1, smax=s_max,
                                              generator=torch.Generator().manual_seed(5))
    got = pf.calibrate(metric, a, b, permutations=30, alpha=0.1, generator=torch.Generator().manual_seed(5),
                       **opts)
    assert got.p_value == pytest.approx(float(want_p), abs=1e-7)
    assert got.tau == pytest.approx(float(want_tau), abs=1e-6)
    assert got.calibrated == pytest.approx(float(want_cal), abs=1e-5)
    assert got.s_max == s_max and got.permutations == 30


@pytest.mark.parametrize("metric,agg", [("mutual_knn", "max"), ("cknna", "mean"), ("cka", "max"),
                                        ("svcca", "mean"), ("lcs_knn", "max")])
def test_align_null_matches_calibrate_layers(metric, agg):
    n = 90
    xs = [randn(n, 6 + i, seed=i) for i in range(3)]
    ys = [xs[0][:, :5] + 0.5 * randn(n, 5, seed=10), randn(n, 7, seed=11)]
    opts = _opts(metric)
    if metric == "svcca":
        opts = {"cca_dim": 4}
    # align clamps (q=1: no-op) and L2-normalises: give the package the same layers
    norm = [torch.nn.functional.normalize(t, dim=1) for t in xs], [torch.nn.functional.normalize(t, dim=1) for t in ys]
    s_max = 5.0 if metric == "lcs_knn" else 1.0

    def sim(x, y):
        return pf.measure(metric, x, y, **opts)

    want_cal, want_p, want_tau = cs.calibrate_layers(*norm, sim, agg=agg, K=20, alpha=0.05, smax=s_max,
                                                     generator=torch.Generator().manual_seed(2))
    res = pf.align(xs, ys, metric, q=1.0, permutations=20, generator=torch.Generator().manual_seed(2),
                   **{k: v for k, v in opts.items()})
    got = getattr(res.calibration, agg)
    assert got.p_value == pytest.approx(float(want_p), abs=1e-7)
    assert got.tau == pytest.approx(float(want_tau), abs=1e-6)
    assert got.calibrated == pytest.approx(float(want_cal), abs=1e-5)


# --- relabelled nulls equal recomputed nulls ----------------------------------------------------


@pytest.mark.parametrize("metric", pf.SUPPORTED_METRICS)
def test_relabelled_null_equals_recomputed(metric):
    """Tie-free float64 data: the null from relabelled states equals scores on permuted features."""
    a, b = _related(n=80, seed=3)
    opts = _opts(metric)
    perms = torch.stack([torch.randperm(80, generator=torch.Generator().manual_seed(s)) for s in range(8)])
    got = pf.calibrate(metric, a, b, perm=perms, **opts).null
    want = torch.tensor([pf.measure(metric, a, b[p], **opts) for p in perms], dtype=torch.float64)
    if METRICS[metric].takes_topk and metric != "cknna":
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # integer counts: exactly
    else:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "cknna", "svcca"])
def test_layer_null_equals_recomputed(metric):
    xs = [randn(60, 5, seed=i, dtype=torch.float64) for i in range(2)]
    ys = [randn(60, 6, seed=5 + i, dtype=torch.float64) for i in range(3)]
    opts = {"cca_dim": 3} if metric == "svcca" else _opts(metric)
    perms = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(s)) for s in range(4)])
    res = pf.align(xs, ys, metric, q=1.0, perm=perms, **opts)
    # align works in float32 on L2-normalised rows (q=1: no clamp)
    layers_x = [torch.nn.functional.normalize(t.float(), dim=1) for t in xs]
    layers_y = [torch.nn.functional.normalize(t.float(), dim=1) for t in ys]
    for t, p in enumerate(perms):
        want = torch.tensor([[pf.measure(metric, x, y[p], **opts) for y in layers_y] for x in layers_x],
                            dtype=torch.float64)
        torch.testing.assert_close(res.calibration.null[t], want, rtol=1e-12, atol=1e-12)
        assert res.calibration.max.null[t] == pytest.approx(float(want.max()), abs=1e-12)
        assert res.calibration.mean.null[t] == pytest.approx(float(want.mean()), abs=1e-12)


def test_ties_keep_the_original_order():
    """Duplicate rows tie: relabelled lists keep B's tie order (by original index), so a null from
    relabelled lists may differ from one recomputed on B[π] (ties by new index); both are valid
    neighbour lists, with the same similarity at every position."""
    base = randn(20, 4, seed=1, dtype=torch.float64)
    b = torch.cat([base, base])  # every row has an exact duplicate
    pb = pf.prepare("mutual_knn", b, topk=3)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    relabelled = pb.permute(perm).indices
    recomputed = pf.prepare("mutual_knn", b[perm], topk=3).indices
    bp = b[perm]
    sims = lambda idx: (bp[:, None, :] * bp[idx]).sum(-1)  # noqa: E731
    torch.testing.assert_close(sims(relabelled), sims(recomputed))


# --- chance levels ------------------------------------------------------------------------------


def test_mutual_knn_chance_is_k_over_n_minus_1():
    a, b = _related(n=101)
    c = pf.calibrate("mutual_knn", a, b, permutations=5, generator=0, topk=7)
    assert c.chance_exact and c.chance == pytest.approx(7 / 100)


@pytest.mark.parametrize("kernel", ["ip", "rbf"])
@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_cka_chance_is_the_exact_permutation_mean(metric, kernel):
    """All 720 permutations of N = 6 samples: the mean equals the closed form."""
    a, b = randn(6, 3, seed=4, dtype=torch.float64), randn(6, 2, seed=9, dtype=torch.float64)
    perms = torch.tensor(list(itertools.permutations(range(6))))
    c = pf.calibrate(metric, a, b, perm=perms, kernel_metric=kernel, rbf_sigma=2.0)
    assert c.chance_exact
    assert c.chance == pytest.approx(float(c.null.mean()), abs=1e-12)
    if metric == "unbiased_cka":
        assert c.chance == 0.0


def test_biased_cka_chance_grows_with_width():
    """Independent features: biased CKA's chance level rises with width (the 'Aristotelian' point)."""
    chances = [pf.calibrate("cka", randn(300, d, seed=1), randn(300, d, seed=2), permutations=2, generator=0).chance
               for d in (4, 64, 1024)]
    assert chances[0] < chances[1] < chances[2]


# --- validity: uniform p-values under independence ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "cknna"])
def test_p_values_of_independent_features_are_uniform(metric):
    stats = pytest.importorskip("scipy.stats")
    ps = []
    for seed in range(300):
        a, b = randn(60, 6, seed=2 * seed), randn(60, 4, seed=2 * seed + 1)
        ps.append(pf.calibrate(metric, a, b, permutations=49, generator=seed, **_opts(metric)).p_value)
    # p takes values j/50: KS is conservative for a discrete law; a loose level guards against noise
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    assert abs(sum(p <= 0.05 for p in ps) / len(ps) - 0.05) < 0.04


def test_p_values_small_smoke():
    """Fast lane: related data is significant, independent data mostly not."""
    a, b = _related()
    assert pf.calibrate("mutual_knn", a, b, permutations=19, generator=0, topk=5).p_value == 0.05
    ps = [pf.calibrate("mutual_knn", randn(60, 5, seed=s), randn(60, 5, seed=100 + s), permutations=19,
                       generator=s, topk=5).p_value for s in range(20)]
    assert sum(p <= 0.05 for p in ps) <= 4


# --- options and seeds --------------------------------------------------------------------------


def test_same_seed_same_null_and_int_seed():
    a, b = _related()
    c1 = pf.calibrate("cknna", a, b, permutations=10, generator=3, topk=5)
    c2 = pf.calibrate("cknna", a, b, permutations=10, generator=torch.Generator().manual_seed(3), topk=5)
    torch.testing.assert_close(c1.null, c2.null, rtol=0, atol=0)


def test_callable_permutations_and_relu_form():
    a, b = _related()
    calls = []

    def block_perm(n, device):  # permute within two halves only
        g = torch.Generator().manual_seed(len(calls))
        calls.append(n)
        h = n // 2
        return torch.cat([torch.randperm(h, generator=g), h + torch.randperm(n - h, generator=g)])

    c = pf.calibrate("lcs_knn", a, b, permutations=6, perm=block_perm, s_max=None, topk=5)
    assert calls == [120] * 6 and c.s_max is None
    assert c.calibrated == pytest.approx(max(c.observed - c.tau, 0.0))


def test_lcs_uses_k_as_maximum_and_as_dict():
    a, b = _related()
    c = pf.calibrate("lcs_knn", a, b, permutations=4, generator=0, topk=6)
    assert c.s_max == 6.0
    d = c.as_dict()
    assert len(d["null"]) == 4 and d["statistic"] == "score" and d["permutations"] == 4


def test_align_calibration_shapes_and_nan_layers():
    x = randn(80, 12, seed=0).reshape(80, 3, 4)
    y = torch.stack([randn(80, 5, seed=1), torch.ones(80, 5), randn(80, 5, seed=2)], dim=1)
    with pytest.warns(pf.DegenerateInputWarning, match="constant"):
        res = pf.align(x, y, "mutual_knn", topk=5, permutations=7, generator=0)
    cal = res.calibration
    assert cal.null.shape == (7, 3, 3) and cal.pair_p.shape == (3, 3)
    assert torch.isnan(cal.pair_p[:, 1]).all() and not torch.isnan(cal.pair_p[:, 0]).any()
    assert cal.chance_exact and cal.chance[0, 0] == pytest.approx(5 / 79)
    assert not math.isnan(cal.max.p_value) and cal.max.observed == pytest.approx(float(res.scores[:, [0, 2]].max()))
    assert pf.align(x, x, "mutual_knn", topk=5).calibration is None


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    ({"permutations": 0}, ValueError, "permutations must be an integer >= 1"),
    ({"permutations": 2.5}, ValueError, "permutations must be"),
    ({"permutations": True}, ValueError, "permutations must be"),
    ({"alpha": 0.0}, ValueError, "alpha must be"),
    ({"alpha": 1.0}, ValueError, "alpha must be"),
    ({"alpha": "0.05"}, ValueError, "alpha must be"),
    ({"generator": "seed"}, TypeError, "generator must be"),
    ({"s_max": -1.0}, ValueError, "s_max must be"),
    ({"perm": torch.arange(30).reshape(1, 30)}, ValueError, "K x N"),
    ({"perm": torch.zeros(2, 40, dtype=torch.int64)}, ValueError, "repeats"),
    ({"perm": torch.stack([torch.arange(40), torch.arange(1, 41)])}, ValueError, "outside"),
    ({"perm": torch.stack([torch.arange(40)] * 3), "permutations": 5}, ValueError, "holds 3 permutations"),
    ({"perm": lambda n, device: torch.arange(n - 1)}, ValueError, "shape \\(40,\\)"),
    ({"perm": torch.rand(2, 40)}, TypeError, "integers"),
])
def test_bad_arguments(kwargs, error, match):
    a, b = randn(40, 4, seed=0), randn(40, 3, seed=1)
    with pytest.raises(error, match=match):
        pf.calibrate("mutual_knn", a, b, topk=3, **kwargs)


def test_align_checks_before_the_work():
    x = randn(40, 8, seed=0).reshape(40, 2, 4)
    with pytest.raises(ValueError, match="alpha"):
        pf.align(x, x, permutations=5, alpha=2.0, topk=3)
    with pytest.raises(ValueError, match="permutations"):
        pf.align(x, x, permutations=-1, topk=3)


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"])
def test_compiled_null_equals_the_per_pair_loop(metric):
    """The one-call compiled null (CPU, auto) equals permuting each state and scoring each pair."""
    x = randn(70, 12, seed=0).reshape(70, 3, 4)
    y = torch.stack([randn(70, 5, seed=1), torch.ones(70, 5), randn(70, 5, seed=2)], dim=1)
    perms = torch.stack([torch.randperm(70, generator=torch.Generator().manual_seed(s)) for s in range(6)])
    with pytest.warns(pf.DegenerateInputWarning):
        fast = pf.align(x, y, metric, topk=4, perm=perms).calibration
    with pytest.warns(pf.DegenerateInputWarning):
        loop = pf.align(x, y, metric, topk=4, perm=perms, backend="torch").calibration
    torch.testing.assert_close(fast.null, loop.null, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert fast.max.p_value == loop.max.p_value and fast.mean.tau == pytest.approx(loop.mean.tau, abs=1e-12)


def test_align_reports_exact_chance_without_permutations():
    x, y = randn(90, 12, seed=0).reshape(90, 3, 4), randn(90, 10, seed=1).reshape(90, 2, 5)
    res = pf.align(x, y, "mutual_knn", topk=6)
    assert res.chance.shape == (3, 2) and torch.allclose(res.chance, torch.full((3, 2), 6 / 89, dtype=torch.float64))
    assert (pf.align(x, y, "unbiased_cka").chance == 0).all()
    cka = pf.align(x, y, "cka", permutations=300, generator=0)
    # the exact mean against the mean of 300 permutations
    torch.testing.assert_close(cka.chance, cka.calibration.null.mean(0), rtol=0.1, atol=0.01)
    assert pf.align(x, y, "cknna", topk=6).chance is None


def test_several_metrics_share_each_permutation():
    a, b = _related()
    both = pf.calibrate(["mutual_knn", "cka", "cknna"], a, b, permutations=12, generator=4, topk=5)
    assert set(both) == {"mutual_knn", "cka", "cknna"}
    for name, c in both.items():
        alone = pf.calibrate(name, a, b, permutations=12, generator=4, **_opts(name))
        torch.testing.assert_close(c.null, alone.null, rtol=0, atol=0)
        assert c.p_value == alone.p_value
    with pytest.raises(TypeError, match="none of"):
        pf.calibrate(["mutual_knn", "cka"], a, b, permutations=3, cca_dm=3)
    with pytest.raises(ValueError, match="distinct"):
        pf.calibrate(["cka", "cka"], a, b, permutations=3)


def test_chance_with_one_sample_is_zero_not_a_division_by_zero():
    """N = 1: every centred kernel is 0 (found by the property suite: 0/0 in the closed form)."""
    x = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(pf.DegenerateInputWarning):
        res = pf.align(x, x, "cka", kernel_metric="rbf")
    assert (res.chance == 0).all()
