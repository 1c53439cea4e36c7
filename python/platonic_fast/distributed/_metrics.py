"""The metrics of SPEC §1 on row-sharded features: prepare / score / measure and one function
per metric, with the one-process names, options and validation (:mod:`platonic_fast.metrics`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .._backends import for_op
from .._checks import guarded_ratio
from ..metrics import _CKNNA_OPS, _LIST_METRICS, METRICS, Neighbours, _cknna_similarity, metric_spec
from ..ops.permute_lists import check_permutation, inverse_permutation
from . import _hsic, _lists, _svcca
from ._comm import Comm, Layout
from ._knn import layout_of, local_features, neighbours

_LIST_OPS = ("knn", "neighbour_lists", "permute_lists")


@dataclass(frozen=True)
class ShardedPrepared:
    """This rank's part of one feature set prepared for one metric (see :func:`prepare`).

    ``state`` holds the local rows' part (neighbour lists with global indices, kernel
    statistics, basis rows) and the set's global sums; ``n`` is the global N.
    """

    metric: str
    options: dict
    state: Any
    n: int
    width: int
    layout: Layout = field(compare=False)
    comm: Comm = field(compare=False, repr=False)

    @property
    def indices(self) -> torch.Tensor | None:
        """This rank's rows of the N x k neighbour lists (global indices), where the metric has them."""
        return getattr(self.state, "indices", None)

    @property
    def values(self) -> torch.Tensor | None:
        return getattr(self.state, "values", None)

    def permute(self, perm) -> "ShardedPrepared":
        """The set with its rows permuted (row i becomes row ``perm[i]``), as
        :meth:`platonic_fast.Prepared.permute`. Collective: every rank passes the same ``perm``
        (all N entries); only the rows this rank needs are fetched."""
        perm = check_permutation(perm, self.n)
        return permuted([self], perm, inverse_permutation(perm))[0]

    def truncated(self, topk: int) -> "ShardedPrepared":
        """This set prepared for a smaller ``topk`` from its lists (kNN metrics and cknna). Collective."""
        spec = METRICS[self.metric]
        if not spec.takes_topk:
            raise ValueError(f"{self.metric} does not use neighbour lists (no topk)")
        have = self.options["topk"]
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= have:
            raise ValueError(f"topk must be an integer in [1, {have}] (the lists hold {have}), got {topk!r}")
        opts = spec.check_options(self.n, (self.width, self.width), {**self.options, "topk": topk})
        st = self.state
        if self.metric == "cknna":
            state = _cknna_state(self.comm, self.layout, st.indices[:, :topk].contiguous(),
                                 st.values[:, :topk].contiguous(), opts["unbiased"], st.scale_exp)
        else:
            state = Neighbours(st.indices[:, :topk].contiguous())
        return dataclasses.replace(self, options=opts, state=state)


def _cknna_state(comm, layout, idx, vals, unbiased: bool, scale_exp: int) -> Neighbours:
    st = Neighbours(idx, vals, scale_exp=scale_exp)
    st.self_sums = _lists.cknna_sums(comm, layout, idx, vals, idx, vals, zero_diagonal=unbiased)
    return st


def _prepare_state(metric: str, comm: Comm, layout: Layout, x: torch.Tensor, opts: dict):
    backend = opts.get("backend", "auto")
    if metric in _LIST_METRICS:
        _, idx, _ = neighbours(comm, layout, x, opts["topk"], exclude_self=True,
                               backend=for_op("knn", backend, _LIST_OPS))
        return Neighbours(idx)
    if metric == "cknna":
        vals, idx, e = neighbours(comm, layout, x, opts["topk"], exclude_self=opts["unbiased"],
                                  backend=for_op("knn", backend, _CKNNA_OPS))
        return _cknna_state(comm, layout, idx, vals, opts["unbiased"], e)
    if metric in ("cka", "unbiased_cka"):
        return _hsic.kernel_stats(comm, layout, x, opts["kernel_metric"], opts["rbf_sigma"])
    if metric == "svcca":
        return _svcca.basis(comm, layout, x, opts["cca_dim"])
    raise ValueError(f"unknown metric {metric!r}")  # pragma: no cover - metric_spec checked it


def _pair(metric: str, comm: Comm, layout: Layout, sa, sb, opts: dict, *, warn: bool = True) -> float:
    n = layout.n
    if metric in _LIST_METRICS:
        kind, from_total = _LIST_METRICS[metric]
        k = sa.indices.shape[1]
        if kind == "cycle_hits":
            total = _lists.cycle_total(comm, layout, sa.indices, sb.indices)
        else:
            backend = for_op("neighbour_lists", opts.get("backend", "auto"), _LIST_OPS)
            total = _lists.row_totals(comm, kind, sa.indices, sb.indices, backend)
        return from_total(total, n, k)
    if metric == "cknna":
        sums = _lists.cknna_sums(comm, layout, sa.indices, sa.values, sb.indices, sb.values,
                                 zero_diagonal=opts["unbiased"])
        kw = dict(unbiased=opts["unbiased"], distance_agnostic=opts["distance_agnostic"])
        kl = _cknna_similarity(sums, n, **kw)
        kk = _cknna_similarity(sa.self_sums, n, **kw)
        ll = _cknna_similarity(sb.self_sums, n, **kw)
        if opts["distance_agnostic"]:
            return kl / max(kk * ll, 1e-300) ** 0.5
        return guarded_ratio("cknna", kl, max(kk * ll, 0.0) ** 0.5, -(sa.scale_exp + sb.scale_exp), warn=warn)
    if metric in ("cka", "unbiased_cka"):
        return _hsic.cka(comm, layout, sa, sb, unbiased=opts["unbiased"])
    return _svcca.score(comm, sa, sb)


def null_mean(p: ShardedPrepared, q: ShardedPrepared) -> float | None:
    """The exact permutation mean where it has a closed form (as the specs' ``null_mean``)."""
    if p.metric == "mutual_knn":
        return p.options["topk"] / (p.n - 1)
    if p.metric in ("cka", "unbiased_cka"):
        return _hsic.cka_null_mean(p.comm, p.state, q.state, unbiased=p.options["unbiased"])
    return None


def prepare_local(metric: str, comm: Comm, layout: Layout, x: torch.Tensor, opts: dict) -> ShardedPrepared:
    """Prepare validated local rows with validated options (collective)."""
    state = _prepare_state(metric, comm, layout, x, opts)
    return ShardedPrepared(metric, opts, state, layout.n, x.shape[1], layout, comm)


def prepare(metric: str, x, *, group=None, timeout=None, **options) -> ShardedPrepared:
    """Prepare this rank's rows of one feature set for ``metric`` (collective).

    Parameters
    ----------
    metric : str
        One of :data:`platonic_fast.SUPPORTED_METRICS`.
    x : torch.Tensor or np.ndarray, shape (n_r, D)
        This rank's contiguous rows of the N x D features.
    group, timeout : see :func:`platonic_fast.distributed.knn`.
    **options
        The metric's options and ``backend``, as for :func:`platonic_fast.prepare`.
    """
    spec = metric_spec(metric)
    comm = Comm(group, timeout)
    with comm.step():
        x = local_features(x, "x")
    layout = layout_of(comm, [x], ["x"], metric=metric)
    opts = spec.check_options(layout.n, (x.shape[1], x.shape[1]), options)
    return prepare_local(metric, comm, layout, x, opts)


def score(a: ShardedPrepared, b: ShardedPrepared) -> float:
    """The metric of two sets prepared by :func:`prepare` for the same metric, options and rows
    (collective: every rank gets the same float)."""
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, ShardedPrepared):
            raise TypeError(f"{name} must be a ShardedPrepared (from platonic_fast.distributed.prepare), "
                            f"got {type(p).__name__}")
    if a.metric != b.metric:
        raise ValueError(f"a was prepared for {a.metric} and b for {b.metric}")
    if a.options != b.options:
        raise ValueError(f"a and b were prepared with different options: {a.options} and {b.options}")
    if a.layout.offsets != b.layout.offsets:
        raise ValueError(f"a and b must hold the same rows on every rank: offsets {a.layout.offsets} and "
                         f"{b.layout.offsets}")
    if a.metric == "svcca" and a.options["cca_dim"] > min(a.width, b.width):
        raise ValueError(f"cca_dim={a.options['cca_dim']} exceeds the narrower width {min(a.width, b.width)}")
    return float(_pair(a.metric, a.comm, a.layout, a.state, b.state, a.options))


def permuted(states: list[ShardedPrepared | None], perm: torch.Tensor, inverse: torch.Tensor
             ) -> list[ShardedPrepared | None]:
    """Every state of one model's layers with rows permuted by one permutation (one fetch of all
    the rows this rank needs; neighbour lists relabelled by the inverse). Collective."""
    live = [s for s in states if s is not None]
    if not live:
        return list(states)
    comm, layout = live[0].comm, live[0].layout
    mine = perm[layout.start: layout.stop]
    tensors, where = [], []
    for s in live:
        names = _row_fields(s)
        where.append((len(tensors), names))
        tensors += [_get(s, f) for f in names]
    fetched = comm.fetch_rows(layout, tensors, mine) if tensors else []
    out, it = [], iter(zip(live, where))
    for s in states:
        if s is None:
            out.append(None)
            continue
        live_s, (at, names) = next(it)
        rows = dict(zip(names, fetched[at: at + len(names)]))
        out.append(dataclasses.replace(live_s, state=_with_rows(live_s, rows, inverse)))
    return out


def _row_fields(p: ShardedPrepared) -> list[str]:
    if p.metric in _LIST_METRICS:
        return ["indices"]
    if p.metric == "cknna":
        return ["indices", "values"]
    if p.metric in ("cka", "unbiased_cka"):
        return _hsic.row_fields(p.state)
    return ["basis"]


def _get(p: ShardedPrepared, name: str) -> torch.Tensor:
    if name == "basis":
        return p.state
    if p.metric in ("cka", "unbiased_cka"):
        return getattr(p.state.local, name)
    return getattr(p.state, name)


def _with_rows(p: ShardedPrepared, rows: dict, inverse: torch.Tensor):
    st = p.state
    if p.metric in ("cka", "unbiased_cka"):
        return _hsic.permuted(st, rows)
    if p.metric == "svcca":
        return rows["basis"]
    idx = inverse.to(rows["indices"].device)[rows["indices"]]
    # CKNNA's self sums are over the set's own (i, j) pairs: relabelling both ends keeps them.
    return Neighbours(idx, rows.get("values"), st.self_sums, st.scale_exp)


def measure(metric: str, feats_A, feats_B, *, group=None, timeout=None, **options) -> float:
    """Score two row-sharded feature sets with the metric named ``metric`` (collective).

    Each rank passes its own contiguous rows [s_r, s_{r+1}) of A and B (the same rows of both;
    shards may differ in size). Every rank returns what :func:`platonic_fast.measure` returns on
    the concatenated rows.

    Examples
    --------
    >>> # under torchrun, after dist.init_process_group("gloo")
    >>> rows = slice(*shard_bounds)                      # this rank's samples
    >>> pfd.measure("mutual_knn", A[rows], B[rows], topk=10)
    """
    spec = metric_spec(metric)
    comm = Comm(group, timeout)
    with comm.step():
        a = local_features(feats_A, "feats_A")
        b = local_features(feats_B, "feats_B")
        if a.device != b.device:
            raise ValueError(f"feats_A is on {a.device} but feats_B is on {b.device}; move both to one device")
    layout = layout_of(comm, [a, b], ["feats_A", "feats_B"], metric=metric)
    opts = spec.check_options(layout.n, (a.shape[1], b.shape[1]), options)
    return score(prepare_local(metric, comm, layout, a, opts), prepare_local(metric, comm, layout, b, opts))


def _by_name(metric: str, doc: str, **defaults):
    def fn(feats_A, feats_B, *args, group=None, timeout=None, **options):
        names = list(defaults)
        if len(args) > len(names):
            raise TypeError(f"{metric}() takes at most {len(names)} positional options, got {len(args)}")
        opts = {**defaults, **dict(zip(names, args)), **options}
        return measure(metric, feats_A, feats_B, group=group, timeout=timeout, **opts)

    fn.__name__ = fn.__qualname__ = metric
    fn.__doc__ = f"{doc}\n\nRow-sharded: see :func:`measure` (``group=``, ``timeout=``)."
    return fn


mutual_knn = _by_name("mutual_knn", "Mean over samples of |kNN_A(i) ∩ kNN_B(i)| / k.", topk=10)
cycle_knn = _by_name("cycle_knn", "Fraction of samples i in kNN_A(j) for some j in kNN_B(i).", topk=10)
lcs_knn = _by_name("lcs_knn", "Mean LCS length of the ordered kNN lists.", topk=10)
edit_distance_knn = _by_name("edit_distance_knn", "1 - mean Levenshtein distance of the kNN lists / k.", topk=10)
cka = _by_name("cka", "Centred kernel alignment.", kernel_metric="ip", rbf_sigma=1.0, unbiased=False)
unbiased_cka = _by_name("unbiased_cka", "CKA with the unbiased HSIC estimator.", kernel_metric="ip", rbf_sigma=1.0)
cknna = _by_name("cknna", "CKA restricted to mutual nearest neighbours.", topk=10, distance_agnostic=False,
                 unbiased=True)
svcca = _by_name("svcca", "Mean canonical correlation of the top cca_dim singular directions.", cca_dim=10)

__all__ = ["ShardedPrepared", "measure", "prepare", "score", "mutual_knn", "cycle_knn", "lcs_knn",
           "edit_distance_knn", "cka", "unbiased_cka", "cknna", "svcca"]
