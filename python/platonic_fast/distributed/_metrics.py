"""The metrics of docs/metrics.md on row-sharded features: prepare / score / measure and one function
per metric, with the one-process names, options and validation (:mod:`platonic_fast.metrics`)."""

from __future__ import annotations

import dataclasses

import torch

from ..metrics import METRICS, Prepared, metric_spec
from ..metrics import score as _score
from ._comm import Comm, Layout
from ._knn import layout_of, local_features

# One prepared state: a set prepared on row shards is a Prepared holding its communicator and
# layout (the name stays for the public API and its messages).
ShardedPrepared = Prepared


def prepare_local(metric: str, comm: Comm, layout: Layout, x: torch.Tensor, opts: dict) -> Prepared:
    """Prepare validated local rows with validated options (collective)."""
    state = METRICS[metric].sharded.prepare(comm, layout, x, **opts)
    return Prepared(metric, opts, state, layout.n, x.shape[1], layout, comm)


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


def score(a: Prepared, b: Prepared) -> float:
    """The metric of two sets prepared by :func:`prepare` for the same metric, options and rows
    (collective: every rank gets the same float)."""
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, Prepared) or p.comm is None:
            raise TypeError(f"{name} must be a ShardedPrepared (from platonic_fast.distributed.prepare), "
                            f"got {type(p).__name__}")
    return _score(a, b)


def permuted(states: list[Prepared | None], perm: torch.Tensor, inverse: torch.Tensor) -> list[Prepared | None]:
    """Every state of one model's layers with rows permuted by one permutation (one fetch of all
    the rows this rank needs; neighbour lists relabelled by the inverse). Collective."""
    live = [s for s in states if s is not None]
    if not live:
        return list(states)
    comm, layout = live[0].comm, live[0].layout
    parts = [s.spec.sharded.rows(s.state) for s in live]
    tensors = [t for part in parts for t in part.values()]
    fetched = iter(comm.fetch_rows(layout, tensors, perm[layout.start: layout.stop]) if tensors else [])
    moved = iter([dataclasses.replace(s, state=s.spec.sharded.with_rows(
        s.state, {name: next(fetched) for name in part}, inverse)) for s, part in zip(live, parts)])
    return [None if s is None else next(moved) for s in states]


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
