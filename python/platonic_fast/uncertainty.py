"""Confidence intervals for every metric, from subsamples drawn without replacement.

Method
------
Each of ``repeats`` replicates scores the metric on a random subset of ``m = round(fraction·N)``
of the N samples, drawn *without* replacement (the same rows of A and B), and the spread of the
replicate scores, rescaled to sample size N, gives the interval around the full-sample score.

Why not the bootstrap. A bootstrap resample draws N rows *with* replacement, so about 37% of
the rows it holds are copies. A copy of sample i is then i's nearest neighbour in A and in B
at once (an exact tie at the top of both lists), so every kNN metric (``mutual_knn``,
``cycle_knn``, ``lcs_knn``, ``edit_distance_knn``, ``cknna``) scores a resample as far more
aligned than the data: the resampled scores do not even sit around the estimate. Kernel metrics
get duplicated rows and columns in K and L too. Subsamples without replacement hold each sample
at most once, so each replicate is the metric of a genuine (smaller) data set.

The rescaling. A subsample of m out of N shows a spread that belongs to sample size m and to a
finite population of N. Following the subsampling of Politis, Romano & Wolf (1999) in its
finite-population form, the delete-d jackknife histogram of Wu (1990) (d = N − m deleted),
each replicate's deviation is multiplied by ``sqrt(m / (N − m))``; for a mean, or any statistic
that is root-N asymptotically normal, ``sqrt(m/(N−m)) · (θ̂_m − θ̂_N)`` has the spread of
``θ̂_N − θ``. (Politis–Romano–Wolf's ``sqrt(m/N)`` is the m ≪ N limit of the same factor; at
``fraction=0.5`` it would make intervals ``sqrt(2)`` too narrow.) With the default
``fraction=0.5`` the factor is 1: half-sampling.

- ``method="subsample"`` (default): the interval is ``[θ̂ − q_hi, θ̂ − q_lo]`` with q the
  (1 ± level)/2 quantiles of the rescaled, centred replicate deviations (the "basic"
  interval; it follows a skewed spread, e.g. near a bound of the metric's range).
- ``method="jackknife"``: the delete-d jackknife standard error of Shao & Wu (1989) from the
  same replicates, ``se² = m/(N−m) · var(θ̂_m)``, and the normal interval ``θ̂ ± z·se``
  (steadier than quantiles when ``repeats`` is small).

What the interval is for: kNN metrics depend on N
-------------------------------------------------
The kNN metrics do not estimate a quantity free of the sample size: with k fixed, a larger
sample packs more candidates into every neighbourhood, so the lists get more local and mutual
kNN falls as N grows ("Back into Plato's Cave", 2026). CKA's biased HSIC also carries an
O(1/N) bias. A subsample of size m therefore estimates the metric *at m*, not at N, and the
plain subsampling interval (deviations from θ̂_N) would be shifted by that difference. Here each
replicate's deviation is taken from the *mean of the replicates*, not from θ̂_N: the shift
between sample sizes cancels and only the spread is used, centred on the full-sample estimate.

So the interval covers ``θ_N = E[θ̂_N]``: the value this metric, with these options (the same
``topk``), takes on average on N samples drawn from the same population as the data. It says
how much the score would move with another draw of N samples; it is not an interval for a
sample-size-free "population alignment", and intervals for kNN metrics are comparable only
between scores at the same N and k. Assumptions: the N samples are independent draws (rows
that are not, e.g. several crops of one image, make the interval too narrow; subsample whole
groups yourself then); the metric is root-N asymptotically normal, or at least its spread
shrinks as 1/sqrt(N) and keeps its shape between m and N (the kNN metrics are means of local
terms, each touching O(k) samples, which makes this plausible, not proved); the shift between
m and N is a shift, not a change of spread. ``tests/test_uncertainty.py`` measures the coverage
on Gaussian data; the README ("Uncertainty") states the numbers: within about 2 points of
nominal for every metric at N = 200, conservative for ``edit_distance_knn``, and short for
biased RBF CKA at small N (83% for 90% at N = 200, 87.5% at N = 600), whose value changes most
with N. Where the root-N assumption fails the other way the interval is too wide: the kNN
metrics of unaligned sets (mutual kNN near k / (N − 1)) have a spread that shrinks like 1/N,
so their intervals are up to twice too wide at ``fraction=0.5`` (coverage 99-100%). Few
``repeats`` make the quantiles noisy and the ``"subsample"`` interval a little short (50
subsamples: 86% for 90% on linear CKA, against 91% with 200); prefer ``"jackknife"`` then.

For a layer search, call :func:`confidence_interval` on the best pair's two layers as the search
scored them; the same seed draws the same subsets for any pair of the same N
(:func:`iter_subsets`), and :func:`interval_from_replicates` turns scores computed elsewhere
into an :class:`Interval`.

Cost: ``repeats`` + 1 evaluations of the metric, the replicates at size m.

References: D. N. Politis, J. P. Romano, M. Wolf, *Subsampling*, Springer 1999; C. F. J. Wu,
"On the asymptotic properties of the jackknife histogram", Ann. Statist. 18 (1990); J. Shao,
C. F. J. Wu, "A general theory for jackknife variance estimation", Ann. Statist. 17 (1989).
"""

from __future__ import annotations

import math
import numbers
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import check_int, check_pair
from .metrics import MetricSpec, measure, metric_spec

METHODS = ("subsample", "jackknife")

__all__ = ["METHODS", "Interval", "confidence_interval", "interval_from_replicates", "iter_subsets",
           "subsample_size"]


@dataclass(frozen=True)
class Interval:
    """A confidence interval for one metric's score (see :func:`confidence_interval`).

    Attributes
    ----------
    estimate : float
        The metric on all N samples (the interval's centre of reference).
    low, high : float
        The interval; the kNN metrics, svcca and biased CKA are clipped to their value range.
    level : float
        Nominal coverage, e.g. 0.95.
    method : str
        "subsample" (quantiles of the rescaled replicates) or "jackknife" (normal, delete-d se).
    repeats : int
        Number of subsamples.
    m, n : int
        Subsample size and full sample size.
    replicates : torch.Tensor
        The ``repeats`` subsample scores (float64, CPU), in the order drawn.
    metric : str or None
    options : dict
        The metric's validated options (``backend`` included) at size N.
    seed : int or None
        The seed the subsets were drawn with (``generator=seed`` reproduces them); None when a
        ``torch.Generator`` was passed.
    generator_state : torch.Tensor or None
        The generator's state before the first subset (``torch.Generator().set_state(...)``
        reproduces them).
    """

    estimate: float
    low: float
    high: float
    level: float
    method: str
    repeats: int
    m: int
    n: int
    replicates: torch.Tensor = field(repr=False, compare=False)
    metric: str | None = None
    options: dict = field(default_factory=dict, compare=False)
    seed: int | None = None
    generator_state: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def scale(self) -> float:
        """The factor sqrt(m / (N − m)) that takes a deviation at size m to size N."""
        return math.sqrt(self.m / (self.n - self.m))

    @property
    def std_error(self) -> float:
        """The delete-d jackknife standard error of the estimate: scale · sd of the replicates."""
        return self.scale * float(self.replicates.std(unbiased=True))

    @property
    def width(self) -> float:
        return self.high - self.low

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


# --- argument checks --------------------------------------------------------------------------


def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number strictly between 0 and 1, got {type(value).__name__}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return v


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r} (the bootstrap is not offered: "
                         "duplicated rows are their own nearest neighbours; see platonic_fast.uncertainty)")
    return method


def _generator(generator: Any) -> tuple[torch.Generator, int | None, torch.Tensor]:
    """(generator to draw with, seed or None, its state before drawing)."""
    if generator is None:
        # A fresh seed from torch's global generator (torch.manual_seed makes it reproducible);
        # the Interval records it.
        generator = int(torch.randint(0, 2**62, (1,)))
    if isinstance(generator, torch.Generator):
        return generator, None, generator.get_state().clone()
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    seed = int(generator)
    if not 0 <= seed < 2**64:
        raise ValueError(f"generator: an int seed must lie in [0, 2**64), got {seed}")
    g = torch.Generator().manual_seed(seed)
    return g, seed, g.get_state().clone()


def subsample_size(n: int, fraction: float) -> int:
    """m = round(fraction · n) samples per subsample; a ValueError unless 2 <= m <= n − 1."""
    fraction = _check_unit(fraction, "fraction")
    m = int(math.floor(fraction * n + 0.5))
    if not 2 <= m <= n - 1:
        raise ValueError(f"fraction={fraction} of N={n} samples gives subsamples of m={m}; a subsample needs "
                         f"2 <= m <= N - 1 = {n - 1} (use more samples or another fraction)")
    return m


def _check_options_at(spec: MetricSpec, m: int, fraction: float, widths, options: dict) -> dict:
    try:
        opts = spec.check_options(m, widths, options)
        check_unsaturated(spec, m, opts)
        return opts
    except ValueError as e:
        raise ValueError(f"fraction={fraction} gives subsamples of m={m} samples, too few for {spec.name} with "
                         f"these options: {e}. Raise fraction (or lower topk / cca_dim)") from e


def check_unsaturated(spec: MetricSpec, m: int, opts: dict) -> None:
    """Refuse subsamples on which a neighbour metric cannot vary: with topk >= m - 1 every sample's
    neighbours are all the other samples, so every subsample scores the same and the interval would
    have zero width whatever the data."""
    k = opts.get("topk")
    if spec.takes_topk and k is not None and k >= m - 1:
        raise ValueError(f"topk={k} >= m - 1 = {m - 1}: on subsamples of m={m} every sample's neighbours are all "
                         "the others, so every subsample gives the same score and the interval would have zero "
                         "width (it would say nothing)")


def _value_range(spec: MetricSpec, opts: dict) -> tuple[float, float]:
    """Where the metric's values provably lie (no clipping where they need not, e.g. unbiased HSIC)."""
    return spec.value_range(opts)


# --- the subsets ------------------------------------------------------------------------------


def iter_subsets(n: int, m: int, repeats: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``repeats`` subsets of m of the n sample indices, without replacement, each sorted.

    Drawn one at a time from ``generator`` (a torch.randperm each), so the same generator state
    gives the same subsets: a layer search can score every layer pair on the same subsets by
    restoring the state. Sorted indices keep the samples' order, so neighbour ties go the same
    way as on the full set.
    """
    for _ in range(repeats):
        yield torch.randperm(n, generator=generator, device=generator.device)[:m].sort().values


# --- the interval -----------------------------------------------------------------------------


def interval_from_replicates(estimate: float, replicates, *, n: int, m: int, level: float = 0.95,
                             method: str = "subsample", value_range: tuple[float, float] = (-math.inf, math.inf),
                             metric: str | None = None, options: dict | None = None, seed: int | None = None,
                             generator_state: torch.Tensor | None = None) -> Interval:
    """The interval from a full-sample estimate and subsample scores already computed.

    Parameters
    ----------
    estimate : float
        The metric on all n samples.
    replicates : sequence of float or tensor
        The metric on subsets of m of the n samples drawn without replacement (at least 2).
    n, m : int
        Full and subsample sizes, 2 <= m <= n − 1.
    level : float in (0, 1)
    method : "subsample" or "jackknife"
        See the module documentation.
    value_range : (low, high)
        The interval is clipped to it.
    metric, options, seed, generator_state
        Stored in the :class:`Interval` as they are.

    Returns
    -------
    Interval
    """
    level = _check_unit(level, "level")
    method = _check_method(method)
    n = check_int(n, "n", low=3)
    m = check_int(m, "m", low=2, high=n - 1)
    if isinstance(estimate, bool) or not isinstance(estimate, numbers.Real) or not math.isfinite(estimate):
        raise ValueError(f"estimate must be a finite real number, got {estimate!r}")
    reps = torch.as_tensor(replicates, dtype=torch.float64).detach().cpu().reshape(-1)
    if reps.numel() < 2:
        raise ValueError(f"replicates must hold at least 2 scores, got {reps.numel()}")
    if not bool(torch.isfinite(reps).all()):
        raise ValueError("replicates contains NaN or Inf")
    estimate = float(estimate)
    scale = math.sqrt(m / (n - m))
    centre = float(reps.mean())
    if method == "subsample":
        dev = scale * (reps.numpy() - centre)
        alpha = 1.0 - level
        q_lo, q_hi = np.quantile(dev, [alpha / 2, 1.0 - alpha / 2])
        low, high = estimate - float(q_hi), estimate - float(q_lo)
    else:
        z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        se = scale * float(reps.std(unbiased=True))
        low, high = estimate - z * se, estimate + z * se
    lo_bound, hi_bound = value_range
    low, high = min(max(low, lo_bound), hi_bound), max(min(high, hi_bound), lo_bound)
    return Interval(estimate, low, high, level, method, int(reps.numel()), m, n, reps, metric,
                    dict(options or {}), seed, generator_state)


def confidence_interval(metric: str, feats_A, feats_B, *, level: float = 0.95, method: str = "subsample",
                        repeats: int = 200, fraction: float = 0.5, generator=None, progress: bool = False,
                        **options) -> Interval:
    """A confidence interval for ``measure(metric, feats_A, feats_B, **options)`` over samples.

    Scores ``repeats`` random subsets of ``round(fraction · N)`` samples (without replacement,
    the same rows of both sets) and turns their spread, rescaled to N, into an interval around
    the full-sample score. It covers the metric's expected value at this N and these options
    (not a sample-size-free value: kNN metrics change with N). The module documentation
    (``help(platonic_fast.uncertainty)``) gives the method, its assumptions and why the
    bootstrap is not offered.

    Parameters
    ----------
    metric : str
        One of :data:`platonic_fast.SUPPORTED_METRICS`.
    feats_A, feats_B : torch.Tensor or np.ndarray, shapes (N, Da) and (N, Db)
        As for :func:`platonic_fast.measure`. For a layer search's best pair, pass the two layers
        as the search scored them (clamped and row-normalised).
    level : float in (0, 1)
        Nominal coverage.
    method : "subsample" or "jackknife"
        Quantiles of the rescaled subsample scores, or a normal interval with the delete-d
        jackknife standard error. Both use the same replicates.
    repeats : int >= 2
        Number of subsamples (each costs one metric evaluation at size m). A few hundred for
        ``"subsample"`` at level 0.95; ``"jackknife"`` is usable with fewer.
    fraction : float in (0, 1)
        m = round(fraction · N); m must leave the metric computable (e.g. topk < m, m >= 4 for
        unbiased HSIC, cca_dim <= m).
    generator : torch.Generator, int or None
        The source of the subsets: a seed (deterministic), a generator (advanced by the draws),
        or None for a seed drawn from torch's global generator. The seed or the generator's state
        is kept in the result.
    progress : bool
        Show a progress bar over the subsamples.
    **options
        The metric's options and ``backend``, as for :func:`platonic_fast.measure`.

    Returns
    -------
    Interval

    Warns
    -----
    DegenerateInputWarning
        As :func:`platonic_fast.measure` does; a warning raised in subsamples is repeated once,
        with the number of subsamples that raised it.

    Examples
    --------
    >>> a = torch.randn(400, 32); b = a + torch.randn(400, 32)
    >>> ci = confidence_interval("cka", a, b, repeats=50, generator=0)
    >>> ci.low <= ci.estimate <= ci.high
    True
    """
    level = _check_unit(level, "level")
    method = _check_method(method)
    repeats = check_int(repeats, "repeats", low=2)
    fraction = _check_unit(fraction, "fraction")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    spec = metric_spec(metric)
    a, b = check_pair(feats_A, feats_B, metric=metric)
    n, widths = a.shape[0], (a.shape[1], b.shape[1])
    opts = spec.check_options(n, widths, options)
    m = subsample_size(n, fraction)
    _check_options_at(spec, m, fraction, widths, options)
    gen, seed, state = _generator(generator)

    estimate = measure(metric, a, b, **options)
    scores = torch.empty(repeats, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught, tqdm(
            total=repeats, desc=f"{metric} subsamples", unit="subsample", disable=not progress) as bar:
        warnings.simplefilter("always")
        warned: dict[type, list] = {}  # category -> [subsamples that raised it, first message]
        for r, idx in enumerate(iter_subsets(n, m, repeats, gen)):
            idx = idx.to(a.device)
            scores[r] = measure(metric, a.index_select(0, idx), b.index_select(0, idx), **options)
            for w in caught:
                warned.setdefault(w.category, [0, w.message])
            for category in {w.category for w in caught}:
                warned[category][0] += 1
            caught.clear()
            bar.update(1)
    for category, (count, message) in warned.items():
        warnings.warn(f"{count} of {repeats} subsamples (m={m}) warned, e.g.: {message}", category, stacklevel=2)
    return interval_from_replicates(estimate, scores, n=n, m=m, level=level, method=method,
                                    value_range=_value_range(spec, opts), metric=metric, options=opts,
                                    seed=seed, generator_state=state)

