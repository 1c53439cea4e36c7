"""Confidence intervals over samples (platonic_fast.uncertainty).

The coverage tests draw many independent data sets from one Gaussian model, build an interval
on each, and count how often it holds the value the interval is for: the metric's expected
value at that N (the mean of the metric over many further independent data sets of size N;
exactly k / (N − 1) for mutual kNN of independent sets).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import platonic_fast as pf
from platonic_fast import DegenerateInputWarning
from platonic_fast.uncertainty import (
    Interval,
    confidence_interval,
    interval_from_replicates,
    iter_subsets,
    subsample_size,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of tiny problems: one thread each is far faster than two fighting over a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_pair(seed: int, n: int, *, latent: int = 8, d: int = 16, noise: float = 1.5):
    """A and B: two noisy linear views of one latent Gaussian (population CKA ~0.55)."""
    g0 = torch.Generator().manual_seed(123)  # the same model for every seed
    wa = torch.randn(latent, d, generator=g0, dtype=torch.float64)
    wb = torch.randn(latent, d, generator=g0, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, latent, generator=g, dtype=torch.float64)
    a = x @ wa + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    b = x @ wb + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.float(), b.float()


def independent_pair(seed: int, n: int, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


# --- every metric -----------------------------------------------------------------------------

METRIC_CASES = [
    ("mutual_knn", {"topk": 5}),
    ("cycle_knn", {"topk": 5}),
    ("lcs_knn", {"topk": 5}),
    ("edit_distance_knn", {"topk": 5}),
    ("cknna", {"topk": 5}),
    ("cknna", {"topk": 5, "unbiased": False}),
    ("cka", {}),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": 6.0}),
    ("unbiased_cka", {}),
    ("svcca", {"cca_dim": 4}),
]


@pytest.mark.parametrize("method", ["subsample", "jackknife"])
@pytest.mark.parametrize("metric, options", METRIC_CASES, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}={x}" for k, x in v.items()))
def test_every_metric(metric, options, method):
    a, b = gaussian_pair(0, 80)
    ci = confidence_interval(metric, a, b, repeats=12, generator=3, method=method, level=0.9, **options)
    assert isinstance(ci, Interval)
    assert ci.estimate == pf.measure(metric, a, b, **options)
    assert (ci.n, ci.m, ci.repeats, ci.level, ci.method, ci.metric, ci.seed) == (80, 40, 12, 0.9, method, metric, 3)
    assert ci.replicates.shape == (12,) and ci.replicates.dtype == torch.float64
    assert bool(torch.isfinite(ci.replicates).all()) and float(ci.replicates.std()) > 0
    assert math.isfinite(ci.low) and ci.low < ci.high and math.isfinite(ci.high)
    assert ci.options["backend"] == "auto" and all(ci.options[k] == v for k, v in options.items())
    assert ci.std_error > 0 and ci.scale == 1.0  # fraction 0.5: sqrt(m / (N - m)) = 1
    # the first replicate is the metric of the first subset drawn from the seed
    first = next(iter_subsets(80, 40, 1, torch.Generator().manual_seed(3)))
    assert ci.replicates[0].item() == pf.measure(metric, a[first], b[first], **options)


def test_numpy_inputs_and_exports():
    a, b = gaussian_pair(1, 60)
    ci = pf.confidence_interval("cka", a.numpy(), b.numpy(), repeats=8, generator=0)
    assert isinstance(ci, pf.Interval)
    assert "confidence_interval" in pf.__all__ and "Interval" in pf.__all__
    same = confidence_interval("cka", a, b, repeats=8, generator=0)
    assert torch.equal(ci.replicates, same.replicates) and (ci.low, ci.high) == (same.low, same.high)


def test_interval_centred_on_the_estimate_not_on_the_subsample_metric():
    """Mutual kNN at m = N/2 is far above its value at N (it falls with N): the replicates'
    mean is off by many interval widths, yet the interval sits around the full-sample score."""
    a, b = gaussian_pair(2, 200)
    ci = confidence_interval("mutual_knn", a, b, topk=10, repeats=40, generator=0)
    drift = float(ci.replicates.mean()) - ci.estimate
    assert drift > ci.width
    assert ci.low < ci.estimate < ci.high


# --- determinism ------------------------------------------------------------------------------


def test_deterministic_for_a_seed():
    a, b = gaussian_pair(3, 70)
    one = confidence_interval("mutual_knn", a, b, topk=5, repeats=10, generator=42)
    two = confidence_interval("mutual_knn", a, b, topk=5, repeats=10, generator=42)
    assert torch.equal(one.replicates, two.replicates) and (one.low, one.high) == (two.low, two.high)
    assert one == two  # the dataclass compares the numbers, not the tensors
    other = confidence_interval("mutual_knn", a, b, topk=5, repeats=10, generator=43)
    assert not torch.equal(one.replicates, other.replicates)
    # a generator seeded the same way draws the same subsets, and is advanced by the draws
    g = torch.Generator().manual_seed(42)
    three = confidence_interval("mutual_knn", a, b, topk=5, repeats=10, generator=g)
    assert torch.equal(one.replicates, three.replicates) and three.seed is None
    assert not torch.equal(g.get_state(), three.generator_state)
    # the recorded state reproduces the draws
    g2 = torch.Generator()
    g2.set_state(three.generator_state)
    four = confidence_interval("mutual_knn", a, b, topk=5, repeats=10, generator=g2)
    assert torch.equal(four.replicates, one.replicates)


def test_no_generator_draws_a_recorded_seed_from_torch():
    a, b = gaussian_pair(4, 50)
    torch.manual_seed(7)
    one = confidence_interval("cka", a, b, repeats=5)
    torch.manual_seed(7)
    two = confidence_interval("cka", a, b, repeats=5)
    assert isinstance(one.seed, int) and one.seed == two.seed
    assert torch.equal(one.replicates, two.replicates)
    again = confidence_interval("cka", a, b, repeats=5, generator=one.seed)
    assert torch.equal(again.replicates, one.replicates)


def test_subsets():
    subsets = list(iter_subsets(30, 12, 5, torch.Generator().manual_seed(0)))
    assert len(subsets) == 5
    for s in subsets:
        assert s.shape == (12,) and s.dtype == torch.int64
        assert torch.equal(s, s.sort().values) and s.unique().numel() == 12
        assert int(s.min()) >= 0 and int(s.max()) < 30
    again = list(iter_subsets(30, 12, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip(subsets, again))
    assert subsample_size(10, 0.5) == 5 and subsample_size(101, 0.5) == 51 and subsample_size(10, 0.26) == 3


# --- the interval arithmetic ------------------------------------------------------------------


def test_interval_from_replicates():
    reps = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64) + 5.0
    # fraction 0.2 of 100: the deviations are rescaled by sqrt(20 / 80) = 0.5
    ci = interval_from_replicates(3.0, reps, n=100, m=20, level=0.9)
    assert ci.scale == 0.5
    assert ci.low == pytest.approx(3.0 - 0.5 * 0.9) and ci.high == pytest.approx(3.0 + 0.5 * 0.9)
    jk = interval_from_replicates(3.0, reps, n=100, m=20, level=0.9, method="jackknife")
    se = 0.5 * float(reps.std())
    assert jk.std_error == pytest.approx(se)
    assert jk.high - 3.0 == pytest.approx(1.6448536269514722 * se) and jk.low == pytest.approx(6.0 - jk.high)
    # skewed replicates: the basic interval reaches further on the side opposite to the long tail
    skew = torch.tensor([0.0] * 90 + [1.0] * 10, dtype=torch.float64)
    sk = interval_from_replicates(0.5, skew, n=10, m=5, level=0.9)
    assert 0.5 - sk.low > sk.high - 0.5
    # clipped to a value range
    cl = interval_from_replicates(0.99, reps - 5.0, n=100, m=50, value_range=(0.0, 1.0))
    assert cl.high == 1.0 and cl.low < 0.99
    assert 0.5 in interval_from_replicates(0.5, [0.4, 0.6], n=10, m=5)


def test_knn_intervals_stay_in_range():
    a, b = gaussian_pair(5, 60)
    near = a + 0.05 * independent_pair(5, 60, d=16)[0]  # near-identical views: mutual kNN close to 1
    ci = confidence_interval("mutual_knn", a, near, topk=3, repeats=20, generator=0)
    assert ci.estimate > 0.8 and 0.0 <= ci.low <= ci.high <= 1.0
    lcs = confidence_interval("lcs_knn", a, b, topk=3, repeats=10, generator=0)
    assert 0.0 <= lcs.low <= lcs.high <= 3.0


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"level": 0.0}, ValueError, "level"),
    ({"level": 1.0}, ValueError, "level"),
    ({"level": 95}, ValueError, "level"),
    ({"level": True}, TypeError, "level"),
    ({"level": "0.9"}, TypeError, "level"),
    ({"level": float("nan")}, ValueError, "level"),
    ({"repeats": 1}, ValueError, "repeats"),
    ({"repeats": 10.0}, TypeError, "repeats"),
    ({"fraction": 0.0}, ValueError, "fraction"),
    ({"fraction": 1.0}, ValueError, "fraction"),
    ({"fraction": 0.01}, ValueError, "fraction"),  # m = 0
    ({"fraction": 0.999}, ValueError, "fraction"),  # m = N
    ({"fraction": None}, TypeError, "fraction"),
    ({"method": "bootstrap"}, ValueError, "bootstrap"),
    ({"method": "percentile"}, ValueError, "method"),
    ({"generator": "0"}, TypeError, "generator"),
    ({"generator": 1.5}, TypeError, "generator"),
    ({"generator": -1}, ValueError, "generator"),
    ({"generator": np.random.default_rng(0)}, TypeError, "generator"),
    ({"progress": 1}, TypeError, "progress"),
    ({"topk": 30}, ValueError, "fraction=0.5 gives subsamples of m=20"),  # topk < N = 40 but not < m
    ({"topk": 0}, ValueError, "topk"),
    ({"kernel": "ip"}, TypeError, "kernel"),
])
def test_bad_arguments(kwargs, exc, match):
    a, b = gaussian_pair(6, 40)
    kwargs = {"topk": 5, "repeats": 4, "generator": 0, **kwargs}
    with pytest.raises(exc, match=match):
        confidence_interval("mutual_knn", a, b, **kwargs)


def test_bad_metric_inputs_and_small_subsamples():
    a, b = gaussian_pair(7, 40)
    with pytest.raises(ValueError, match="metric"):
        confidence_interval("cosine", a, b)
    with pytest.raises(ValueError, match="same samples"):
        confidence_interval("cka", a, b[:30])
    with pytest.raises(ValueError, match="NaN"):
        confidence_interval("cka", a, b.clone().fill_(float("nan")))
    with pytest.raises(TypeError, match="feats_A"):
        confidence_interval("cka", a.int(), b)
    # unbiased HSIC needs 4 samples in every subsample; svcca's cca_dim needs m samples
    x, y = gaussian_pair(7, 7)
    assert confidence_interval("unbiased_cka", x, y, repeats=3, generator=0).m == 4
    with pytest.raises(ValueError, match=r"m=3 samples.*N >= 4"):
        confidence_interval("unbiased_cka", x[:6], y[:6], repeats=3, generator=0)
    with pytest.raises(ValueError, match=r"m=5 samples.*cca_dim"):
        confidence_interval("svcca", x[:6, :], y[:6, :], fraction=0.8, cca_dim=6, repeats=3)
    with pytest.raises(ValueError, match="cknna"):
        confidence_interval("cknna", a, b, topk=15, fraction=0.3, repeats=3)
    with pytest.raises(ValueError, match="replicates"):
        interval_from_replicates(0.5, [0.5], n=10, m=5)
    with pytest.raises(ValueError, match="m must be"):
        interval_from_replicates(0.5, [0.5, 0.6], n=10, m=10)
    with pytest.raises(ValueError, match="estimate"):
        interval_from_replicates(float("nan"), [0.5, 0.6], n=10, m=5)


def test_subsample_warnings_are_summarised_once():
    a, b = gaussian_pair(8, 40)
    with pytest.warns(DegenerateInputWarning) as record:  # sigma tiny against the distances
        confidence_interval("cka", a, b, kernel_metric="rbf", rbf_sigma=0.01, repeats=6, generator=0)
    summaries = [str(w.message) for w in record if "subsamples" in str(w.message)]
    assert len(summaries) == 1 and summaries[0].startswith("6 of 6 subsamples (m=20) warned")
    assert len(record) <= 3  # the full-sample score's own (one per set), and the summary


# --- why there is no bootstrap ----------------------------------------------------------------


def test_bootstrap_would_be_wrong_for_knn_metrics():
    """Resampling rows with replacement puts copies of a sample in the set: each copy is the
    sample's nearest neighbour in A and in B alike, so mutual kNN of independent sets, whose
    expected value is exactly k / (N − 1), comes out several times higher on every resample. The
    bootstrap interval misses the truth by a wide margin; the subsampling interval holds it."""
    n, k = 200, 5
    a, b = (F.normalize(x, dim=1) for x in independent_pair(9, n))
    truth = k / (n - 1)
    estimate = pf.mutual_knn(a, b, topk=k)
    g = torch.Generator().manual_seed(0)
    boot = torch.tensor([pf.mutual_knn(a[i], b[i], topk=k) for i in
                         (torch.randint(0, n, (n,), generator=g) for _ in range(30))])
    assert float(boot.min()) > 2 * truth and float(boot.mean()) > 3 * estimate
    lo, hi = (float(q) for q in torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype)))
    assert not lo <= truth <= hi  # the bootstrap percentile interval
    ci = confidence_interval("mutual_knn", a, b, topk=k, repeats=30, generator=0)
    assert truth in ci
    # each subsample's score is the metric at m, whose expectation is k / (m - 1), not k / (N - 1)
    assert float(ci.replicates.mean()) == pytest.approx(k / (ci.m - 1), rel=0.1)


# --- coverage ---------------------------------------------------------------------------------


def _coverage(metric, options, make, truth, datasets, repeats, levels=(0.9, 0.95), methods=("subsample",)):
    hits = {(lvl, meth): 0 for lvl in levels for meth in methods}
    for s in range(datasets):
        a, b = make(s)
        base = confidence_interval(metric, a, b, repeats=repeats, generator=s, **options)
        for lvl in levels:
            for meth in methods:
                ci = interval_from_replicates(base.estimate, base.replicates, n=base.n, m=base.m, level=lvl,
                                              method=meth)
                hits[lvl, meth] += truth in ci
    return {key: h / datasets for key, h in hits.items()}


@pytest.mark.slow
def test_coverage_cka_cheap():
    """50 data sets of N = 200 with 50 subsamples each (the slow tests use 150 x 150)."""
    n = 200
    truth = float(np.mean([pf.cka(*gaussian_pair(10**6 + s, n)) for s in range(300)]))
    cov = _coverage("cka", {}, lambda s: gaussian_pair(s, n), truth, datasets=50, repeats=50,
                    methods=("subsample", "jackknife"))
    for (lvl, meth), c in cov.items():
        assert lvl - 0.12 <= c <= 1.0, (lvl, meth, c)


SLOW_CASES = [
    ("cka", {}),
    ("mutual_knn", {"topk": 10}),
    ("svcca", {"cca_dim": 4}),
    ("cknna", {"topk": 10}),
]


@pytest.mark.slow
@pytest.mark.parametrize("metric, options", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_coverage_on_correlated_gaussians(metric, options):
    """150 data sets of N = 200; the target, the metric's mean at N = 200, from 600 more."""
    n = 200
    truth = float(np.mean([pf.measure(metric, *gaussian_pair(10**6 + s, n), **options) for s in range(600)]))
    cov = _coverage(metric, options, lambda s: gaussian_pair(s, n), truth, datasets=150, repeats=150,
                    methods=("subsample", "jackknife"))
    # 150 data sets: the binomial sd of a coverage of 0.9 is 0.025 (0.018 at 0.95)
    for (lvl, meth), c in cov.items():
        assert lvl - 0.075 <= c <= min(1.0, lvl + 0.06), (lvl, meth, c)


@pytest.mark.slow
def test_conservative_for_mutual_knn_of_independent_sets():
    """Unaligned sets: mutual kNN's expected value is exactly k / (N − 1), and its spread shrinks
    like 1/N, not 1/sqrt(N) (each row's overlap is rare and gets rarer with N), so the
    root-N rescaling makes the interval too wide: it over-covers, never under-covers."""
    n, k = 200, 10
    cov = _coverage("mutual_knn", {"topk": k}, lambda s: independent_pair(1000 + s, n), k / (n - 1),
                    datasets=100, repeats=100, methods=("subsample", "jackknife"))
    for (lvl, meth), c in cov.items():
        assert c >= lvl, (lvl, meth, c)
