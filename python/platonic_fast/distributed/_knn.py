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

from .._backends import backends_of, check_backend_name, resolve
from .._checks import FLOAT_DTYPES, as_tensor, check_topk, check_values, max_abs, unit_exponent, warn_memory
from ..ops.knn import (
    RESCORE_EXTRA,
    SAFE_EXPONENT,
    TORCH_CHUNK_ELEMENTS,
    _exact_topk,
    _reorder_clusters,
    _rounding_bound,
    _row_norms,
    _scaled,
    _unit_roundoff,
    cluster_marks,
    compute_dtype,
    cpu_tile_rows,
    vals_bytes,
)
from ..ops.topk_merge import topk_merge
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
        timeout=None):
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
    exclude_self, backend : as :func:`platonic_fast.knn`.
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
    vals, idx, e = neighbours(comm, layout, x, k, exclude_self=exclude_self, backend=backend)
    with comm.step():
        if e:
            out = vals.to(torch.float64) * 2.0 ** e
            if vals.dtype != torch.float64 and bool((out.abs() > torch.finfo(vals.dtype).max).any()):
                raise ValueError(
                    f"kNN scores reach {float(out.abs().max()):.3g}, beyond {vals.dtype}; pass float64 features "
                    "(the neighbour lists are exact either way: metrics are unaffected)")
            vals = out.to(vals.dtype)
    if gather:
        counts = [layout.rows(r) for r in range(layout.size)]
        vals, idx = comm.all_gather_rows(vals, counts), comm.all_gather_rows(idx, counts)
    return vals, idx


def neighbours(comm: Comm, layout: Layout, x: torch.Tensor, k: int, *, exclude_self: bool, backend: str):
    """Sharded :func:`platonic_fast.ops.knn.neighbours` of validated local rows: this rank's
    ``(values, indices, e)``, true scores ``values · 2**e``, indices global."""
    with comm.step():
        top = max_abs(x) if x.shape[0] else 0.0
    e = unit_exponent(comm.max(top), SAFE_EXPONENT)
    q = _scaled(x, e)
    with comm.step():
        name, impl = resolve("knn", backend, q.device, dtypes=(q.dtype,), k=k)
    limit = backends_of("knn")[name].limit_k()
    n_cand = layout.n - (1 if exclude_self else 0)
    kk = min(k + RESCORE_EXTRA, n_cand, limit if limit is not None else n_cand)
    warn_memory(f"kNN with k={k} over {layout.n_local} rows of N={layout.n}",
                6.0 * layout.n_local * kk * (vals_bytes(q) + 8),
                "neighbour metrics rarely need k near N (the paper uses k = 10)")
    with torch.no_grad():
        vals, idx = _candidates(comm, layout, q, kk, exclude_self, name, impl)
        vals, idx = _settle(comm, layout, q, vals, idx, k, exclude_self=exclude_self, n_cand=n_cand)
    return vals, idx, 2 * e


def _empty_lists(n: int, kk: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((n, kk), -torch.inf, dtype=dtype, device=device),
            torch.full((n, kk), -1, dtype=torch.int64, device=device))


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]], kk: int):
    v = torch.cat([p[0] for p in parts], dim=1)
    i = torch.cat([p[1] for p in parts], dim=1)
    if v.shape[1] == kk and len(parts) == 1:
        return v, i
    return topk_merge(v, i, min(kk, v.shape[1]))


def _candidates(comm: Comm, layout: Layout, q: torch.Tensor, kk: int, exclude_self: bool, name: str, impl):
    """This rank's top-kk candidates by computed score over all N keys (values, global indices)."""
    n_r, s_r = layout.n_local, layout.start
    dtype = compute_dtype(q)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    with comm.step():
        own = min(kk, n_r - (1 if exclude_self else 0))
        if own > 0:
            v, i = impl(q, None, own, exclude_self=exclude_self)
            parts.append((v.to(dtype), i.to(torch.int64) + s_r))
    if comm.size > 1:
        if name == "cpu" and q.device.type == "cpu":
            parts += _symmetric_blocks(comm, layout, q, kk, dtype)
        else:
            parts += _blocks_each(comm, layout, q, kk, dtype, impl)
    with comm.step():
        if not parts:
            return _empty_lists(n_r, kk, dtype, q.device)
        return _merge(parts, kk)


def _blocks_each(comm: Comm, layout: Layout, q: torch.Tensor, kk: int, dtype, impl):
    """Every other rank's block against all local rows (any backend); partial lists merged as
    they come, so one block and one running list are held."""
    n_r, d = q.shape
    running = []
    for t in range(1, comm.size):
        p = (comm.rank + t) % comm.size
        (block,) = comm.shift([q], t, [(layout.rows(p), d)])
        with comm.step():
            m = min(kk, layout.rows(p))
            if n_r and m:
                v, i = impl(q, block, m, exclude_self=False)
                running = [_merge(running + [(v.to(dtype), i.to(torch.int64) + layout.offsets[p])], kk)]
        del block
    return running


def _symmetric_blocks(comm: Comm, layout: Layout, q: torch.Tensor, kk: int, dtype):
    """CPU: each pair of blocks multiplied once; rows merged here, columns sent to their owner."""
    from .. import _core

    merger = _core.KnnMergerF64 if dtype == torch.float64 else _core.KnnMergerF32
    r, size = comm.rank, comm.size
    n_r, d = q.shape
    rows_merger = merger(n_r, kk) if n_r else None
    parts = []
    for t in range(1, size // 2 + 1):
        p, src = (r + t) % size, (r - t) % size  # I compute the tile (r, p); src computed (src, r)
        n_p = layout.rows(p)
        (block,) = comm.shift([q], t, [(n_p, d)])
        half = size % 2 == 0 and t == size // 2
        left = r < size // 2
        # the part of the tile this rank computes: my rows [a0, a1) x p's rows [b0, b1)
        a0, a1, b0, b1 = 0, n_r, 0, n_p
        if half:
            if left:
                b1 = n_p // 2
            else:
                a0 = n_r // 2
        with comm.step():
            cv, ci = _cross_tiles(q, block, a0, a1, b0, b1, layout.start, layout.offsets[p], rows_merger,
                                  merger, kk, dtype)
        del block
        # the lists for my rows that src computed: all of them, but only the first half when the
        # split tile's other half is mine (I am the right rank of a halved pair)
        g0, g1 = 0, n_r
        if half and not left:
            g1 = n_r // 2
        gv = comm.exchange(cv, p, (g1 - g0, kk), dtype, src, q.device)
        gi = comm.exchange(ci, p, (g1 - g0, kk), torch.int64, src, q.device)
        if g1 > g0:
            fv, fi = _empty_lists(n_r, kk, dtype, q.device)
            fv[g0:g1], fi[g0:g1] = gv, gi
            parts.append((fv, fi))
    with comm.step():  # every rank enters every step, with or without rows
        if rows_merger is not None:
            v, i = rows_merger.finalize()
            parts.append((torch.from_numpy(v), torch.from_numpy(i)))
    return parts


def _cross_tiles(q, block, a0, a1, b0, b1, my_start, p_start, rows_merger, merger, kk, dtype):
    """Tiles of q[a0:a1] x block[b0:b1]ᵀ: rows into ``rows_merger`` (global key indices), columns
    into a new merger for block rows [b0, b1) whose top-kk it returns (global indices)."""
    n_cols = b1 - b0
    cols_merger = merger(n_cols, kk) if n_cols else None
    if a1 > a0 and n_cols:
        tile_rows = cpu_tile_rows(max(a1 - a0, n_cols))
        buf = torch.empty(min(tile_rows, a1 - a0), min(tile_rows, n_cols), dtype=dtype)
        kbs = [(k0, min(b1, k0 + tile_rows)) for k0 in range(b0, b1, tile_rows)]
        for q0 in range(a0, a1, tile_rows):
            q1 = min(a1, q0 + tile_rows)
            qb = q[q0:q1].to(dtype).contiguous()
            for k0, k1 in kbs:
                kb = block[k0:k1].to(dtype).contiguous()
                tile = buf[: q1 - q0, : k1 - k0]
                torch.mm(qb, kb.T, out=tile)
                scores = tile.numpy()
                rows_merger.add_rows(scores, q0, p_start + k0, False)
                cols_merger.add_cols(scores, my_start + q0, k0 - b0, False)
    if cols_merger is None:
        return _empty_lists(0, kk, dtype, q.device)
    v, i = cols_merger.finalize()
    return torch.from_numpy(v), torch.from_numpy(i)


class _FetchedKeys:
    """Key rows fetched from their ranks, indexed by global index (what the ordering pass's
    helpers read of ``keys``: rows by index, ``shape`` and ``device``)."""

    def __init__(self, which: torch.Tensor, rows: torch.Tensor, n: int):
        self.which, self.rows = which, rows
        self.shape = (n, rows.shape[1])
        self.device = rows.device

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows[torch.searchsorted(self.which, index)]


def _settle(comm: Comm, layout: Layout, q: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, k: int, *,
            exclude_self: bool, n_cand: int):
    """The one-process ordering pass (:func:`platonic_fast.ops.knn._settle`) on local rows."""
    with comm.step():
        gamma = _rounding_bound(q.shape[1], _unit_roundoff(compute_dtype(q)))
        q_norm = _row_norms(q) if q.shape[0] else torch.zeros(0, dtype=torch.float64, device=q.device)
        top = float(q_norm.max()) if q.shape[0] else 0.0
    delta = 2.0 * gamma * q_norm * comm.max(top)
    out_v, out_i = vals[:, :k].clone(), idx[:, :k].clone()
    rows = torch.arange(q.shape[0], device=q.device)
    first_round = True
    while True:
        kk = idx.shape[1]
        with comm.step():
            member, beyond = cluster_marks(vals, delta[rows], k, all_candidates=kk == n_cand)
            busy = member.any(dim=1) & ~beyond
            want = torch.unique(idx[busy][member[busy]])
        (fetched,) = comm.fetch_rows(layout, [q], want)
        with comm.step():
            if bool(busy.any()):
                keys = _FetchedKeys(want, fetched, layout.n)
                sv, si = _reorder_clusters(q, keys, rows[busy], vals[busy], idx[busy], member[busy])
                out_v[rows[busy]], out_i[rows[busy]] = sv[:, :k], si[:, :k]
            if first_round:
                first_round = False  # out_v, out_i already hold the candidates' order
            else:
                calm = ~member.any(dim=1)
                out_v[rows[calm]], out_i[rows[calm]] = vals[calm, :k], idx[calm, :k]
            rows = rows[beyond]
        if not comm.any(rows.numel() > 0):
            return out_v, out_i
        vals, idx = _more_candidates(comm, layout, q, rows, min(2 * kk, n_cand), exclude_self)


def _more_candidates(comm: Comm, layout: Layout, q: torch.Tensor, rows: torch.Tensor, kk: int, exclude_self: bool):
    """The top-kk candidates of local ``rows`` over every block, by the torch reference's
    chunked products and exact top-k (as one process's ``_more_candidates``). Collective."""
    dtype = compute_dtype(q)
    qs = q[rows].to(dtype)
    running: list = []
    for t in range(comm.size):
        p = (comm.rank + t) % comm.size
        (block,) = comm.shift([q], t, [(layout.rows(p), q.shape[1])])
        with comm.step():
            own = exclude_self and t == 0
            m = min(kk, layout.rows(p) - (1 if own else 0))
            if rows.numel() and m > 0:
                kb = block.to(dtype)
                chunk = max(1, TORCH_CHUNK_ELEMENTS // max(1, kb.shape[0]))
                vs, is_ = [], []
                for c0 in range(0, rows.numel(), chunk):
                    s = qs[c0: c0 + chunk] @ kb.T
                    if own:
                        s[torch.arange(s.shape[0], device=s.device), rows[c0: c0 + chunk]] = -torch.inf
                    v, i = _exact_topk(s, m)
                    vs.append(v)
                    is_.append(i)
                part = (torch.cat(vs), torch.cat(is_) + layout.offsets[p])
                running = [_merge(running + [part], kk)]
    if not running:
        return _empty_lists(rows.numel(), kk, dtype, q.device)
    return running[0]
