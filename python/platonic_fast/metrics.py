"""The eight alignment metrics of docs/metrics.md, each declared once as a :class:`MetricSpec`.

A metric splits into ``prepare`` (everything that depends on one feature set: its neighbour
lists, its kernel statistics, its singular vectors) and ``pair`` (the cheap part that needs
both). The spec also holds the metric's options and their validation, the ops it uses, whether
it is symmetric and whether it takes ``topk``; :data:`SUPPORTED_METRICS`, :func:`measure`,
the layer search, the scorer, the sweeps and ``compat`` all read it.

This module is long on purpose: it is the one metric table (issue 19). Every path -- one
process, memory-mapped files, rank shards -- learns what it needs about a metric from its spec
here (its sharded form, how it streams, its value range), and :class:`Prepared` is the one
prepared state for all of them, so no other module tests a metric's name.

The prepared-state API is public: :func:`prepare` one feature set once, then :func:`score` it
against any other set prepared the same way. A single :func:`measure` call does both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ._backends import check_backend_name, for_op, resolve
from ._checks import (
    check_features,
    check_int,
    check_pair,
    check_positive_float,
    check_topk,
    guarded_ratio,
)
from .ops import hsic
from .ops.cknna_sums import cknna_sums
from .ops.knn import neighbours
from .ops.neighbour_lists import total as list_total
from .ops.permute_lists import check_permutation, inverse_permutation, relabel
from .ops.svcca import canonical_correlations, svcca_basis

# --- prepared states --------------------------------------------------------------------------


@dataclass
class Neighbours:
    """kNN lists of one feature set (self excluded unless a metric says otherwise)."""

    indices: torch.Tensor  # N x k int64
    values: torch.Tensor | None = None  # N x k kernel values (times 2**-scale_exp), when a metric needs them
    self_sums: dict | None = None  # CKNNA: masked sums of the set with itself
    scale_exp: int = 0  # the true kernel values are values · 2**scale_exp


# --- the spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sharded:
    """A metric on row-sharded sets: what :mod:`platonic_fast.distributed` runs for it.

    Each callable is collective (every rank calls it at the same point) and takes the
    communicator and the row layout; states hold this rank's rows and the set's global sums.

    Attributes
    ----------
    prepare : (comm, layout, x, **options) -> state
    pair : (comm, layout, state_a, state_b, **options) -> float
    null_mean : (comm, state_a, state_b, n, **options) -> float or None
    rows : state -> dict of per-row tensors (what a row permutation moves between ranks)
    with_rows : (state, rows, inverse) -> state with those rows (lists relabelled by ``inverse``)
    """

    prepare: Callable[..., Any]
    pair: Callable[..., float]
    rows: Callable[[Any], dict]
    with_rows: Callable[..., Any]
    null_mean: Callable[..., float | None] = lambda comm, sa, sb, n, **opts: None


def _sharded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A one-process prepare/pair that takes ``comm=``/``layout=`` in the :class:`Sharded` form."""
    return lambda comm, layout, *args, **opts: fn(*args, comm=comm, layout=layout, **opts)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class MetricSpec:
    """Everything the library knows about one metric.

    Attributes
    ----------
    name : str
    ops : tuple of str
        The registry ops it runs (an explicit ``backend=`` applies to those that have it).
    defaults : dict
        Its options and their defaults (``backend`` aside).
    validate : callable (options, n, widths) -> options
        Checks and normalises the options for N samples and the two feature widths.
    prepare : callable (x, **options) -> state
    pair : callable (state_a, state_b, **options) -> float
    symmetric : bool
        m(A, B) == m(B, A) (a sweep of a set against itself scores each pair once).
    takes_topk : bool
        Uses neighbour lists of ``topk`` neighbours.
    max_score : callable (options) -> float
        The largest value the metric takes (k for lcs_knn, else 1).
    permute : callable (state, perm, inverse, **options) -> state
        The state of the row-permuted set x[perm], from x's state without recomputing it
        (relabelled neighbour lists, permuted kernel rows or basis rows): permutation nulls.
    null_mean : callable (state_a, state_b, n, **options) -> float or None
        The exact expectation of the metric over uniformly random row permutations of b, where
        it has a closed form (mutual_knn, cka, unbiased_cka), else None.
    fixed : dict
        Options the metric pins (``unbiased_cka`` is ``cka`` with ``unbiased=True``).
    grid : callable (states_x, states_y, **options) -> list of lists of float, or None
        Every pair's score at once where that is cheaper than pair by pair (cka on features
        read from files: one pass over the rows), else None; the layer search tries it first.
    sharded : Sharded
        The same metric on row-sharded sets (:mod:`platonic_fast.distributed`): its
        prepare / pair / null_mean with the sums over rows taken over every rank, and the
        per-row tensors a permutation moves between ranks.
    from_lists : callable (indices, values, scale_exp, options, comm, layout) -> state, or None
        The state from neighbour lists (kNN metrics and cknna): lists computed elsewhere, a
        smaller ``topk`` (:meth:`Prepared.truncated`), the out-of-core kNN. ``comm`` None: one process.
    stream : "neighbours", "hsic" or None
        How the out-of-core search prepares a layer without holding it: the streamed kNN
        (then ``from_lists``), the streamed kernel statistics, or not at all (whole layers).
    value_range : callable (options) -> (low, high)
        Where the metric's values provably lie (the confidence intervals clip there).
    check_widths : callable (options, width_a, width_b) -> None
        Raises when two prepared sets' widths cannot be scored together (svcca's cca_dim).
    """

    name: str
    ops: tuple[str, ...]
    defaults: dict
    validate: Callable[[dict, int, tuple[int, int]], dict]
    prepare: Callable[..., Any]
    pair: Callable[..., float]
    symmetric: bool
    takes_topk: bool
    max_score: Callable[[dict], float] = lambda opts: 1.0
    permute: Callable[..., Any] = None
    null_mean: Callable[..., float | None] = lambda sa, sb, n, **opts: None
    fixed: dict = field(default_factory=dict)
    grid: Callable[..., list | None] = lambda sx, sy, **opts: None
    sharded: "Sharded | None" = None
    from_lists: Callable[..., Any] | None = None
    stream: str | None = None
    value_range: Callable[[dict], tuple[float, float]] = lambda opts: (-math.inf, math.inf)
    check_widths: Callable[[dict, int, int], None] = lambda opts, wa, wb: None

    def check_options(self, n: int, widths: tuple[int, int], options: dict) -> dict:
        """Validated, complete options (``backend`` included) for N samples and two widths."""
        opts = dict(options)
        backend = check_backend_name(opts.pop("backend", "auto"))
        for_op(self.ops[0], backend, self.ops)  # a backend none of the ops has fails here
        unknown = set(opts) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}() got unexpected option(s) {sorted(unknown)}; "
                            f"it takes {sorted(self.defaults)} and backend")
        for name, value in self.fixed.items():
            if opts.get(name, value) != value:
                raise ValueError(f"{self.name} always uses {name}={value!r}, got {opts[name]!r}")
        out = self.validate({**self.defaults, **opts, **self.fixed}, n, widths)
        out["backend"] = backend
        return out


def _validate_topk(opts: dict, n: int, widths) -> dict:
    return {"topk": check_topk(opts["topk"], n)}


def _relabelled(st: Neighbours, perm: torch.Tensor, inverse: torch.Tensor, backend: str,
                ops: tuple[str, ...]) -> Neighbours:
    """The lists of x[perm] from x's lists: π⁻¹(L[π(i)]), the values moved with their rows."""
    idx = relabel(st.indices, perm, inverse, backend=for_op("permute_lists", backend, ops))
    vals = None if st.values is None else st.values[perm.to(st.values.device)]
    # CKNNA's self sums are sums over a set's own (i, j) pairs: relabelling both ends keeps them.
    return Neighbours(idx, vals, st.self_sums, st.scale_exp)


# name -> (neighbour_lists kind, score from the per-row total, N and k), filled by _list_metric
_LIST_METRICS: dict[str, tuple[str, Callable[[int, int, int], float]]] = {}


def _list_rows(st: Neighbours) -> dict:
    return {"indices": st.indices} if st.values is None else {"indices": st.indices, "values": st.values}


def _list_with_rows(st: Neighbours, rows: dict, inverse: torch.Tensor) -> Neighbours:
    # CKNNA's self sums are sums over a set's own (i, j) pairs: relabelling both ends keeps them.
    idx = inverse.to(rows["indices"].device)[rows["indices"]]
    return Neighbours(idx, rows.get("values"), st.self_sums, st.scale_exp)


def _list_metric(name: str, kind: str, from_total: Callable[[int, int, int], float], *,
                 symmetric: bool, max_score=lambda opts: 1.0, null_mean=lambda sa, sb, n, **opts: None) -> MetricSpec:
    """A metric of the per-row totals of one neighbour_lists kind (over every rank's rows when
    ``comm`` is a process group's)."""
    ops = ("knn", "neighbour_lists", "permute_lists")

    def prepare(x, *, topk, backend="auto", comm=None, layout=None):
        _, idx, _ = neighbours(x, topk, exclude_self=True, backend=for_op("knn", backend, ops), comm=comm,
                               layout=layout)
        return Neighbours(idx)

    def pair(sa: Neighbours, sb: Neighbours, *, topk=None, backend="auto", comm=None, layout=None):
        total = list_total(kind, sa.indices, sb.indices, backend=for_op("neighbour_lists", backend, ops), comm=comm,
                           layout=layout)
        return from_total(total, sa.indices.shape[0] if layout is None else layout.n, sa.indices.shape[1])

    def permute(st: Neighbours, perm, inverse, *, topk=None, backend="auto"):
        return _relabelled(st, perm, inverse, backend, ops)

    sharded = Sharded(_sharded(prepare), _sharded(pair), _list_rows, _list_with_rows,
                      null_mean=lambda comm, sa, sb, n, **opts: null_mean(sa, sb, n, **opts))
    _LIST_METRICS[name] = (kind, from_total)
    return MetricSpec(name, ops, {"topk": 10}, _validate_topk, prepare, pair, symmetric=symmetric,
                      takes_topk=True, max_score=max_score, permute=permute, null_mean=null_mean,
                      sharded=sharded, from_lists=lambda idx, vals, e, opts, comm=None, layout=None: Neighbours(idx),
                      stream="neighbours", value_range=lambda opts: (0.0, float(max_score(opts))))


# A random relabelling makes π⁻¹(kNN_B(π(i))) a uniform k-subset of the N - 1 other samples,
# so E|kNN_A(i) ∩ it| = k²/(N - 1) for every i (docs/metrics.md#chance-levels).
# Each list metric is a function of its per-row total (an exact integer), N and k.
_MUTUAL = _list_metric("mutual_knn", "mutual_overlap", lambda total, n, k: total / n / k, symmetric=True,
                       null_mean=lambda sa, sb, n, *, topk, **opts: topk / (n - 1))
_CYCLE = _list_metric("cycle_knn", "cycle_hits", lambda total, n, k: total / n, symmetric=False)
_LCS = _list_metric("lcs_knn", "lcs_lengths", lambda total, n, k: total / n, symmetric=True,
                    max_score=lambda opts: float(opts["topk"]))
_EDIT = _list_metric("edit_distance_knn", "edit_distances", lambda total, n, k: 1.0 - total / n / k,
                     symmetric=True)



# --- CKNNA ------------------------------------------------------------------------------------

_CKNNA_OPS = ("knn", "cknna_sums", "permute_lists")


def _masked_sums(a: Neighbours, b: Neighbours, zero_diagonal: bool, backend: str, comm=None, layout=None) -> dict:
    return cknna_sums(a.indices, a.values, b.indices, b.values, zero_diagonal,
                      backend=for_op("cknna_sums", backend, _CKNNA_OPS), comm=comm, layout=layout)


def _cknna_similarity(s: dict, n: int, *, unbiased: bool, distance_agnostic: bool) -> float:
    """HSIC of the masked kernels M∘K, M∘L from their sparse sums (docs/metrics.md#cknna)."""
    if distance_agnostic:
        return s["mask_count"]
    if unbiased:
        return (
            s["trace_kl"] + s["sum_k"] * s["sum_l"] / ((n - 1) * (n - 2)) - 2.0 * s["k_then_l"] / (n - 2)
        ) / (n * (n - 3))
    return s["trace_kl"] - s["k_then_l"] / n - s["l_then_k"] / n + s["sum_k"] * s["sum_l"] / n**2


def _cknna_state(idx: torch.Tensor, vals: torch.Tensor, unbiased: bool, backend: str,
                 scale_exp: int = 0, comm=None, layout=None) -> Neighbours:
    """A set's lists with its own masked sums (over every rank's rows when ``comm`` is given)."""
    st = Neighbours(idx, vals, scale_exp=scale_exp)
    st.self_sums = _masked_sums(st, st, unbiased, backend, comm, layout)
    return st


def _cknna_prepare(x, *, topk, unbiased=True, distance_agnostic=False, backend="auto", comm=None, layout=None):
    vals, idx, e = neighbours(x, topk, exclude_self=unbiased, backend=for_op("knn", backend, _CKNNA_OPS), comm=comm,
                              layout=layout)
    return _cknna_state(idx, vals, unbiased, backend, e, comm, layout)


def _cknna_pair(sa: Neighbours, sb: Neighbours, *, topk=None, unbiased=True, distance_agnostic=False,
                backend="auto", comm=None, layout=None):
    sums = _masked_sums(sa, sb, unbiased, backend, comm, layout)
    n = sa.indices.shape[0] if layout is None else layout.n
    return _cknna_from_sums(sums, sa, sb, n, unbiased=unbiased, distance_agnostic=distance_agnostic)


def _cknna_from_sums(sums: dict, sa: Neighbours, sb: Neighbours, n: int, *, unbiased: bool,
                     distance_agnostic: bool, warn: bool = True) -> float:
    """The score from the pair's masked sums and each set's own (docs/metrics.md#cknna), N samples."""
    opts = dict(unbiased=unbiased, distance_agnostic=distance_agnostic)
    kl = _cknna_similarity(sums, n, **opts)
    kk = _cknna_similarity(sa.self_sums, n, **opts)
    ll = _cknna_similarity(sb.self_sums, n, **opts)
    if distance_agnostic:
        return kl / max(kk * ll, 1e-300) ** 0.5
    # The sums are in scaled units (values · 2**-e): the 1e-6 guard (docs/metrics.md#cka) moves there too.
    return guarded_ratio("cknna", kl, max(kk * ll, 0.0) ** 0.5, -(sa.scale_exp + sb.scale_exp), warn=warn)


def _cknna_validate(opts: dict, n: int, widths) -> dict:
    unbiased = _check_bool(opts["unbiased"], "unbiased")
    distance_agnostic = _check_bool(opts["distance_agnostic"], "distance_agnostic")
    topk = n - 1 if opts["topk"] is None else opts["topk"]  # None: every other sample (the reference's default)
    topk = check_topk(topk, n, self_excluded=unbiased, low=2)
    if unbiased and not distance_agnostic and n < 4:
        raise ValueError(f"cknna with unbiased=True needs N >= 4 samples, got N={n}")
    return {"topk": topk, "unbiased": unbiased, "distance_agnostic": distance_agnostic}


def _cknna_permute(st: Neighbours, perm, inverse, *, backend="auto", **opts):
    return _relabelled(st, perm, inverse, backend, _CKNNA_OPS)


def _cknna_from_lists(idx, vals, e, opts, comm=None, layout=None):
    if not isinstance(vals, torch.Tensor) or vals.shape != idx.shape:
        raise ValueError("cknna needs values: an N x k tensor of kernel values shaped like indices "
                         f"{tuple(idx.shape)}")
    if vals.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"values must be float32 or float64, got {vals.dtype}")
    return _cknna_state(idx, vals.to(idx.device), opts["unbiased"], opts["backend"], e, comm, layout)


_CKNNA = MetricSpec("cknna", _CKNNA_OPS, {"topk": 10, "distance_agnostic": False, "unbiased": True},
                    _cknna_validate, _cknna_prepare, _cknna_pair, symmetric=False, takes_topk=True,
                    permute=_cknna_permute,
                    sharded=Sharded(_sharded(_cknna_prepare), _sharded(_cknna_pair), _list_rows, _list_with_rows),
                    from_lists=_cknna_from_lists, stream="neighbours")


# --- CKA --------------------------------------------------------------------------------------


def _cka_prepare(x, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    _, kernel_stats = resolve("hsic", backend, x.device, dtypes=(x.dtype,))
    return kernel_stats(x, kernel_metric, rbf_sigma)


def _cka_pair(sa, sb, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    return hsic.cka_from_stats(sa, sb, unbiased=unbiased)


def _cka_permute(st, perm, inverse, **opts):
    return hsic.permute_stats(st, perm)


def _cka_null_mean(sa, sb, n, *, unbiased=False, **opts):
    return hsic.cka_null_mean(sa, sb, unbiased=unbiased)


def _cka_grid(states_x, states_y, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    return hsic.cka_grid(states_x, states_y, unbiased=unbiased)


def _cka_validate(opts: dict, n: int, widths) -> dict:
    if opts["kernel_metric"] not in hsic.KERNELS:
        raise ValueError(f"kernel_metric must be one of {hsic.KERNELS}, got {opts['kernel_metric']!r}")
    sigma = check_positive_float(opts["rbf_sigma"], "rbf_sigma")
    unbiased = _check_bool(opts["unbiased"], "unbiased")
    if unbiased and n < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4 samples, got N={n}")
    return {"kernel_metric": opts["kernel_metric"], "rbf_sigma": sigma, "unbiased": unbiased}


def _cka_shard_prepare(comm, layout, x, *, kernel_metric="ip", rbf_sigma=1.0, unbiased=False, backend="auto"):
    from .distributed import _hsic

    return _hsic.kernel_stats(comm, layout, x, kernel_metric, rbf_sigma)


def _cka_shard_pair(comm, layout, sa, sb, *, unbiased=False, **opts):
    from .distributed import _hsic

    return _hsic.cka(comm, layout, sa, sb, unbiased=unbiased)


def _cka_shard_null_mean(comm, sa, sb, n, *, unbiased=False, **opts):
    from .distributed import _hsic

    return _hsic.cka_null_mean(comm, sa, sb, unbiased=unbiased)


def _cka_rows(st) -> dict:
    from .distributed import _hsic

    return {f: getattr(st, f) for f in _hsic.row_fields(st)}


def _cka_with_rows(st, rows: dict, inverse):
    from .distributed import _hsic

    return _hsic.permuted(st, rows)


_CKA_SHARDED = Sharded(_cka_shard_prepare, _cka_shard_pair, _cka_rows, _cka_with_rows, null_mean=_cka_shard_null_mean)


def _cka_spec(name: str, fixed: dict) -> MetricSpec:
    # biased CKA of positive semi-definite kernels lies in [0, 1]; unbiased HSIC can go negative
    return MetricSpec(name, ("hsic",), {"kernel_metric": "ip", "rbf_sigma": 1.0, "unbiased": False},
                      _cka_validate, _cka_prepare, _cka_pair, symmetric=True, takes_topk=False,
                      permute=_cka_permute, null_mean=_cka_null_mean, fixed=fixed, grid=_cka_grid,
                      sharded=_CKA_SHARDED, stream="hsic",
                      value_range=lambda opts: (-math.inf, math.inf) if opts.get("unbiased") else (0.0, 1.0))


# --- SVCCA ------------------------------------------------------------------------------------


def _svcca_prepare(x, *, cca_dim=10, backend="auto", comm=None, layout=None):
    return svcca_basis(x, cca_dim, backend=backend, comm=comm, layout=layout)


def _svcca_pair(ua, ub, *, cca_dim=10, backend="auto", comm=None, layout=None):
    return float(canonical_correlations(ua, ub, comm).mean())


def _svcca_validate(opts: dict, n: int, widths) -> dict:
    if n < 2:
        raise ValueError(f"svcca needs N >= 2 samples to standardise columns, got N={n}")
    limit = min(n, *widths)
    return {"cca_dim": check_int(opts["cca_dim"], "cca_dim", low=1, high=limit,
                                 hint=f" (min(N, D_A, D_B) = {limit})")}


def _svcca_check_widths(opts: dict, wa: int, wb: int) -> None:
    if opts["cca_dim"] > min(wa, wb):
        raise ValueError(f"cca_dim={opts['cca_dim']} exceeds the narrower width {min(wa, wb)}")


_SVCCA = MetricSpec("svcca", ("svcca",), {"cca_dim": 10}, _svcca_validate, _svcca_prepare, _svcca_pair,
                    symmetric=True, takes_topk=False,
                    permute=lambda u, perm, inverse, **opts: u[perm.to(u.device)],
                    sharded=Sharded(_sharded(_svcca_prepare), _sharded(_svcca_pair), lambda u: {"basis": u},
                                    lambda u, rows, inverse: rows["basis"]),
                    value_range=lambda opts: (0.0, 1.0), check_widths=_svcca_check_widths)

# In the reference's order (its SUPPORTED_METRICS).
METRICS: dict[str, MetricSpec] = {s.name: s for s in (
    _CYCLE, _MUTUAL, _LCS, _cka_spec("cka", {}), _cka_spec("unbiased_cka", {"unbiased": True}), _CKNNA, _SVCCA,
    _EDIT)}
SUPPORTED_METRICS = tuple(METRICS)


def metric_spec(metric: Any) -> MetricSpec:
    """The :class:`MetricSpec` named ``metric``; a ValueError lists the names otherwise."""
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {SUPPORTED_METRICS}, got {metric!r}")
    return METRICS[metric]


# --- permutation nulls in one call -------------------------------------------------------------

_CKNNA_SUM_NAMES = ("trace_kl", "sum_k", "sum_l", "k_then_l", "l_then_k", "mask_count")


def batched_null(metric: str, states_x: list, states_y: list, opts: dict):
    """A function perms (count x N, checked) -> count x Lx x Ly float64 null scores computed in
    one compiled call per chunk (kNN-list metrics and cknna on CPU), or None when the generic
    per-pair loop must run (other metrics, CUDA tensors, an explicit non-CPU backend).
    States may be None (constant layers): their scores are NaN."""
    from .ops.permute_lists import null_cknna_sums, null_counts

    if metric not in _LIST_METRICS and metric != "cknna":
        return None
    if opts.get("backend", "auto") not in ("auto", "cpu"):
        return None
    live_x = [i for i, s in enumerate(states_x) if s is not None]
    live_y = [j for j, s in enumerate(states_y) if s is not None]
    if not live_x or not live_y:
        return None
    if any(states_x[i].comm is not None for i in live_x) or any(states_y[j].comm is not None for j in live_y):
        return None  # row shards: the generic loop (the rows a permutation needs are fetched)
    sx = [states_x[i].state for i in live_x]
    sy = [states_y[j].state for j in live_y]
    if any(s.indices.device.type != "cpu" for s in sx + sy):
        return None
    n, k = sx[0].indices.shape

    def run(perms: torch.Tensor) -> torch.Tensor:
        out = torch.full((perms.shape[0], len(states_x), len(states_y)), float("nan"), dtype=torch.float64)
        rows, cols = torch.tensor(live_x)[:, None], torch.tensor(live_y)[None, :]
        if metric == "cknna":
            sums = null_cknna_sums([s.indices for s in sx], [s.values for s in sx], [s.indices for s in sy],
                                   [s.values for s in sy], perms, opts["unbiased"])
            block = torch.empty(perms.shape[0], len(sx), len(sy), dtype=torch.float64)
            for t in range(perms.shape[0]):
                for i, a in enumerate(sx):
                    for j, b in enumerate(sy):
                        d = dict(zip(_CKNNA_SUM_NAMES, sums[t, i, j].tolist()))
                        block[t, i, j] = _cknna_from_sums(d, a, b, n, unbiased=opts["unbiased"],
                                                          distance_agnostic=opts["distance_agnostic"], warn=False)
        else:
            kind, from_total = _LIST_METRICS[metric]
            totals = null_counts(kind, [s.indices for s in sx], [s.indices for s in sy], perms)
            block = torch.tensor([from_total(int(v), n, k) for v in totals.flatten().tolist()],
                                 dtype=torch.float64).reshape(totals.shape)
        out[:, rows, cols] = block
        return out

    return run


# --- the public prepared-state API ------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One feature set prepared for one metric (see :func:`prepare`).

    Attributes
    ----------
    metric : str
    options : dict
        The validated options (``backend`` included) it was prepared with.
    state : object
        The metric's per-set state (neighbour lists, kernel statistics, singular vectors).
    n, width : int
        Samples and features of the prepared set (``width`` is 0 when built from lists).
    comm, layout
        None for a set held by one process. A set prepared on row shards
        (:func:`platonic_fast.distributed.prepare`) holds the communicator and row layout:
        ``state`` is then this rank's rows' part, and every method is collective.
    """

    metric: str
    options: dict
    state: Any
    n: int
    width: int
    layout: Any = field(default=None, compare=False)
    comm: Any = field(default=None, compare=False, repr=False)

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.metric]

    @property
    def indices(self) -> torch.Tensor | None:
        """The N x k neighbour lists, for the kNN metrics and cknna (else None)."""
        return getattr(self.state, "indices", None)

    @property
    def values(self) -> torch.Tensor | None:
        """The N x k kernel values of the lists, where the metric keeps them (else None)."""
        return getattr(self.state, "values", None)

    def permute(self, perm) -> "Prepared":
        """This set with its rows permuted (row i becomes row ``perm[i]``), without recomputing it.

        The state of ``x[perm]`` from the state of ``x``: neighbour lists relabelled
        (π⁻¹(kNN(π(i))), O(N·k)), kernel statistics and singular vectors with their rows
        permuted. Scores against it equal scores against ``prepare(metric, x[perm])``, except
        that equal-score neighbours keep x's order (ties by the smaller original index).

        Parameters
        ----------
        perm : torch.Tensor, N integers
            A permutation of 0..N-1.

        Examples
        --------
        >>> a, b = torch.randn(200, 16), torch.randn(200, 8)
        >>> pa, pb = prepare("mutual_knn", a, topk=5), prepare("mutual_knn", b, topk=5)
        >>> perm = torch.randperm(200)
        >>> score(pa, pb.permute(perm)) == measure("mutual_knn", a, b[perm], topk=5)
        True
        """
        perm = check_permutation(perm, self.n)
        return permute_states([self], perm, inverse_permutation(perm))[0]

    def truncated(self, topk: int) -> "Prepared":
        """This set prepared for a smaller ``topk``, from its lists (kNN metrics and cknna).

        The first k entries of a top-K list are the top-k list (the order is total: larger
        similarity first, ties to the smaller index), so one kNN pass serves several k.

        Examples
        --------
        >>> x, y = torch.randn(300, 16), torch.randn(300, 8)
        >>> px, py = prepare("mutual_knn", x, topk=20), prepare("mutual_knn", y, topk=20)
        >>> score(px.truncated(5), py.truncated(5)) == measure("mutual_knn", x, y, topk=5)
        True
        """
        spec = METRICS[self.metric]
        if not spec.takes_topk:
            raise ValueError(f"{self.metric} does not use neighbour lists (no topk)")
        have = self.options["topk"]
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= have:
            raise ValueError(f"topk must be an integer in [1, {have}] (the lists hold {have}), got {topk!r}")
        opts = spec.check_options(self.n, (self.width, self.width), {**self.options, "topk": topk})
        st = self.state
        vals = None if st.values is None else st.values[:, :topk].contiguous()
        state = spec.from_lists(st.indices[:, :topk].contiguous(), vals, st.scale_exp, opts, self.comm, self.layout)
        return dataclasses.replace(self, options=opts, state=state)

    def _permuted(self, perm: torch.Tensor, inverse: torch.Tensor) -> "Prepared":
        # perm and inverse already checked (the null loops check each permutation once)
        state = METRICS[self.metric].permute(self.state, perm, inverse, **self.options)
        return dataclasses.replace(self, state=state)

    @classmethod
    def from_neighbours(cls, metric: str, indices, values=None, **options) -> "Prepared":
        """A set prepared from neighbour lists computed elsewhere (kNN metrics and cknna).

        Parameters
        ----------
        metric : str
            A metric that takes ``topk`` (the kNN-list metrics, cknna).
        indices : torch.Tensor, N x k integers
            Row i lists i's neighbours, most similar first, each index in [0, N).
        values : torch.Tensor, N x k float32/float64, optional
            The kernel value of each listed pair; cknna needs them.
        **options
            The metric's options; ``topk`` defaults to k and must equal it.

        Examples
        --------
        >>> idx = torch.tensor([[1, 2], [0, 2], [1, 0], [2, 1], [3, 0]])
        >>> p = Prepared.from_neighbours("mutual_knn", idx)
        >>> score(p, p)
        1.0
        """
        spec = metric_spec(metric)
        if not spec.takes_topk:
            raise ValueError(f"{metric} does not use neighbour lists; use prepare({metric!r}, features)")
        if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.is_floating_point() \
                or indices.dtype == torch.bool:
            raise TypeError("indices must be an N x k integer tensor")
        n, k = indices.shape
        if n == 0 or k == 0:
            raise ValueError(f"indices is empty (shape {tuple(indices.shape)})")
        if int(indices.min()) < 0 or int(indices.max()) >= n:
            raise ValueError(f"indices must lie in [0, N={n})")
        opts = spec.check_options(n, (k, k), {"topk": k, **options})
        if opts["topk"] != k:
            raise ValueError(f"topk={opts['topk']} but the lists hold k={k} neighbours")
        return cls(metric, opts, spec.from_lists(indices.to(torch.int64), values, 0, opts), n, 0)


def permute_states(states: list, perm: torch.Tensor, inverse: torch.Tensor) -> list:
    """Every state of one model's layers (None for a constant layer) with rows permuted by one
    checked permutation, without recomputing them; on row shards one fetch for all layers."""
    live = [s for s in states if s is not None]
    if not live or live[0].comm is None:
        return [None if s is None else s._permuted(perm, inverse) for s in states]
    # Row shards: each state's per-row tensors, the rows this rank needs fetched for every layer at
    # once; neighbour lists relabelled by the inverse.
    comm, layout = live[0].comm, live[0].layout
    parts = [s.spec.sharded.rows(s.state) for s in live]
    tensors = [t for part in parts for t in part.values()]
    fetched = iter(comm.fetch_rows(layout, tensors, perm[layout.start: layout.stop]) if tensors else [])
    moved = iter([dataclasses.replace(s, state=s.spec.sharded.with_rows(
        s.state, {name: next(fetched) for name in part}, inverse)) for s, part in zip(live, parts)])
    return [None if s is None else next(moved) for s in states]


def prepare_checked(spec: MetricSpec, x: torch.Tensor, opts: dict, comm=None, layout=None) -> Prepared:
    """``x`` (validated) prepared with validated options; on row shards (``comm``, ``layout``)
    this rank's part, collectively."""
    if comm is None:
        return Prepared(spec.name, opts, spec.prepare(x, **opts), x.shape[0], x.shape[1])
    return Prepared(spec.name, opts, spec.sharded.prepare(comm, layout, x, **opts), layout.n, x.shape[1], layout, comm)


def checked_inputs(comm, feats: list, names: list[str], metric: str | None = None) -> tuple[list, Any]:
    """Validated N x D feature matrices (same N; with ``metric``, constant ones refused) and
    their row layout: in one process (``comm`` None) the layout is None; on row shards each is
    this rank's rows, checked on every rank (collective)."""
    if comm is None:
        if len(feats) == 1:
            return [check_features(feats[0], names[0], metric=metric)], None
        return list(check_pair(*feats, tuple(names), metric=metric)), None
    from .distributed._comm import layout_of, local_features

    with comm.step():
        ts = [local_features(f, name) for f, name in zip(feats, names)]
        if len({t.device for t in ts}) > 1:
            raise ValueError(f"{names[0]} is on {ts[0].device} but {names[1]} is on {ts[1].device}; move both to "
                             "one device")
    return ts, layout_of(comm, ts, names, metric=metric)


def prepare(metric: str, x, *, comm=None, **options) -> Prepared:
    """Prepare one feature set for ``metric``: its neighbour lists, kernel statistics or basis.

    Score it against other sets with :func:`score`; a set prepared once serves any number of
    pairs (the layer search prepares each layer once).

    Parameters
    ----------
    metric : str
        One of :data:`SUPPORTED_METRICS`.
    x : torch.Tensor or np.ndarray, shape (N, D)
    comm : optional
        A process group's communicator (:func:`platonic_fast.distributed.prepare` passes it):
        ``x`` is then this rank's rows. None: one process.
    **options
        The metric's options and ``backend``, as for :func:`measure`.

    Returns
    -------
    Prepared

    Examples
    --------
    >>> a, b = torch.randn(300, 32), torch.randn(300, 16)
    >>> pa, pb = prepare("cknna", a, topk=10), prepare("cknna", b, topk=10)
    >>> score(pa, pb) == measure("cknna", a, b, topk=10)
    True
    """
    spec = metric_spec(metric)
    (x,), layout = checked_inputs(comm, [x], ["x"], metric)
    n = x.shape[0] if layout is None else layout.n
    return prepare_checked(spec, x, spec.check_options(n, (x.shape[1], x.shape[1]), options), comm, layout)


def score(a: Prepared, b: Prepared) -> float:
    """The metric of two sets prepared by :func:`prepare` for the same metric and options.

    Raises
    ------
    ValueError
        Different metrics, options, N or devices; svcca's ``cca_dim`` above the other width.

    Warns
    -----
    DegenerateInputWarning
        The score carries little information (CKA/CKNNA: the 1e-6 guard (docs/metrics.md#cka) dominates).
    """
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, Prepared):
            raise TypeError(f"{name} must be a Prepared (from platonic_fast.prepare), got {type(p).__name__}")
    if (a.comm is None) != (b.comm is None):
        raise ValueError("a and b must both be prepared on row shards (platonic_fast.distributed.prepare) "
                         "or both in one process")
    if a.metric != b.metric:
        raise ValueError(f"a was prepared for {a.metric} and b for {b.metric}")
    if a.options != b.options:
        raise ValueError(f"a and b were prepared with different options: {a.options} and {b.options}")
    if a.comm is not None and a.layout.offsets != b.layout.offsets:
        raise ValueError(f"a and b must hold the same rows on every rank: offsets {a.layout.offsets} and "
                         f"{b.layout.offsets}")
    if a.n != b.n:
        raise ValueError(f"a and b must describe the same samples: N={a.n} and N={b.n}")
    spec = METRICS[a.metric]
    spec.check_widths(a.options, a.width, b.width)
    if a.comm is not None:
        return float(spec.sharded.pair(a.comm, a.layout, a.state, b.state, **a.options))
    return float(spec.pair(a.state, b.state, **a.options))


def null_mean(a: Prepared, b: Prepared) -> float | None:
    """The exact mean of ``score(a, b[π])`` over all row permutations π, where the metric has a
    closed form (mutual_knn, cka, unbiased_cka), else None. Collective for sharded sets."""
    spec = METRICS[a.metric]
    if a.comm is not None:
        return spec.sharded.null_mean(a.comm, a.state, b.state, a.n, **a.options)
    return spec.null_mean(a.state, b.state, a.n, **a.options)


# --- by name and one function per metric ------------------------------------------------------


def measure(metric: str, feats_A, feats_B, *, comm=None, **options) -> float:
    """Score two feature sets of the same N samples with the metric named ``metric``.

    Parameters
    ----------
    metric : str
        One of :data:`SUPPORTED_METRICS`.
    feats_A, feats_B : torch.Tensor or np.ndarray, shapes (N, Da) and (N, Db)
        Row i of each describes sample i. Any float dtype, any strides, CPU or CUDA.
    **options
        The metric's own options (``topk``, ``kernel_metric``, ``rbf_sigma``, ``unbiased``,
        ``distance_agnostic``, ``cca_dim``) and ``backend``.
    comm : optional
        A process group's communicator (:func:`platonic_fast.distributed.measure` passes it):
        each feature set is then this rank's rows. None: one process.

    Returns
    -------
    float

    Examples
    --------
    >>> a, b = torch.randn(500, 64), torch.randn(500, 32)
    >>> 0.0 <= measure("mutual_knn", a, b, topk=10) <= 1.0
    True
    """
    spec = metric_spec(metric)
    (a, b), layout = checked_inputs(comm, [feats_A, feats_B], ["feats_A", "feats_B"], metric)
    opts = spec.check_options(a.shape[0] if layout is None else layout.n, (a.shape[1], b.shape[1]), options)
    return score(prepare_checked(spec, a, opts, comm, layout), prepare_checked(spec, b, opts, comm, layout))


def mutual_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Mean over samples of |kNN_A(i) ∩ kNN_B(i)| / k, in [0, 1] (self excluded)."""
    return measure("mutual_knn", feats_A, feats_B, topk=topk, backend=backend)


def cycle_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Fraction of samples i found in kNN_A(j) for some j in kNN_B(i), in [0, 1]."""
    return measure("cycle_knn", feats_A, feats_B, topk=topk, backend=backend)


def lcs_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """Mean length of the longest common subsequence of the ordered kNN lists, in [0, k]."""
    return measure("lcs_knn", feats_A, feats_B, topk=topk, backend=backend)


def edit_distance_knn(feats_A, feats_B, topk: int = 10, *, backend: str = "auto") -> float:
    """1 - mean Levenshtein distance between the ordered kNN lists / k, in [0, 1]."""
    return measure("edit_distance_knn", feats_A, feats_B, topk=topk, backend=backend)


def cka(feats_A, feats_B, kernel_metric: str = "ip", rbf_sigma: float = 1.0, unbiased: bool = False,
        *, backend: str = "auto") -> float:
    """Centred kernel alignment HSIC(K,L) / (sqrt(HSIC(K,K)·HSIC(L,L)) + 1e-6).

    ``kernel_metric`` is "ip" (linear) or "rbf" (exp(-‖x-y‖²/(2σ²)), σ = ``rbf_sigma``);
    ``unbiased`` selects the unbiased HSIC estimator (needs N >= 4).
    """
    return measure("cka", feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma,
                   unbiased=unbiased, backend=backend)


def unbiased_cka(feats_A, feats_B, kernel_metric: str = "ip", rbf_sigma: float = 1.0, *,
                 backend: str = "auto") -> float:
    """:func:`cka` with the unbiased HSIC estimator."""
    return measure("unbiased_cka", feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma,
                   backend=backend)


def cknna(feats_A, feats_B, topk: int = 10, distance_agnostic: bool = False, unbiased: bool = True,
          *, backend: str = "auto") -> float:
    """CKA restricted to mutual nearest neighbours (linear kernels), topk >= 2.

    ``distance_agnostic=True`` scores the neighbour masks alone, Σ M_KL / sqrt(Σ M_KK · Σ M_LL)
    (the reference returns a matrix there: a deliberate difference).
    """
    return measure("cknna", feats_A, feats_B, topk=topk, distance_agnostic=distance_agnostic,
                   unbiased=unbiased, backend=backend)


def svcca(feats_A, feats_B, cca_dim: int = 10, *, backend: str = "auto") -> float:
    """Mean canonical correlation of the top ``cca_dim`` singular directions (exact SVD)."""
    return measure("svcca", feats_A, feats_B, cca_dim=cca_dim, backend=backend)
