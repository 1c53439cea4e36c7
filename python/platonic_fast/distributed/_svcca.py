"""SVCCA of row-sharded features: columns standardised with all-reduced moments, the top
singular directions by a tall-skinny QR (each rank's R factor gathered, one small SVD), and the
canonical correlations from the all-reduced cca_dim x cca_dim product UᵀV."""

from __future__ import annotations

import torch

from ..ops.svcca import _warn
from ._comm import Comm, Layout


def basis(comm: Comm, layout: Layout, x: torch.Tensor, cca_dim: int) -> torch.Tensor:
    """This rank's rows of the N x cca_dim orthonormal basis (float64) of
    :func:`platonic_fast.ops.svcca.svcca_basis`."""
    n, d = layout.n, x.shape[1]
    with comm.step():
        x64 = x.to(torch.float64)
        if x.shape[0]:
            lo, hi = torch.aminmax(x64, dim=0)
        else:
            lo = torch.full((d,), torch.inf, dtype=torch.float64, device=x.device)
            hi = -lo
        colsum = x64.sum(dim=0)
    lo, hi = comm.all_reduce(lo.cpu(), "min").to(x.device), comm.all_reduce(hi.cpu(), "max").to(x.device)
    mean = (comm.all_reduce(colsum.cpu()) / n).to(x.device)
    with comm.step():
        xc = x64 - mean
        ss = xc.square().sum(dim=0)
    std = (comm.all_reduce(ss.cpu()) / (n - 1)).sqrt().to(x.device)
    with comm.step():
        xs = xc / (std + 1e-8)
        xs[:, lo == hi] = 0.0  # constant columns exactly zero, as one process does
        q_r, r_r = torch.linalg.qr(xs)  # reduced: (n_r x m_r), (m_r x D), m_r = min(n_r, D)
    counts = [min(layout.rows(p), d) for p in range(layout.size)]
    stacked = comm.all_gather_rows(r_r, counts)
    with comm.step():
        u2, s, _ = torch.linalg.svd(stacked, full_matrices=False)
        off = sum(counts[: layout.rank])
        u = q_r @ u2[off: off + counts[layout.rank], :cca_dim]
    top = float(s[0]) if s.numel() else 0.0
    rank = int((s > top * max(n, d) * torch.finfo(torch.float64).eps).sum()) if top > 0 else 0
    if rank < cca_dim:
        _warn(f"cca_dim={cca_dim} exceeds the rank {rank} of the standardised features (constant or collinear "
              "columns); the extra singular directions are arbitrary and so is their part of the score")
    elif cca_dim >= n - 1:
        _warn(f"cca_dim={cca_dim} >= N - 1 = {n - 1}: centred features span at most N - 1 "
              "directions, so both bases span the same space and svcca is 1 for any inputs")
    elif cca_dim < s.numel() and float(s[cca_dim - 1] - s[cca_dim]) <= 1e-10 * top:
        _warn(f"the {cca_dim}-th and next singular values are equal: the top-{cca_dim} directions are not "
              "unique, so the score depends on an arbitrary choice (pick another cca_dim)")
    return u


def score(comm: Comm, ua: torch.Tensor, ub: torch.Tensor) -> float:
    with comm.step():
        c = ua.T @ ub
    c = comm.all_reduce(c.cpu())
    return float(torch.linalg.svdvals(c).clamp(0.0, 1.0).mean())
