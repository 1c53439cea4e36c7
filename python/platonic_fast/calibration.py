"""Permutation nulls: p-values, thresholds and calibrated scores (docs/metrics.md#calibration).

A raw alignment score means little on its own: biased CKA of independent Gaussian features is
0.03 / 0.34 / 0.89 at widths 16 / 256 / 4096 (N = 500), and the best of many layer pairs is
higher than any one of them. The permutation null asks what the metric gives when the pairing
of samples is broken: s_π = m(A, B[π]) for K random row permutations π of B. From it, with the
definitions of the ``calibrated-similarity`` package (Gröger, Wen, Brbić, arXiv 2602.14486):

- p = (1 + #{s_π ≥ s}) / (K + 1)                      (add-one, right tail)
- τ = the ⌈(1 − α)(K + 1)⌉-th smallest of {s} ∪ {s_π}  (1-based, clamped to [1, K + 1])
- calibrated = clamp((s − τ) / (s_max − τ), 0, 1), or relu(s − τ) when ``s_max=None``.

Every metric here has a natural maximum (1, or k for lcs_knn), used by default; pass
``s_max=None`` for the unnormalised effect size relu(s − τ) (the package's form for metrics
without one). Scores are compared in float64 (the package casts them to float32 first: the two
differ only where two scores agree to about 7 digits).

Nothing is recomputed from features under a permutation: each set is prepared once, and
``Prepared.permute`` gives the state of B[π] (neighbour lists relabelled π⁻¹(kNN_B(π(i))) in
the compiled core, kernel statistics and singular vectors with permuted rows), so a null costs
O(N·k) per permutation for the kNN metrics and cknna, and the cross term only for CKA.
One permutation serves every layer of B (layer search) and is drawn once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ._checks import DegenerateInputWarning
from .metrics import (
    Prepared,
    batched_null,
    checked_inputs,
    metric_spec,
    null_mean,
    permute_states,
    prepare_checked,
    score,
)
from .ops.permute_lists import check_permutation, inverse_permutation

PermutationSource = torch.Tensor | Callable[[int, torch.device], torch.Tensor]


@dataclass(frozen=True)
class Calibration:
    """One statistic against its permutation null.

    Attributes
    ----------
    metric : str
    statistic : str
        "score" (one pair, :func:`calibrate`), or "max" / "mean" over the layer-pair matrix.
    observed : float
    null : torch.Tensor, float64, shape (K,)
        The statistic under each permutation, in the order drawn.
    p_value : float
        (1 + #{null ≥ observed}) / (K + 1).
    tau : float
        The ⌈(1 − α)(K + 1)⌉-th smallest of observed and null together.
    calibrated : float
        clamp((observed − τ) / (s_max − τ), 0, 1); relu(observed − τ) when s_max is None.
    alpha : float
    s_max : float or None
    chance : float
        The statistic's mean under the null: exact where it has a closed form (``chance_exact``;
        mutual_knn k/(N − 1), cka, unbiased_cka 0), else the mean of ``null``.
    chance_exact : bool
    """

    metric: str
    statistic: str
    observed: float
    null: torch.Tensor
    p_value: float
    tau: float
    calibrated: float
    alpha: float
    s_max: float | None
    chance: float
    chance_exact: bool

    @property
    def permutations(self) -> int:
        return int(self.null.numel())

    @property
    def significant(self) -> bool:
        """p ≤ α."""
        return self.p_value <= self.alpha

    def as_dict(self, *, with_null: bool = True) -> dict:
        """Plain Python values (JSON-ready); ``with_null`` includes the K null values."""
        out = {"metric": self.metric, "statistic": self.statistic, "observed": self.observed,
               "p_value": self.p_value, "tau": self.tau, "calibrated": self.calibrated, "alpha": self.alpha,
               "s_max": self.s_max, "chance": self.chance, "chance_exact": self.chance_exact,
               "permutations": self.permutations}
        if with_null:
            out["null"] = [float(v) for v in self.null]
        return out


@dataclass(frozen=True)
class LayerCalibration:
    """A layer search calibrated as a whole: one permutation of B's rows for all its layers.

    Attributes
    ----------
    max, mean : Calibration
        The aggregate of the Lx x Ly score matrix (its max: the best pair; its mean), recomputed
        for every permutation, against that null (as ``calibrate_layers`` defines it). NaN
        scores (constant layers) are left out of both.
    null : torch.Tensor, float64, shape (K, Lx, Ly)
        Every pair's score under every permutation.
    pair_p : torch.Tensor, float64, shape (Lx, Ly)
        Each pair's own add-one p-value (not corrected for the search over pairs: use ``max``).
    chance : torch.Tensor, float64, shape (Lx, Ly)
        Each pair's null mean (exact where the metric has a closed form, else the mean of its K
        null scores).
    chance_exact : bool
    """

    max: Calibration
    mean: Calibration
    null: torch.Tensor
    pair_p: torch.Tensor
    chance: torch.Tensor
    chance_exact: bool

    @property
    def permutations(self) -> int:
        return int(self.null.shape[0])

    def as_dict(self, *, with_null: bool = False) -> dict:
        """JSON-ready summary: both aggregates (with their K nulls), pair p-values and chance."""
        out = {"max": self.max.as_dict(), "mean": self.mean.as_dict(), "pair_p": self.pair_p.tolist(),
               "chance": self.chance.tolist(), "chance_exact": self.chance_exact,
               "permutations": self.permutations}
        if with_null:
            out["null"] = self.null.tolist()
        return out


# --- the formulas -------------------------------------------------------------------------------


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1) (the test's level, e.g. 0.05), got {alpha!r}")
    return float(alpha)


def check_s_max(s_max) -> float | None:
    if s_max is None:
        return None
    if isinstance(s_max, bool) or not isinstance(s_max, (int, float)) or not (s_max > 0 and math.isfinite(s_max)):
        raise ValueError(f"s_max must be a positive number, 'auto' (the metric's maximum) or None "
                         f"(relu(s - tau)), got {s_max!r}")
    return float(s_max)


def null_calibration(observed: float, null, *, alpha: float = 0.05, s_max: float | None = 1.0
                     ) -> tuple[float, float, float]:
    """(p, τ, calibrated) of an observed statistic against its null values (docs/metrics.md#calibration).

    Parameters
    ----------
    observed : float
    null : sequence of float or torch.Tensor, K >= 1 values
    alpha : float in (0, 1)
    s_max : float or None
        The statistic's maximum; None gives relu(observed − τ).

    Examples
    --------
    >>> null_calibration(0.5, [0.1, 0.2, 0.3, 0.4], alpha=0.2, s_max=1.0)
    (0.2, 0.5, 0.0)
    """
    alpha, s_max = check_alpha(alpha), check_s_max(s_max)
    null = torch.as_tensor(null, dtype=torch.float64).reshape(-1)
    k = null.numel()
    if k < 1:
        raise ValueError("null must hold at least one value")
    observed = float(observed)
    p = (1 + int((null >= observed).sum())) / (k + 1)
    combined = torch.sort(torch.cat([torch.tensor([observed], dtype=torch.float64), null])).values
    rank = min(max(math.ceil((1.0 - alpha) * (k + 1)), 1), k + 1)  # 1-based
    tau = float(combined[rank - 1])
    if s_max is None:
        calibrated = max(observed - tau, 0.0)
    else:
        # the package's 1e-12 floor on the denominator (τ at or above s_max)
        calibrated = min(max((observed - tau) / max(s_max - tau, 1e-12), 0.0), 1.0)
    return p, tau, calibrated


# --- permutations -------------------------------------------------------------------------------


def check_generator(generator) -> torch.Generator | None:
    """None, a torch.Generator, or an int seed (a new CPU generator seeded with it)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be None, a torch.Generator or an int seed, got {type(generator).__name__}")


def permutation_source(n: int, permutations, perm: PermutationSource | None, generator,
                       device: torch.device) -> tuple[int, Callable[[int], torch.Tensor]]:
    """(K, draw) where draw(i) returns the i-th checked permutation of n rows.

    By default the i-th is ``torch.randperm(n, generator=generator)`` drawn in order, on the
    generator's device (else ``device``), as ``calibrated-similarity`` draws them, so the same
    seed gives both the same permutations. ``perm`` replaces them: a K x N integer tensor (row i
    is permutation i), or a callable ``perm(n, device) -> LongTensor`` (block or restricted
    designs), called K times in order.
    """
    generator = check_generator(generator)
    if isinstance(perm, torch.Tensor) or (perm is not None and not callable(perm)):
        table = torch.as_tensor(perm)
        if table.dim() != 2 or table.shape[1] != n:
            raise ValueError(f"perm must be a K x N tensor of permutations (N={n}), got shape {tuple(table.shape)}")
        if permutations is not None and permutations != table.shape[0]:
            raise ValueError(f"permutations={permutations} but perm holds {table.shape[0]} permutations; "
                             "give one of them, or make them agree")
        k = check_permutation_count(table.shape[0])
        return k, lambda i: check_permutation(table[i], n, f"perm[{i}]")
    k = check_permutation_count(200 if permutations is None else permutations)
    if perm is not None:
        return k, lambda i: check_permutation(perm(n, device), n, f"perm(n, device) (call {i})")
    where = generator.device if generator is not None else device
    return k, lambda i: torch.randperm(n, generator=generator, device=where)


def shared_draws(states: list, draw: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """``draw`` as every rank must see it: for sets prepared on row shards each permutation is
    drawn on rank 0 and broadcast (one process: ``draw`` itself)."""
    comm = next((s.comm for s in states if s is not None and s.comm is not None), None)
    if comm is None:
        return draw
    return lambda i: comm.broadcast(draw(i).to("cpu", torch.int64), 0)


def check_permutation_count(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"permutations must be an integer >= 1 (the null's size K, e.g. 200), got {k!r}")
    return k


def null_scores(metric: str, states_x: list, states_y: list, opts: dict, k: int, draw, *, bar=None
                ) -> torch.Tensor:
    """K x Lx x Ly scores of every prepared pair under each of the K permutations of y's rows
    (see :func:`null_scores_many`)."""
    return null_scores_many([(metric, states_x, states_y, opts)], k, draw, bar=bar)[0]


def null_scores_many(jobs: list[tuple], k: int, draw, *, bar=None) -> list[torch.Tensor]:
    """The nulls of several (metric, states_x, states_y, options) jobs over the same samples,
    each permutation drawn once and shared by every job and pair.

    kNN-list metrics and cknna on CPU: each chunk of permutations is one compiled call (every
    y-set relabelled once per permutation and scored against every x-set). Otherwise each
    y-state is permuted once per permutation (``Prepared.permute``) and every pair re-scored.
    """
    nulls = [torch.full((k, len(sx), len(sy)), math.nan, dtype=torch.float64) for _, sx, sy, _ in jobs]
    engines = [batched_null(metric, sx, sy, opts) for metric, sx, sy, opts in jobs]
    n = next((s.n for _, sx, sy, _ in jobs for s in sx + sy if s is not None), 1)
    chunk = max(1, min(64, (1 << 22) // max(n, 1)))  # chunk x N permutations: at most 32 MiB
    with warnings.catch_warnings():
        # A degenerate set warned when its observed score was taken; its permutations are the same set.
        warnings.simplefilter("ignore", DegenerateInputWarning)
        for t0 in range(0, k, chunk):
            perms = torch.stack([draw(t) for t in range(t0, min(k, t0 + chunk))])
            for (_, states_x, states_y, _), engine, null in zip(jobs, engines, nulls):
                if engine is not None:
                    null[t0: t0 + perms.shape[0]] = engine(perms.cpu())
                    continue
                for dt, perm in enumerate(perms):
                    permuted = permute_states(states_y, perm, inverse_permutation(perm))
                    for i, sx in enumerate(states_x):
                        for j, sy in enumerate(permuted):
                            if sx is not None and sy is not None:
                                null[t0 + dt, i, j] = score(sx, sy)
            if bar is not None:
                bar.update(perms.shape[0])
    return nulls


# --- one pair -----------------------------------------------------------------------------------


def metric_names(metric) -> tuple[list[str], list]:
    """(names, specs) of ``metric``: one name or a sequence of distinct names."""
    names = [metric] if isinstance(metric, str) else list(metric) if isinstance(metric, (list, tuple)) else None
    if not names or len(set(names)) != len(names):
        raise ValueError(f"metric must be a metric name or a sequence of distinct names, got {metric!r}")
    return names, [metric_spec(m) for m in names]


def options_per_metric(specs: list, n: int, widths: tuple[int, int], options: dict) -> list[dict]:
    """Each metric's validated options: the ones it knows (and ``backend``); with several
    metrics an option none of them takes is an error."""
    if len(specs) > 1:
        known = {key for sp in specs for key in sp.defaults} | {"backend"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"calibrate() got option(s) {unknown} that none of {[sp.name for sp in specs]} takes")
    return [sp.check_options(n, widths, {key: v for key, v in options.items()
                                         if key in sp.defaults or key == "backend"}) for sp in specs]


def calibrate(metric: str | Sequence[str], feats_A, feats_B, permutations: int | None = None,
              alpha: float = 0.05, generator=None, perm: PermutationSource | None = None, *, s_max="auto",
              progress: bool = False, comm=None, **options) -> Calibration | dict[str, Calibration]:
    """Score ``feats_A`` against ``feats_B`` and against K row permutations of ``feats_B``.

    Parameters
    ----------
    metric : str, or a sequence of str
        Any of :data:`platonic_fast.SUPPORTED_METRICS`. Several metrics share every permutation
        (each drawn once) and give a dict name -> Calibration; each takes the options it knows.
    feats_A, feats_B : torch.Tensor or np.ndarray, (N, Da) and (N, Db)
    permutations : int, optional
        K, the number of permutations: 200 by default, or the row count of a ``perm`` tensor.
    alpha : float, default 0.05
        Level of the threshold τ.
    generator : torch.Generator or int, optional
        Seeds the permutations (an int makes a CPU generator); None uses torch's global RNG.
        Drawn in order with ``torch.randperm`` exactly as ``calibrated-similarity`` does.
    perm : K x N integer tensor or callable (n, device) -> permutation, optional
        The permutations themselves, for block or restricted designs.
    s_max : "auto", float or None
        The metric's maximum ("auto": 1, or topk for lcs_knn); None gives relu(s − τ).
    progress : bool
        A progress bar over permutations.
    comm : optional
        A process group's communicator (:func:`platonic_fast.distributed.calibrate` passes it):
        A and B are then this rank's rows, and each permutation is drawn on rank 0. None: one process.
    **options
        The metric's options (``topk``, ``kernel_metric``, ...) and ``backend``.

    Returns
    -------
    Calibration, or dict[str, Calibration] for several metrics

    Examples
    --------
    >>> a = torch.randn(500, 32); b = a @ torch.randn(32, 16) + torch.randn(500, 16)
    >>> c = calibrate("mutual_knn", a, b, permutations=99, generator=0, topk=10)
    >>> c.p_value
    0.01
    >>> both = calibrate(["mutual_knn", "cka"], a, b, permutations=99, generator=0, topk=10)
    >>> sorted(both)
    ['cka', 'mutual_knn']
    """
    names, specs = metric_names(metric)
    (a, b), layout = checked_inputs(comm, [feats_A, feats_B], ["feats_A", "feats_B"], names[0])
    n = a.shape[0] if layout is None else layout.n
    opts_list = options_per_metric(specs, n, (a.shape[1], b.shape[1]), options)
    alpha = check_alpha(alpha)
    auto = isinstance(s_max, str) and s_max == "auto"
    if not auto:
        s_max = check_s_max(s_max)
    k, draw = permutation_source(n, permutations, perm, generator, a.device)
    pas = [prepare_checked(sp, a, o, comm, layout) for sp, o in zip(specs, opts_list)]
    pbs = [prepare_checked(sp, b, o, comm, layout) for sp, o in zip(specs, opts_list)]
    out = calibrate_prepared(pas, pbs, k, draw, alpha=alpha, s_max=s_max, progress=progress)
    return out[names[0]] if isinstance(metric, str) else out


def calibrate_prepared(pas: list[Prepared], pbs: list[Prepared], k: int, draw, *, alpha: float, s_max="auto",
                       progress: bool = False) -> dict[str, Calibration]:
    """:func:`calibrate` of sets already prepared (one per metric, validated ``alpha``/``s_max``;
    on row shards too: collective, each permutation drawn on rank 0)."""
    names = [p.metric for p in pas]
    auto = isinstance(s_max, str) and s_max == "auto"
    draw = shared_draws(pas + pbs, draw)
    jobs = [(p.metric, [p], [q], p.options) for p, q in zip(pas, pbs)]
    observed = [score(p, q) for p, q in zip(pas, pbs)]
    with tqdm(total=k, desc=f"null {'+'.join(names)}", disable=not progress, leave=False) as bar:
        nulls = null_scores_many(jobs, k, draw, bar=bar)
    out = {}
    for (name, (pa,), (pb,), opts), obs, null in zip(jobs, observed, nulls):
        null = null[:, 0, 0]
        top = pa.spec.max_score(opts) if auto else s_max
        exact = null_mean(pa, pb)
        p, tau, calibrated = null_calibration(obs, null, alpha=alpha, s_max=top)
        chance = float(null.mean()) if exact is None else float(exact)
        out[name] = Calibration(name, "score", obs, null, p, tau, calibrated, alpha, top, chance, exact is not None)
    return out


# --- a layer search -----------------------------------------------------------------------------


def _aggregate(scores: torch.Tensor, how: str) -> float:
    finite = scores[~torch.isnan(scores)]
    if finite.numel() == 0:
        return math.nan
    return float(finite.max() if how == "max" else finite.mean())


def calibrate_states(states_x: list, states_y: list, scores: torch.Tensor, metric: str, opts: dict, *,
                     permutations: int | None = None, alpha: float = 0.05, generator=None,
                     perm: PermutationSource | None = None, s_max="auto", bar=None) -> LayerCalibration:
    """The layer-search null from prepared layers (None for a constant layer) and their scores.

    Each permutation π is drawn once, applied to every layer of y (its states permuted, nothing
    recomputed), and every pair is re-scored; the max and the mean of each permuted matrix make
    the aggregates' nulls.
    """
    spec = metric_spec(metric)
    alpha = check_alpha(alpha)
    s_max = spec.max_score(opts) if isinstance(s_max, str) and s_max == "auto" else check_s_max(s_max)
    live_x = [s for s in states_x if s is not None]
    live_y = [s for s in states_y if s is not None]
    n = (live_x or live_y)[0].n if (live_x or live_y) else 0
    device = _device_of(live_x + live_y)
    k, draw = permutation_source(n, permutations, perm, generator, device)
    null = null_scores(metric, states_x, states_y, opts, k, shared_draws(live_x + live_y, draw), bar=bar)

    def pair_mean(i, j):
        sx, sy = states_x[i], states_y[j]
        return None if sx is None or sy is None else null_mean(sx, sy)

    return summarise_null(metric, scores, null, pair_mean, alpha=alpha, s_max=s_max)


def summarise_null(metric: str, scores: torch.Tensor, null: torch.Tensor, pair_mean: Callable[[int, int], float | None],
                   *, alpha: float, s_max: float | None) -> LayerCalibration:
    """The layer search's calibration from its Lx x Ly scores and K x Lx x Ly null scores.

    ``pair_mean(i, j)`` gives pair (i, j)'s exact null mean, or None where the metric has no
    closed form (NaN pairs, constant layers, are skipped). Shared by the one-process and the
    sharded layer search.
    """
    k = null.shape[0]
    aggregates = {}
    for how in ("max", "mean"):
        observed = _aggregate(scores, how)
        agg_null = torch.tensor([_aggregate(null[t], how) for t in range(k)], dtype=torch.float64)
        if math.isnan(observed):
            p = tau = cal = math.nan
        else:
            p, tau, cal = null_calibration(observed, agg_null, alpha=alpha, s_max=s_max)
        aggregates[how] = (observed, agg_null, p, tau, cal)
    pair_p = (1.0 + (null >= scores).sum(dim=0).to(torch.float64)) / (k + 1)
    pair_p[torch.isnan(scores)] = math.nan
    chance = null.mean(dim=0)
    exact = True
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            if torch.isnan(scores[i, j]):
                continue
            e = pair_mean(i, j)
            if e is None:
                exact = False
            else:
                chance[i, j] = e
    out = {}
    for how, (observed, agg_null, p, tau, cal) in aggregates.items():
        # The mean of pair chances is exact for "mean"; for "max" only the null's own mean is.
        if how == "mean" and exact:
            agg_chance, agg_exact = _aggregate(chance, "mean"), True
        else:
            agg_chance, agg_exact = float(agg_null.nanmean()), False
        out[how] = Calibration(metric, how, observed, agg_null, p, tau, cal, alpha, s_max, agg_chance, agg_exact)
    return LayerCalibration(out["max"], out["mean"], null, pair_p, chance, exact)


def exact_chance(states_x: list, states_y: list, metric: str | None = None, opts: dict | None = None, *,
                 as_lists: bool = False) -> torch.Tensor | list | None:
    """Lx x Ly exact null means (the expectation over all row permutations of y) where the
    metric has a closed form (mutual_knn k/(N − 1), cka, unbiased_cka 0; NaN for constant
    layers), else None: a chance level beside raw scores without running a null. Sharded states
    (collective) or one process's alike. ``as_lists``: nested lists, non-finite values as None
    (a record's JSON). ``metric`` and ``opts`` are the states' own (kept for callers)."""
    out = torch.full((len(states_x), len(states_y)), math.nan, dtype=torch.float64)
    for i, sx in enumerate(states_x):
        for j, sy in enumerate(states_y):
            if sx is None or sy is None:
                continue
            e = null_mean(sx, sy)
            if e is None:
                return None
            out[i, j] = e
    if as_lists:
        return [[v if math.isfinite(v) else None for v in row] for row in out.tolist()]
    return out


def _device_of(states: list[Prepared]) -> torch.device:
    for s in states:
        for t in (getattr(s.state, "indices", None), getattr(s.state, "features", None), s.state):
            if isinstance(t, torch.Tensor):
                return t.device
    return torch.device("cpu")


__all__ = ["Calibration", "LayerCalibration", "calibrate", "calibrate_states", "null_calibration"]
