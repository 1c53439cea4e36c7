"""CKA (HSIC) of row-sharded features: the one-process kernel statistics
(:mod:`platonic_fast.ops.hsic`) with every global quantity all-reduced.

- centring, the power-of-two scale, the RBF's typical distance and the float64 decision use
  the global N, column sums and maxima (all-reduced), as one process computes them;
- linear kernels in feature space: Σ K̄∘K̄ = ‖XᵀX‖²_F and Σ K̄∘L̄ = ‖XᵀY‖²_F from the
  all-reduced D x D products (accumulated in float64);
- tiles (RBF, or linear with N below the widths): each rank sums its rows' tiles against every
  block, the blocks arriving one at a time; row sums stay with their rows;
- every HSIC sum over rows (Σ K1·L1, Σ diag, ...) is a local partial sum, all-reduced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .._checks import guarded_ratio, max_abs, unit_exponent
from ..ops import hsic as H
from ..ops.knn import compute_dtype
from ._comm import Comm, Layout


@dataclass
class ShardStats:
    """One feature set's kernel statistics: ``local`` holds this rank's rows (features, row
    sums, diagonal) and the global Σ K̂∘K̂ in ``local.self_sum``; ``n`` is the global N."""

    local: H.KernelStats
    n: int
    feature_space: bool
    self_parts: list | None = None  # the set's own row sums for HSIC(K, K) (see :func:`_parts`)


def _global_mean(comm: Comm, x: torch.Tensor, n: int) -> torch.Tensor:
    with comm.step():
        s = x.sum(dim=0, dtype=torch.float64) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float64)
    return (comm.all_reduce(s.cpu()) / n).to(x.device)


def kernel_stats(comm: Comm, layout: Layout, x: torch.Tensor, kernel: str = "ip", sigma: float = 1.0) -> ShardStats:
    """Sharded :func:`platonic_fast.ops.hsic.kernel_stats` of validated local rows."""
    if kernel not in H.KERNELS:
        raise ValueError(f"kernel_metric must be one of {H.KERNELS}, got {kernel!r}")
    n, d = layout.n, x.shape[1]
    space = kernel == "ip" and H._use_feature_space(n, d, d)
    work = n * d * d if space else n * n * d
    dtype = torch.float64 if work <= H.FLOAT64_WORK else compute_dtype(x)
    mean = _global_mean(comm, x, n)
    with torch.no_grad():
        with comm.step():
            centred = x.to(dtype) - mean.to(dtype)
            top = max_abs(centred) if x.shape[0] else 0.0
        e = unit_exponent(comm.max(top), 16)
        feats = centred * (2.0 ** -e) if e else centred
        zeros = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if kernel == "ip":
            diag = feats.square().sum(dim=1, dtype=torch.float64)
            st = H.KernelStats(kernel, sigma, (), feats, None, None, zeros, diag, scale=1.0, scale_exp=2 * e)
            if space:
                with comm.step():
                    g = (feats.T @ feats).to(torch.float64)
                st.self_sum = float(comm.all_reduce(g.cpu()).square().sum())
                return _with_parts(comm, ShardStats(st, n, True))
        else:
            with comm.step():
                sq64 = feats.to(torch.float64).square().sum(dim=1)
                part = [float(sq64.sum()), float(sq64.max()) if x.shape[0] else 0.0]
            typical = 2.0 * comm.sum([part[0]])[0] / n
            rbf, scale, rbf_diag = H.rbf_form(sigma, typical, e)
            sq = sq64.to(feats.dtype)
            st = H.KernelStats(kernel, sigma, rbf, feats, sq, None, zeros, torch.full_like(zeros, rbf_diag),
                               scale=scale)
            st.exact_close = H.needs_exact_close(rbf, feats.dtype, d, comm.max(float(sq.max()) if x.shape[0] else 0.0))
        self_sum, rows = _tile_sums(comm, layout, [st], [st])
        st.self_sum = self_sum
        if kernel == "rbf":
            st.row_sums = rows
        return _with_parts(comm, ShardStats(st, n, False))


def _with_parts(comm: Comm, st: ShardStats) -> ShardStats:
    st.self_parts = _parts(comm, st, st)
    return st


def _tile_sums(comm: Comm, layout: Layout, left: list[H.KernelStats], right: list[H.KernelStats]):
    """Σ over my rows i and all j of K̂_ij·L̂_ij (K from left[0], L from left[-1] / right[-1]) and
    the row sums of K̂ (when ``left`` is one set): tiles against each block as it arrives."""
    ka, kb = left[0], right[-1]
    xa, xb = ka.features, kb.features
    one = ka is kb
    rows = torch.zeros(xa.shape[0], dtype=torch.float64, device=xa.device)
    total = 0.0
    payload = [xa] if one else [xa, xb]
    for t in range(comm.size):
        p = (comm.rank + t) % comm.size
        n_p = layout.rows(p)
        got = comm.shift(payload, t, [(n_p, x.shape[1]) for x in payload])
        with comm.step():
            ya, yb = got[0], got[-1]
            sqa = None if ka.kernel == "ip" else ya.to(torch.float64).square().sum(dim=1).to(ya.dtype)
            sqb = sqa if one else (None if kb.kernel == "ip" else yb.to(torch.float64).square().sum(dim=1).to(yb.dtype))
            for i0 in range(0, xa.shape[0], H.TILE_ROWS):
                i1 = min(xa.shape[0], i0 + H.TILE_ROWS)
                for j0 in range(0, n_p, H.TILE_ROWS):
                    j1 = min(n_p, j0 + H.TILE_ROWS)
                    same = t == 0 and i0 == j0
                    ta = H.block_tile(ka, xa[i0:i1], None if sqa is None else ka.sq_norms[i0:i1], ya[j0:j1],
                                      None if sqa is None else sqa[j0:j1], same=same)
                    if one:
                        total += float(ta.square().sum(dtype=torch.float64))
                        rows[i0:i1] += ta.sum(dim=1, dtype=torch.float64)
                        continue
                    tb = H.block_tile(kb, xb[i0:i1], None if sqb is None else kb.sq_norms[i0:i1], yb[j0:j1],
                                      None if sqb is None else sqb[j0:j1], same=same)
                    if ta.dtype != tb.dtype:
                        ta, tb = ta.to(torch.float64), tb.to(torch.float64)
                    total += float((ta * tb).sum(dtype=torch.float64))
        del got
    return comm.sum([total])[0], rows


def cross_sum(comm: Comm, layout: Layout, sa: ShardStats, sb: ShardStats) -> float:
    """Σ K̂∘L̂ over all N x N pairs."""
    ka, kb = sa.local, sb.local
    linear = ka.kernel == "ip" and kb.kernel == "ip"
    if linear and H._use_feature_space(sa.n, ka.features.shape[1], kb.features.shape[1]):
        with comm.step():
            a, b = ka.features, kb.features
            if a.dtype != b.dtype:
                a, b = a.to(torch.float64), b.to(torch.float64)
            c = (a.T @ b).to(torch.float64)
        return float(comm.all_reduce(c.cpu()).square().sum())
    return _tile_sums(comm, layout, [ka], [kb])[0]


def _parts(comm: Comm, sa: ShardStats, sb: ShardStats) -> list[float]:
    """:func:`platonic_fast.ops.hsic.row_parts`, all-reduced (each is a sum over rows)."""
    return comm.sum(H.row_parts(sa.local, sb.local))


def _own(st: ShardStats, unbiased: bool) -> float:
    return H.hsic_from_parts(st.local.self_sum, st.self_parts, st.n, unbiased=unbiased)


def cka(comm: Comm, layout: Layout, sa: ShardStats, sb: ShardStats, *, unbiased: bool) -> float:
    hkl = H.hsic_from_parts(cross_sum(comm, layout, sa, sb), _parts(comm, sa, sb), sa.n, unbiased=unbiased)
    hkk, hll = _own(sa, unbiased), _own(sb, unbiased)
    return guarded_ratio("cka", hkl, max(hkk * hll, 0.0) ** 0.5, -H._true_units(sa.local, sb.local))


def cka_null_mean(comm: Comm, sa: ShardStats, sb: ShardStats, *, unbiased: bool) -> float:
    """:func:`platonic_fast.ops.hsic.cka_null_mean`, sharded (no communication: the sums it
    needs are the sets' own, all-reduced when they were prepared)."""
    if unbiased:
        return 0.0
    return H.null_mean_from_parts(sa.self_parts, sb.self_parts, sa.n, _own(sa, False), _own(sb, False),
                                  H._true_units(sa.local, sb.local))


def permuted(st: ShardStats, rows: dict[str, torch.Tensor]) -> ShardStats:
    """The stats with their per-row tensors replaced (rows fetched for a permutation)."""
    return dataclasses.replace(st, local=dataclasses.replace(st.local, **rows))


def row_fields(st: ShardStats) -> list[str]:
    return [f for f in ("features", "sq_norms", "row_sums", "diag") if getattr(st.local, f) is not None]
