"""Exact kNN over row-sharded features: every rank gets its own rows' lists, with global indices,
equal to the rows of the one-process answer (ties to the smaller global index).

The pass follows the one-process :func:`platonic_fast.ops.knn.search` step by step:

1. scale: one power of two from the global max |x| (an all-reduce), as one process picks it;
2. candidates: the top-kk (kk = k + ``RESCORE_EXTRA``) of each local row by computed score.
   The own block goes through the backend's self form; the other ranks' key blocks arrive one
   at a time (rank r receives rank r + t's block at step t and sends its own to r − t):
   - CPU backend: each pair of blocks is multiplied once, as the one-process symmetric tiles
     are: rank r computes the tiles of (r, r + t) for t = 1 .. P/2 (the last step's tile split
     in halves when P is even), merges their rows into its own running top-kk (the compiled
     merger) and their columns into a top-kk for rank r + t's rows, which it sends there;
   - other backends (Triton, torch): each rank multiplies its rows by every block;
   partial lists are merged with :func:`platonic_fast.ops.topk_merge.topk_merge`;
3. order: the ordering pass of one process (``_settle``): the same rounding bound with the
   global max ‖x‖, the same clusters, and float64 rescoring of their members, whose key rows
   are fetched from the ranks holding them (only those rows move). Rows whose near-ties reach
   past the kk candidates get more candidates from another pass over every block, until none
   does. The lists therefore do not depend on the split; the scores returned are the computed
   ones (equal across splits up to the GEMMs' rounding, exactly so where rescored).
"""

from __future__ import annotations

import torch

from .._backends import check_backend_name
from .._checks import FLOAT_DTYPES, as_tensor, check_topk, check_values
from ..ops.knn import search_rows, unscaled
from ..rows import ShardRows
from ._comm import Comm, Layout

_DTYPE_NAMES = {i: str(dt).replace("torch.", "") for i, dt in enumerate(FLOAT_DTYPES)}


def local_features(x, name: str, *, metric: str | None = None) -> torch.Tensor:
    """This rank's rows of an N x D feature matrix (type, shape and finite values checked; the
    shard may be empty). Constant features are checked over all ranks by :func:`layout_of`."""
    t = as_tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}; "
                        f"convert it with {name}.float()")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (this rank's samples x D features), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    if t.shape[0]:
        check_values(t, name)
    return t


def layout_of(comm: Comm, tensors: list[torch.Tensor], names: list[str], *, metric: str | None = None) -> Layout:
    """The row layout of one or more row-aligned sharded inputs, checked the same way on every
    rank (same widths per input, dtypes and device types on every rank, same rows per rank
    across inputs, N >= 1); with ``metric``, constant features raise ConstantFeaturesError."""
    descs = [comm.describe(t) for t in tensors]
    first = descs[0]
    for d, name in zip(descs, names):
        if len({r[1] for r in d}) > 1:
            raise ValueError(f"{name} has different widths on different ranks: {[r[1] for r in d]}")
        if len({r[2] for r in d}) > 1:
            raise TypeError(f"{name} has different dtypes on different ranks: {[_DTYPE_NAMES.get(r[2]) for r in d]}")
        if len({r[3] for r in d}) > 1:
            raise ValueError(f"{name} is on CUDA on some ranks and on the CPU on others")
        if [r[0] for r in d] != [r[0] for r in first]:
            raise ValueError(f"{names[0]} and {name} must hold the same rows on every rank: rows per rank "
                             f"{[r[0] for r in first]} and {[r[0] for r in d]}")
    layout = Layout(tuple([0] + torch.tensor([r[0] for r in first]).cumsum(0).tolist()), comm.rank)
    if layout.n == 0:
        raise ValueError(f"{names[0]} is empty on every rank; it needs at least one sample")
    if metric is not None:
        for t, name in zip(tensors, names):
            check_not_constant(comm, layout, t, name, metric)
    return layout


def check_not_constant(comm: Comm, layout: Layout, t: torch.Tensor, name: str, metric: str) -> None:
    from .._checks import ConstantFeaturesError, _column_range

    if layout.n < 2:
        return
    if t.shape[0]:
        lo, hi = _column_range(t)
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    else:
        lo = torch.full((t.shape[1],), torch.inf, dtype=torch.float64, device=t.device)
        hi = -lo
    lo, hi = comm.all_reduce(lo.cpu(), "min"), comm.all_reduce(hi.cpu(), "max")
    if bool((lo == hi).all()):
        raise ConstantFeaturesError(
            f"{name} is constant: all {layout.n} samples have the same features, so {metric} has "
            "nothing to measure (check the layer or the extraction)")


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
        As one process returns for the concatenated rows; indices are global.
    """
    comm = Comm(group, timeout)
    with comm.step():
        x = local_features(x, "x")
        if not isinstance(exclude_self, bool):
            raise TypeError(f"exclude_self must be True or False, got {exclude_self!r}")
        backend = check_backend_name(backend)
    layout = layout_of(comm, [x], ["x"])
    k = check_topk(k, layout.n, name="k", self_excluded=exclude_self)
    vals, idx, e = neighbours(comm, layout, x, k, exclude_self=exclude_self, backend=backend, screen=screen)
    with comm.step():
        vals = unscaled(vals, e)
    if gather:
        counts = [layout.rows(r) for r in range(layout.size)]
        vals, idx = comm.all_gather_rows(vals, counts), comm.all_gather_rows(idx, counts)
    return vals, idx


def neighbours(comm: Comm, layout: Layout, x: torch.Tensor, k: int, *, exclude_self: bool, backend: str,
               screen: str | None = None):
    """Sharded :func:`platonic_fast.ops.knn.neighbours` of validated local rows: this rank's
    ``(values, indices, e)``, true scores ``values · 2**e``, indices global (the one pass of
    :func:`platonic_fast.ops.knn.search_rows` over a :class:`platonic_fast.rows.ShardRows`)."""
    return search_rows(ShardRows(comm, layout, x), None, k, exclude_self=exclude_self, backend=backend,
                       screen=screen)
