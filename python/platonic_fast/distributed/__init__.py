"""Sharded metrics under torch.distributed: every rank holds a contiguous block of samples.

With a process group initialised (``torch.distributed.init_process_group``: gloo on CPUs, NCCL
on GPUs, launched by ``torchrun``), rank r passes rows [s_r, s_{r+1}) of A and B (rank order is
sample order; shards may differ in size, be smaller than k, or be empty). Every function is
collective (all ranks of the group call it, in the same order) and returns on every rank what
the one-process function returns on the concatenated rows (docs/metrics.md#sharded): neighbour lists with
global indices and the same tie rule, scores equal within 1e-12 where the computation is in
float64 (float64 inputs, or problems small enough that one process uses float64), within the
GEMMs' float32 rounding otherwise.

>>> import torch.distributed as dist, platonic_fast.distributed as pfd
>>> dist.init_process_group("gloo")                         # under torchrun
>>> lo, hi = rank * N // world, (rank + 1) * N // world     # this rank's samples
>>> vals, idx = pfd.knn(A[lo:hi], k=10)                       # this rank's rows, global indices
>>> pfd.measure("cknna", A[lo:hi], B[lo:hi], topk=10)          # the same float on every rank
>>> res = pfd.align(X[lo:hi], Y[lo:hi], "mutual_knn", topk=10)  # n_r x L x D layer search

Every function takes ``group=`` (default: the default group; without an initialised one, the
calls run as one process) and ``timeout=`` (seconds a collective may wait; default: the
group's own timeout). A rank that raises makes every rank raise (:class:`ShardError` on the
others) instead of leaving them waiting.
"""

import inspect

from .. import align as _align
from .. import calibration as _calibration
from .. import metrics as _metrics
from .. import scorer as _scorer
from .._backends import check_backend_name
from .._checks import check_topk
from ..metrics import SUPPORTED_METRICS, Prepared
from ..ops import knn as _knn
from ..ops import outliers as _outliers
from ._comm import Comm, Layout, ShardError, layout_of, local_features

# One prepared state: a set prepared on row shards is a Prepared holding its communicator and
# layout (the name stays for the public API and its messages).
ShardedPrepared = Prepared


def knn(x, k, *, group=None, exclude_self: bool = True, backend: str = "auto", gather: bool = False,
        timeout=None, screen: str | None = None):
    """Exact k nearest neighbours by inner product of row-sharded features.

    Parameters
    ----------
    x : torch.Tensor or np.ndarray, shape (n_r, D)
        This rank's contiguous rows [s_r, s_{r+1}) of the N x D features (rank order is sample
        order; shards may differ in size, be smaller than k, or be empty).
    k : int
        Neighbours per row, ``1 <= k <= N - 1`` (``<= N`` with ``exclude_self=False``).
    group : torch.distributed.ProcessGroup, optional
        The group over which the rows are sharded (default: the default group; without an
        initialised one, a single process).
    exclude_self, backend, screen : as :func:`platonic_fast.knn` (the CPU's certified bf16 screen
        serves shards when every rank can run it; the lists and values are the same either way).
    gather : bool
        False: this rank's rows of the lists (n_r x k). True: all N rows on every rank.
    timeout : float or timedelta, optional
        Seconds any one collective may wait (default: the process group's timeout).

    Returns
    -------
    values, indices : (n_r, k) or (N, k)
        As one process returns for the concatenated rows; indices are global (the one pass of
        :func:`platonic_fast.ops.knn.search_rows` over a :class:`platonic_fast.rows.ShardRows`).
    """
    comm = Comm(group, timeout)
    with comm.step():
        x = local_features(x, "x")
        if not isinstance(exclude_self, bool):
            raise TypeError(f"exclude_self must be True or False, got {exclude_self!r}")
        backend = check_backend_name(backend)
    layout = layout_of(comm, [x], ["x"])
    k = check_topk(k, layout.n, name="k", self_excluded=exclude_self)
    vals, idx, e = _knn.neighbours(x, k, exclude_self=exclude_self, backend=backend, comm=comm, layout=layout,
                                   screen=screen)
    with comm.step():
        vals = _knn.unscaled(vals, e)
    if gather:
        counts = [layout.rows(r) for r in range(layout.size)]
        vals, idx = comm.all_gather_rows(vals, counts), comm.all_gather_rows(idx, counts)
    return vals, idx


def prepare(metric: str, x, *, group=None, timeout=None, **options) -> ShardedPrepared:
    """This rank's rows ``x`` (n_r x D) of one feature set prepared for ``metric`` (collective):
    :func:`platonic_fast.prepare` on row shards, the metric's options and ``backend`` as there."""
    return _metrics.prepare(metric, x, comm=Comm(group, timeout), **options)


def score(a: ShardedPrepared, b: ShardedPrepared) -> float:
    """The metric of two sets prepared by :func:`prepare` for the same metric, options and rows
    (collective: every rank gets the same float)."""
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, Prepared) or p.comm is None:
            raise TypeError(f"{name} must be a ShardedPrepared (from platonic_fast.distributed.prepare), "
                            f"got {type(p).__name__}")
    return _metrics.score(a, b)


def measure(metric: str, feats_A, feats_B, *, group=None, timeout=None, **options) -> float:
    """:func:`platonic_fast.measure` of row-sharded A and B (collective): each rank passes its own
    contiguous rows [s_r, s_{r+1}) of both (shards may differ in size) and every rank returns
    what one process returns on the concatenated rows.

    >>> pfd.measure("mutual_knn", A[lo:hi], B[lo:hi], topk=10)   # under torchrun
    """
    return _metrics.measure(metric, feats_A, feats_B, comm=Comm(group, timeout), **options)


def _by_name(fn):
    """The row-sharded form of one metric's function of :mod:`platonic_fast.metrics` (the same
    positional options)."""
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][2:]

    def sharded(feats_A, feats_B, *args, group=None, timeout=None, **options):
        if len(args) > len(names):
            raise TypeError(f"{fn.__name__}() takes at most {len(names)} positional options, got {len(args)}")
        return measure(fn.__name__, feats_A, feats_B, group=group, timeout=timeout, **dict(zip(names, args)),
                       **options)

    sharded.__name__ = sharded.__qualname__ = fn.__name__
    sharded.__doc__ = f"{fn.__doc__}\n\nRow-sharded: see :func:`measure` (``group=``, ``timeout=``)."
    return sharded


globals().update({name: _by_name(getattr(_metrics, name)) for name in SUPPORTED_METRICS})


def remove_outliers(feats, q: float = 0.95, exact: bool = False, *, group=None, timeout=None):
    """Clamp this rank's rows of ``feats`` to [-t, t] with t from all ranks' rows (docs/metrics.md#clamping;
    :func:`platonic_fast.remove_outliers` on the concatenation, this rank's part returned).

    ``exact=True``: t is the entry at position floor(q · numel) of the sorted |x| of the whole
    (global) tensor, found by a distributed radix selection (nothing gathered);
    ``exact=False``: the mean over all samples of each sample's interpolated q-quantile.
    """
    return _outliers.remove_outliers(feats, q, exact, comm=Comm(group, timeout))


def align(feats_x, feats_y, metric: str = "mutual_knn", topk: int = 10, *, group=None, timeout=None, **options):
    """The layer search of :func:`platonic_fast.align` (same options) on row-sharded layers
    (collective): ``feats_x``, ``feats_y`` are this rank's rows, n_r x L x D tensors or lists of
    n_r x D_l matrices. Every rank returns the same :class:`platonic_fast.AlignResult` (with
    ``permutations=K``, the permutations drawn on rank 0 with ``generator`` and broadcast)."""
    return _align.align(feats_x, feats_y, metric, topk, comm=Comm(group, timeout), **options)


def calibrate(metric, feats_A, feats_B, permutations: int | None = None, alpha: float = 0.05, generator=None,
              perm=None, *, group=None, timeout=None, **options):
    """:func:`platonic_fast.calibrate` on row-sharded A and B (collective): the observed score
    and its permutation null, the permutations drawn on rank 0 and broadcast."""
    return _calibration.calibrate(metric, feats_A, feats_B, permutations, alpha, generator, perm,
                                  comm=Comm(group, timeout), **options)


class Alignment(_scorer.Alignment):
    """:class:`platonic_fast.Alignment` with every reference and every scored model held as this
    rank's rows (collective: construct and call it on every rank of the group, in the same order);
    results equal :func:`align` (and so one process on the concatenation)."""

    def __init__(self, references, *, group=None, timeout=None, **options):
        super().__init__(references, comm=Comm(group, timeout), **options)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [lo, hi) of an even split of n samples over ``world`` ranks (sizes differ by at most 1)."""
    return rank * n // world, (rank + 1) * n // world


__all__ = ["Alignment", "Layout", "ShardError", "ShardedPrepared", "align", "calibrate", "knn", "measure", "prepare",
           "remove_outliers", "score", "shard_bounds", *SUPPORTED_METRICS]
